#include "convert/converter.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "moe/moe_config.h"
#include "moe/moe_layout.h"
#include "convert/learned_init.h"
#include "convert/partition.h"
#include "convert/recipe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/llama_layout.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

std::string Dense(DType dtype = DType::kF32, int shards = 2) {
  const std::string dir = TestPath("dense");
  TinyLlamaOptions o;
  o.dtype = dtype;
  o.num_shards = shards;
  o.seed = 5;
  EXPECT_TRUE(WriteTinyLlama(dir, o).ok());
  EXPECT_TRUE(WriteStringToFile(JoinPath(dir, "tokenizer.json"), "{\"fake\": true}").ok());
  return dir;
}

absl::StatusOr<ConvertStats> Convert(const std::string& in, const std::string& out, const std::string& recipe_text) {
  ConvertOptions o;
  o.input_dir = in;
  o.output_dir = out;
  o.recipe = *ParseRecipe(recipe_text, "test");
  return ConvertDenseToMoe(o);
}

at::Tensor Get(const Checkpoint& c, const std::string& name) { return c.Get(name)->to(at::kDouble); }

// SwiGLU of x with the given matrices, float64.
at::Tensor Ffn(const at::Tensor& x, const at::Tensor& g, const at::Tensor& u, const at::Tensor& d) {
  return at::matmul(at::silu(at::matmul(x, g.t())) * at::matmul(x, u.t()), d.t());
}

TEST(ConverterTest, FrozenSlicesSumToTheDenseFfnForBothPartitions) {
  const std::string dense = Dense();
  for (const char* partition : {"CONTIGUOUS", "RANDOM_PERMUTATION"}) {
    const std::string out = TestPath("moe");
    ASSERT_TRUE(Convert(dense, out, std::string("partition: ") + partition + " num_frozen_experts: 4").ok());
    auto d = *Checkpoint::Open(dense);
    auto m = *Checkpoint::Open(out);
    at::Tensor x = at::randn({5, 64}, at::kDouble);
    for (int64_t l = 0; l < 2; ++l) {
      const at::Tensor want = Ffn(x, Get(*d, DenseFfnName(l, "gate_proj")), Get(*d, DenseFfnName(l, "up_proj")),
                                  Get(*d, DenseFfnName(l, "down_proj")));
      const at::Tensor g = Get(*m, ExpertTensorName(l, kFrozenExperts, "gate_proj"));
      const at::Tensor u = Get(*m, ExpertTensorName(l, kFrozenExperts, "up_proj"));
      const at::Tensor dn = Get(*m, ExpertTensorName(l, kFrozenExperts, "down_proj"));
      ASSERT_EQ(g.sizes(), (at::IntArrayRef{4, 32, 64}));
      at::Tensor sum = at::zeros_like(want);
      for (int64_t e = 0; e < 4; ++e) sum += Ffn(x, g[e], u[e], dn[e]);
      // Exact slices in float64: only summation order differs.
      EXPECT_LT((sum - want).abs().max().item<double>(), 1e-12 * want.abs().max().item<double>()) << partition;
    }
    if (std::string(partition) == "CONTIGUOUS") {
      EXPECT_TRUE(at::equal(Get(*m, ExpertTensorName(0, kFrozenExperts, "gate_proj")).reshape({128, 64}),
                            Get(*d, DenseFfnName(0, "gate_proj"))));
    }
    // Everything that is not the FFN is copied bit for bit.
    for (const char* name : {"model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight", "lm_head.weight"}) {
      EXPECT_TRUE(at::equal(*m->Get(name), *d->Get(name))) << name;
    }
  }
}

TEST(ConverterTest, LearnedExpertsAreSlicesPlusScaledNoise) {
  const std::string dense = Dense();
  const std::string out = TestPath("moe");
  ASSERT_TRUE(Convert(dense, out, "noise_scale: 0.2").ok());
  auto d = *Checkpoint::Open(dense);
  auto m = *Checkpoint::Open(out);
  const at::Tensor up = Get(*d, DenseFfnName(0, "up_proj"));
  const at::Tensor frozen = Get(*m, ExpertTensorName(0, kFrozenExperts, "up_proj"));
  const at::Tensor learned = Get(*m, ExpertTensorName(0, kLearnedExperts, "up_proj"));
  const double ratio = (learned - frozen).std().item<double>() / up.std().item<double>();
  // 8 x 16 x 64 = 8192 noise samples: the sample std is within ~2% of 0.2 with high probability.
  EXPECT_NEAR(ratio, 0.2, 0.01);
  // Noise is fresh per expert, not one pattern repeated.
  EXPECT_FALSE(at::allclose(learned[0] - frozen[0], learned[1] - frozen[1]));
}

