// The offloaded MoE mode (moe/expert_offload.h) against the in-memory model on converted tiny
// checkpoints: greedy generation token for token and logits, for both expert sources and cache
// sizes 1, 2 and E; cache accounting; LRU order; the per-expert file slices against the
// in-memory stacks.
#include "moe/expert_offload.h"

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "convert/converter.h"
#include "convert/recipe.h"
#include "gtest/gtest.h"
#include "model/generate.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"
#include "moe/moe_model.h"

namespace llama_moe {
namespace {

// A converted tiny model (3 layers, so that prefetch crosses more than one layer boundary).
std::string MakeMoe(const std::string& recipe, DType dtype) {
  const std::string dense = TestPath("dense"), moe = TestPath("moe");
  TinyLlamaOptions o;
  o.dtype = dtype;
  o.seed = 5;
  o.num_shards = 2;
  o.config.num_hidden_layers = 3;
  EXPECT_TRUE(WriteTinyLlama(dense, o).ok());
  ConvertOptions c;
  c.input_dir = dense;
  c.output_dir = moe;
  c.recipe = *ParseRecipe(recipe, "test");
  const absl::StatusOr<ConvertStats> s = ConvertDenseToMoe(c);
  EXPECT_TRUE(s.ok()) << s.status();
  return moe;
}

LoadedModel InMemory(const std::string& dir, DType dtype) {
  ModelLoadOptions o;
  o.dtype = dtype;
  o.moe.mode = RoutingMode::kRouted;
  absl::StatusOr<LoadedModel> m = LoadModel(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

OffloadedModel Offloaded(const std::string& dir, DType dtype, OffloadSource source, int64_t cache,
                         bool prefetch = true) {
  OffloadLoadOptions o;
  o.dtype = dtype;
  o.offload.source = source;
  o.offload.cache_experts = cache;
  o.offload.prefetch = prefetch;
  absl::StatusOr<OffloadedModel> m = LoadOffloadedModel(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

std::vector<int64_t> Greedy(LlamaForCausalLM& model) {
  GenerateOptions g;
  g.max_new_tokens = 32;
  g.eos_token_ids = {};  // run to the end: more tokens compared
  absl::StatusOr<GenerateResult> r = Generate(model, {{510, 17, 300, 42, 7, 99, 3}}, g);
  EXPECT_TRUE(r.ok()) << r.status();
  return r->tokens[0];
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

TEST(ExpertOffloadTest, MatchesInMemoryRoutedModel) {
  // top-8 of 16 (the default recipe) and top-2: with top-2 a decode step's experts fit a cache
  // of 2, with top-8 caches of 1 and 2 evict inside every forward.
  for (const std::string recipe : {"", "top_k: 2"}) {
    const std::string dir = MakeMoe(recipe, DType::kBF16);
    at::manual_seed(3);
    const at::Tensor tokens = at::randint(0, 510, {48}, at::kLong);
    // Greedy decoding in the checkpoint's bfloat16 (where a changed summation order would show
    // first), logits in float32.
    LoadedModel ref_bf16 = InMemory(dir, DType::kBF16);
    const std::vector<int64_t> want = Greedy(*ref_bf16.model);
    ASSERT_EQ(want.size(), 32u);
    LoadedModel ref_f32 = InMemory(dir, DType::kF32);
    const at::Tensor want_logits = *ref_f32.model->Forward(tokens);
    const int64_t E = ref_f32.moe->num_experts();
    for (OffloadSource source : {OffloadSource::kMmap, OffloadSource::kRam}) {
      for (int64_t cache : {int64_t{1}, int64_t{2}, E}) {
        SCOPED_TRACE(absl::StrCat(recipe, " ", OffloadSourceName(source), " cache ", cache));
        OffloadedModel bf16 = Offloaded(dir, DType::kBF16, source, cache);
        EXPECT_EQ(Greedy(*bf16.model), want);
        OffloadedModel f32 = Offloaded(dir, DType::kF32, source, cache);
        // The same ops on the same values: equal in practice; 1e-6 relative (float32 rounding of
        // a few ulps) is the stated bound should a BLAS pick a different kernel for a copy.
        EXPECT_LT(RelErr(*f32.model->Forward(tokens), want_logits), 1e-6);
      }
    }
  }
}

TEST(ExpertOffloadTest, LoadedExpertsEqualInMemoryStacks) {
  // The byte-range slicing of the mmap source against the stacks LoadModel reads whole.
  const std::string dir = MakeMoe("", DType::kBF16);
  LoadedModel ref = InMemory(dir, DType::kF32);
  for (OffloadSource source : {OffloadSource::kMmap, OffloadSource::kRam}) {
    OffloadedModel m = Offloaded(dir, DType::kF32, source, 2);
    for (int64_t l = 0; l < 3; ++l) {
      const ExpertBank bank = ref.moe_layers[l]->experts();
      for (int64_t e = 0; e < bank.num_experts(); ++e) {
        const ExpertWeights w = m.experts->Load(l, e);
        const ExpertWeights want = bank.Expert(e);
        EXPECT_TRUE(at::equal(w.gate, want.gate)) << l << " " << e;
        EXPECT_TRUE(at::equal(w.up, want.up)) << l << " " << e;
        EXPECT_TRUE(at::equal(w.down, want.down)) << l << " " << e;
      }
    }
  }
}

TEST(ExpertOffloadTest, CacheOfAllExpertsMissesOnlyOnWarmup) {
  const std::string dir = MakeMoe("top_k: 2", DType::kF32);
  at::manual_seed(4);
  const at::Tensor tokens = at::randint(0, 510, {40}, at::kLong);
  OffloadedModel m = Offloaded(dir, DType::kF32, OffloadSource::kMmap, 16, /*prefetch=*/false);
  ASSERT_TRUE(m.model->Forward(tokens).ok());
  std::vector<ExpertCacheStats> first;
  for (int64_t l = 0; l < 3; ++l) {
    const ExpertCacheStats& s = m.experts->layer_stats(l);
    // Each distinct expert is loaded once, then every later lookup in the layer hits.
    EXPECT_EQ(s.misses, static_cast<int64_t>(m.experts->cache(l).Resident().size()));
    EXPECT_EQ(s.hits, 0);  // one forward looks each active expert up once
    EXPECT_EQ(s.evictions, 0);
    first.push_back(s);
  }
  ASSERT_TRUE(m.model->Forward(tokens).ok());
  for (int64_t l = 0; l < 3; ++l) {
    const ExpertCacheStats& s = m.experts->layer_stats(l);
    EXPECT_EQ(s.misses, first[l].misses) << "no misses after warm-up";
    EXPECT_EQ(s.hits, first[l].misses);  // the same tokens: the same active experts again
  }
  m.experts->ResetStats();
  EXPECT_EQ(m.experts->stats().hits + m.experts->stats().misses, 0);
}

TEST(ExpertOffloadTest, SmallCacheCountsEveryLookupAndPrefetches) {
  const std::string dir = MakeMoe("", DType::kF32);  // top-8
  OffloadedModel m = Offloaded(dir, DType::kF32, OffloadSource::kMmap, 2, /*prefetch=*/true);
  ASSERT_TRUE(m.model->Forward(at::tensor({510, 3, 9}, at::kLong)).ok());
  const ExpertCacheStats s = m.experts->stats();
  // Three tokens with 8 of 16 experts each activate at least 8 experts per layer.
  EXPECT_GE(s.hits + s.misses, 3 * 8);
  EXPECT_GT(s.evictions, 0);
  // Layers 1 and 2 were prefetched for; each cache holds at most its capacity.
  EXPECT_GT(s.prefetches, 0);
  EXPECT_EQ(m.experts->layer_stats(0).prefetches, 0);
  for (int64_t l = 0; l < 3; ++l) EXPECT_LE(m.experts->cache(l).Resident().size(), 2u);
}

TEST(ExpertOffloadTest, LruEvictsLeastRecentlyUsed) {
  std::map<int64_t, int> loads;
  int allocations = 0;
  ExpertLruCache cache(
      2,
      [&] {
        ++allocations;
        return ExpertWeights{at::empty({2, 3}), at::empty({3}), at::empty({3, 2})};
      },
      [&](int64_t e, ExpertWeights& slot) {
        ++loads[e];
        slot.gate.fill_(static_cast<double>(e));
      });
  EXPECT_EQ(cache.Get(0).gate[0][0].item<double>(), 0.0);  // miss
  cache.Get(1);                                             // miss
  cache.Get(0);                                             // hit: 0 is now most recent
  cache.Get(2);                                             // miss: evicts 1, the least recent
  EXPECT_TRUE(cache.Contains(0));
  EXPECT_FALSE(cache.Contains(1));
  EXPECT_EQ(cache.Resident(), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(cache.Get(1).gate[0][0].item<double>(), 1.0);  // miss again: evicts 0
  EXPECT_EQ(cache.Resident(), (std::vector<int64_t>{1, 2}));
  cache.Prefetch(2);  // resident: only refreshed
  cache.Prefetch(5);  // loaded: evicts 1
  EXPECT_EQ(cache.Resident(), (std::vector<int64_t>{5, 2}));
  const ExpertCacheStats& s = cache.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 4);
  EXPECT_EQ(s.prefetches, 1);
  EXPECT_EQ(s.evictions, 3);
  EXPECT_EQ(loads[1], 2);
  EXPECT_EQ(loads[0], 1);
  EXPECT_DOUBLE_EQ(s.HitRate(), 0.2);
  EXPECT_EQ(allocations, 2);  // slots are reused, never reallocated
  EXPECT_EQ(cache.Get(5).gate[1][2].item<double>(), 5.0);  // the reused slot holds the new expert
}

TEST(ExpertOffloadTest, RejectsDenseModelsAndEmptyCaches) {
  const std::string dense = TestPath("dense");
  ASSERT_TRUE(WriteTinyLlama(dense, TinyLlamaOptions()).ok());
  OffloadLoadOptions o;
  absl::StatusOr<OffloadedModel> m = LoadOffloadedModel(dense, o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("dense model"), std::string::npos) << m.status();

  const std::string moe = MakeMoe("", DType::kF32);
  o.offload.cache_experts = 0;
  m = LoadOffloadedModel(moe, o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("at least 1 expert"), std::string::npos) << m.status();
  EXPECT_FALSE(ParseOffloadSource("disk").ok());
}

}  // namespace
}  // namespace llama_moe