// The streamed path (reused buffers, noise added and rounded chunk by chunk, writes queued
// behind the computing) writes what the plain composition of the steps gives, to the bit, for
// every projection of a bfloat16 source: down's stack is a strided view of the source.
TEST(ConverterTest, LearnedExpertsEqualTheStepsComposed) {
  const std::string dense = Dense(DType::kBF16);
  const std::string out = TestPath("moe");
  const std::string recipe_text = "noise_scale: 0.2 seed: 7 num_learned_experts: 12";
  ASSERT_TRUE(Convert(dense, out, recipe_text).ok());
  const ConversionRecipe recipe = *ParseRecipe(recipe_text, "test");
  auto d = *Checkpoint::Open(dense);
  auto m = *Checkpoint::Open(out);
  for (int64_t layer = 0; layer < 2; ++layer) {
    DenseFfnWeights ffn;
    ffn.gate = *d->Get(DenseFfnName(layer, "gate_proj"));
    ffn.up = *d->Get(DenseFfnName(layer, "up_proj"));
    ffn.down = *d->Get(DenseFfnName(layer, "down_proj"));
    const ExpertStackWeights frozen = PartitionContiguous(ffn, 8);
    const at::Tensor stacks[3] = {frozen.gate, frozen.up, frozen.down};
    for (int k = 0; k < 3; ++k) {
      const at::Tensor expected = InitLearnedExperts(stacks[k].to(at::kFloat), 12, recipe, k, layer).to(at::kBFloat16);
      const at::Tensor written = *m->Get(ExpertTensorName(layer, kLearnedExperts, kFfnProjections[k]));
      EXPECT_TRUE(at::equal(written, expected)) << "layer " << layer << " projection " << k;
      EXPECT_TRUE(at::equal(*m->Get(ExpertTensorName(layer, kFrozenExperts, kFfnProjections[k])), stacks[k]));
    }
  }
}

TEST(ConverterTest, DropUpcyclingReinitialisesTheRequestedFraction) {
  const std::string dense = Dense();
  const std::string out = TestPath("moe");
  ASSERT_TRUE(Convert(dense, out, "learned_init: DROP_UPCYCLING reinit_fraction: 0.25").ok());
  auto m = *Checkpoint::Open(out);
  const at::Tensor frozen = Get(*m, ExpertTensorName(1, kFrozenExperts, "gate_proj"));
  const at::Tensor learned = Get(*m, ExpertTensorName(1, kLearnedExperts, "gate_proj"));
  for (int64_t e = 0; e < 8; ++e) {
    const int64_t changed = (learned[e] != frozen[e]).any(1).sum().item<int64_t>();
    EXPECT_EQ(changed, 4) << "expert " << e;  // 25% of Ie = 16 neurons
  }
  // down_proj: the same count of changed columns.
  const at::Tensor fd = Get(*m, ExpertTensorName(1, kFrozenExperts, "down_proj"));
  const at::Tensor ld = Get(*m, ExpertTensorName(1, kLearnedExperts, "down_proj"));
  EXPECT_EQ((ld[0] != fd[0]).any(0).sum().item<int64_t>(), 4);
}

TEST(ConverterTest, RecordsRecipeHashesAndCopiesSideFiles) {
  const std::string dense = Dense(DType::kBF16);
  const std::string out = TestPath("moe");
  absl::StatusOr<ConvertStats> st = Convert(dense, out, "top_k: 4 router_init: DENSE_PRESERVING");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_GT(st->bytes_written, st->bytes_read);  // learned experts and routers are added
  auto m = *Checkpoint::Open(out);
  LlamaConfig cfg = *m->LoadConfig();
  EXPECT_EQ(cfg.torch_dtype, "bfloat16");
  // Labelled so that no library loads it as a dense Llama.
  EXPECT_EQ(cfg.model_type, kMoeModelType);
  EXPECT_THAT(*ReadFileToString(JoinPath(out, "config.json")), HasSubstr(kMoeArchitecture));
  EXPECT_THAT(*ReadFileToString(JoinPath(out, "config.json")), ::testing::Not(HasSubstr("\"LlamaForCausalLM\"")));
  std::optional<MoeConfig> moe = *MoeConfigFromLlama(cfg);
  ASSERT_TRUE(moe.has_value());
  EXPECT_EQ(moe->top_k, 4);
  EXPECT_DOUBLE_EQ(moe->gate_scale, 4.0);
  EXPECT_THAT(cfg.extra_json, HasSubstr("source_sha256"));
  EXPECT_THAT(cfg.extra_json, HasSubstr(*Sha256File(JoinPath(dense, "model-00001-of-00002.safetensors"))));
  EXPECT_TRUE(PathExists(JoinPath(out, "tokenizer.json")));
  EXPECT_TRUE(PathExists(JoinPath(out, "recipe.textproto")));
  EXPECT_TRUE(VerifyCheckpointTensors(*m, MoeTensorSpecs(cfg, *moe, DType::kBF16), true).ok());
  // Dense-preserving router: zero weights, frozen experts preferred by the bias, zero mean.
  EXPECT_EQ(m->Get(RouterWeightName(0))->abs().sum().item<float>(), 0.0f);
  const at::Tensor bias = *m->Get(RouterBiasName(0));
  EXPECT_GT(bias.slice(0, 0, 8).min().item<float>(), bias.slice(0, 8, 16).max().item<float>());
  EXPECT_NEAR(bias.sum().item<float>(), 0.0f, 1e-6);
}

TEST(ConverterTest, DeterministicForASeed) {
  const std::string dense = Dense();
  const std::string a = TestPath("a"), b = TestPath("b"), c = TestPath("c");
  ASSERT_TRUE(Convert(dense, a, "seed: 3 partition: RANDOM_PERMUTATION").ok());
  ASSERT_TRUE(Convert(dense, b, "seed: 3 partition: RANDOM_PERMUTATION").ok());
  ASSERT_TRUE(Convert(dense, c, "seed: 4 partition: RANDOM_PERMUTATION").ok());
  const auto bytes = [](const std::string& d) { return *ReadFileToString(JoinPath(d, "model.safetensors")); };
  EXPECT_EQ(bytes(a), bytes(b));
  EXPECT_NE(bytes(a), bytes(c));
  // Noise is drawn in fixed chunks with a stream each: the thread count does not change it.
  // 256 learned copies of the one 128-wide slice make each learned stack 2.1M elements: 3 chunks.
  const std::string one = TestPath("one"), two = TestPath("two");
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  ASSERT_TRUE(Convert(dense, one, "num_learned_experts: 256 num_frozen_experts: 1 top_k: 8").ok());
  at::set_num_threads(2);
  ASSERT_TRUE(Convert(dense, two, "num_learned_experts: 256 num_frozen_experts: 1 top_k: 8").ok());
  at::set_num_threads(saved);
  EXPECT_EQ(bytes(one), bytes(two));
}

TEST(ConverterTest, FailuresAndCancellationLeaveNoOutput) {
  const std::string dense = Dense();
  const std::string out = TestPath("moe");
  absl::StatusOr<ConvertStats> st = Convert(dense, out, "expert_intermediate_size: 48");
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("does not divide intermediate_size 128"));
  EXPECT_FALSE(PathExists(out));

  std::atomic<bool> cancel{true};
  ConvertOptions o;
  o.input_dir = dense;
  o.output_dir = out;
  o.cancel = &cancel;
  EXPECT_EQ(ConvertDenseToMoe(o).status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(PathExists(out));

  // Converting an MoE model again is refused.
  ASSERT_TRUE(Convert(dense, out, "").ok());
  EXPECT_THAT(std::string(Convert(out, TestPath("again"), "").status().message()), HasSubstr("already an MoE model"));

  // A dense model whose FFN has the wrong shape is named in the error.
  const std::string broken = Dense();
  std::string cfg = *ReadFileToString(JoinPath(broken, "config.json"));
  cfg.replace(cfg.find("\"intermediate_size\": 128"), 24, "\"intermediate_size\": 256");
  ASSERT_TRUE(WriteStringToFile(JoinPath(broken, "config.json"), cfg).ok());
  st = Convert(broken, TestPath("x"), "");
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("model.layers.0.mlp.gate_proj.weight' has shape [128,64], expected [256,64]"));
}

}  // namespace
}  // namespace llama_moe
