// KV-cache decoding against the full forward pass, batch against single prompts, sampling
// determinism, stopping rules and input errors. The full forward pass itself is checked against
// a float64 reference in llama_model_test.
#include "model/generate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "model/decode_linear.h"
#include "model/file_util.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"
#include "model/llama_test_util.h"

namespace llama_moe {
namespace {

std::vector<int64_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> t(n);
  for (auto& x : t) x = static_cast<int64_t>(rng() % vocab);
  return t;
}

at::Tensor Ids(const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

double RelDiff(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = TinyLlamaConfig(/*heads=*/4, /*kv_heads=*/2);
    cfg_.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 32};
    dir_ = NewTestDir("generate");
    ASSERT_TRUE(WriteRandomLlama(dir_, cfg_, DType::kF32, 21).ok());
    auto m = LoadLlamaFromDir(dir_, {});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *m;
  }

  LlamaConfig cfg_;
  std::string dir_;
  std::shared_ptr<LlamaForCausalLM> model_;
};

// Tolerance for the same math in different matmul shapes (prefill vs one row, batch vs single):
// float32 rounding differs in the summation order only, ~1e-7 relative per op.
constexpr double kShapeTolerance = 1e-5;

TEST_F(GenerateTest, IncrementalLogitsEqualFullForward) {
  const std::vector<int64_t> tokens = RandomTokens(60, cfg_.vocab_size, 1);
  const at::Tensor full = *model_->Forward(Ids(tokens));  // [60,V]
  auto cache = KvCache::Create(cfg_, 60, {0}, model_->options());
  ASSERT_TRUE(cache.ok());
  ForwardOptions opts;
  opts.cache = &*cache;
  std::vector<at::Tensor> parts;
  int64_t pos = 0;
  for (int64_t chunk : {17, 1, 1, 5, 1, 30, 1, 1, 3}) {
    std::vector<int64_t> piece(tokens.begin() + pos, tokens.begin() + pos + chunk);
    auto logits = model_->Forward(Ids(piece).unsqueeze(0), opts);
    ASSERT_TRUE(logits.ok()) << logits.status();
    parts.push_back(logits->squeeze(0));
    pos += chunk;
  }
  ASSERT_EQ(pos, 60);
  EXPECT_EQ(cache->length(), 60);
  EXPECT_LE(RelDiff(at::cat(parts, 0), full), kShapeTolerance);
  // Full: one more token does not fit.
  EXPECT_FALSE(model_->Forward(Ids({1}).unsqueeze(0), opts).ok());
}

TEST_F(GenerateTest, LeftPaddedBatchEqualsSingleForward) {
  const std::vector<int64_t> lens = {5, 23, 11};
  const int64_t longest = 23;
  at::Tensor batch = at::zeros({3, longest}, at::kLong);
  std::vector<int64_t> pad;
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t b = 0; b < 3; ++b) {
    prompts.push_back(RandomTokens(lens[b], cfg_.vocab_size, 10 + b));
    pad.push_back(longest - lens[b]);
    batch[b].narrow(0, pad[b], lens[b]).copy_(Ids(prompts[b]));
  }
  ForwardOptions opts;
  opts.left_pad = pad;
  auto logits = model_->Forward(batch, opts);
  ASSERT_TRUE(logits.ok()) << logits.status();
  for (int64_t b = 0; b < 3; ++b) {
    const at::Tensor single = *model_->Forward(Ids(prompts[b]));
    EXPECT_LE(RelDiff((*logits)[b].narrow(0, pad[b], lens[b]), single), kShapeTolerance) << b;
  }
}

TEST_F(GenerateTest, GreedyCachedEqualsUncachedAndBatchEqualsSingle) {
  std::vector<std::vector<int64_t>> prompts = {RandomTokens(7, cfg_.vocab_size, 3),
                                               RandomTokens(30, cfg_.vocab_size, 4),
                                               RandomTokens(1, cfg_.vocab_size, 5)};
  GenerateOptions opts;
  opts.max_new_tokens = 24;
  auto cached = Generate(*model_, prompts, opts);
  ASSERT_TRUE(cached.ok()) << cached.status();
  opts.use_cache = false;
  auto uncached = Generate(*model_, prompts, opts);
  ASSERT_TRUE(uncached.ok()) << uncached.status();
  EXPECT_EQ(cached->tokens, uncached->tokens);
  opts.use_cache = true;
  opts.prefill_chunk = 4;  // prompts of 7 and 30 tokens prefill in several cache chunks
  auto chunked = Generate(*model_, prompts, opts);
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  EXPECT_EQ(chunked->tokens, cached->tokens);
  opts.prefill_chunk = 512;
  for (size_t b = 0; b < prompts.size(); ++b) {
    auto single = Generate(*model_, {prompts[b]}, opts);
    ASSERT_TRUE(single.ok());
    EXPECT_EQ(single->tokens[0], cached->tokens[b]) << b;
    EXPECT_EQ(cached->tokens[b].size(), 24u);
    EXPECT_EQ(cached->stop_reasons[b], StopReason::kMaxNewTokens);
  }
  // Greedy decoding of this model is not degenerate (logits far from uniform, distinct tokens).
  EXPECT_GT(std::set<int64_t>(cached->tokens[0].begin(), cached->tokens[0].end()).size(), 3u);
  EXPECT_EQ(cached->prefill_tokens, 38);
  EXPECT_EQ(cached->decode_tokens, 3 * 23);
}

// The decode kernel (model/decode_linear.h) changes only float32 summation order: 48 greedy
// tokens per prompt are the same as with ATen's linear everywhere, alone and in a batch.
TEST_F(GenerateTest, DecodeKernelKeepsGreedyTokens) {
  const std::vector<std::vector<int64_t>> prompts = {RandomTokens(5, cfg_.vocab_size, 11),
                                                     RandomTokens(17, cfg_.vocab_size, 12)};
  GenerateOptions opts;
  opts.max_new_tokens = 48;
  ASSERT_TRUE(DecodeLinearEnabled());
  auto with = Generate(*model_, prompts, opts);
  auto single = Generate(*model_, {prompts[1]}, opts);
  SetDecodeLinearEnabled(false);
  auto without = Generate(*model_, prompts, opts);
  auto single_without = Generate(*model_, {prompts[1]}, opts);
  SetDecodeLinearEnabled(true);
  ASSERT_TRUE(with.ok() && without.ok() && single.ok() && single_without.ok());
  EXPECT_EQ(with->tokens, without->tokens);
  EXPECT_EQ(single->tokens, single_without->tokens);
  EXPECT_EQ(with->tokens[0].size(), 48u);
}

TEST_F(GenerateTest, GreedyEqualsArgmaxOfFullForward) {
  std::vector<int64_t> seq = RandomTokens(9, cfg_.vocab_size, 8);
  GenerateOptions opts;
  opts.max_new_tokens = 12;
  auto r = Generate(*model_, {seq}, opts);
  ASSERT_TRUE(r.ok());
  for (int64_t next : r->tokens[0]) {
    const at::Tensor logits = *model_->Forward(Ids(seq));
    EXPECT_EQ(logits[-1].argmax().item<int64_t>(), next);
    seq.push_back(next);
  }
}

TEST_F(GenerateTest, SamplingIsDeterministicPerSeedAndBatchIndependent) {
  std::vector<std::vector<int64_t>> prompts = {RandomTokens(6, cfg_.vocab_size, 6),
                                               RandomTokens(13, cfg_.vocab_size, 7)};
  GenerateOptions opts;
  opts.max_new_tokens = 20;
  opts.sampling = {1.0, 0.95, 42};
  auto a = Generate(*model_, prompts, opts);
  auto b = Generate(*model_, prompts, opts);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  auto single = Generate(*model_, {prompts[1]}, opts);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->tokens[0], a->tokens[1]);
  opts.sampling.seed = 43;
  auto c = Generate(*model_, prompts, opts);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->tokens, a->tokens);
  // A nucleus too small for a second token is greedy decoding.
  opts.sampling = {1.0, 1e-6, 5};
  auto nucleus = Generate(*model_, prompts, opts);
  opts.sampling = {};
  auto greedy = Generate(*model_, prompts, opts);
  ASSERT_TRUE(nucleus.ok() && greedy.ok());
  EXPECT_EQ(nucleus->tokens, greedy->tokens);
  EXPECT_NE(a->tokens, greedy->tokens);
}

TEST_F(GenerateTest, StopsAtEosPerSequence) {
  std::vector<std::vector<int64_t>> prompts = {RandomTokens(5, cfg_.vocab_size, 9),
                                               RandomTokens(8, cfg_.vocab_size, 10)};
  GenerateOptions opts;
  opts.max_new_tokens = 16;
  auto free_run = Generate(*model_, prompts, opts);
  ASSERT_TRUE(free_run.ok());
  // Make prompt 0's 4th greedy token an EOS (if it did not occur earlier).
  const int64_t eos = free_run->tokens[0][3];
  opts.eos_token_ids = {eos};
  auto r = Generate(*model_, prompts, opts);
  ASSERT_TRUE(r.ok());
  const auto first = std::find(free_run->tokens[0].begin(), free_run->tokens[0].end(), eos);
  const size_t expected_len = first - free_run->tokens[0].begin() + 1;
  EXPECT_EQ(r->tokens[0], std::vector<int64_t>(free_run->tokens[0].begin(),
                                                free_run->tokens[0].begin() + expected_len));
  EXPECT_EQ(r->stop_reasons[0], StopReason::kEos);
  // The other sequence runs on unaffected up to its own EOS or the budget.
  const auto other = std::find(free_run->tokens[1].begin(), free_run->tokens[1].end(), eos);
  const size_t other_len = other == free_run->tokens[1].end() ? 16 : other - free_run->tokens[1].begin() + 1;
  EXPECT_EQ(r->tokens[1], std::vector<int64_t>(free_run->tokens[1].begin(),
                                                free_run->tokens[1].begin() + other_len));
}

TEST_F(GenerateTest, StopsAtContext) {
  GenerateOptions opts;
  opts.max_new_tokens = 50;
  opts.max_context = 12;
  auto r = Generate(*model_, {RandomTokens(9, cfg_.vocab_size, 11), RandomTokens(3, cfg_.vocab_size, 12)}, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens[0].size(), 3u);
  EXPECT_EQ(r->tokens[1].size(), 9u);
  EXPECT_EQ(r->stop_reasons[0], StopReason::kContext);
}

TEST_F(GenerateTest, PromptLongerThanContextIsAnError) {
  GenerateOptions opts;
  opts.max_context = 12;
  auto r = Generate(*model_, {RandomTokens(13, cfg_.vocab_size, 11)}, opts);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(r.status().message().find("13 tokens"), std::string::npos) << r.status();
  // Without a cap, max_position_embeddings (512) bounds the prompt.
  opts.max_context = 0;
  EXPECT_FALSE(Generate(*model_, {RandomTokens(513, cfg_.vocab_size, 11)}, opts).ok());
}

TEST_F(GenerateTest, UnknownTokenIdIsAnError) {
  auto r = Generate(*model_, {{1, 2, 211}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("211"), std::string::npos) << r.status();
  EXPECT_FALSE(Generate(*model_, {{-5}}, {}).ok());
  EXPECT_FALSE(Generate(*model_, {{}}, {}).ok());
  EXPECT_FALSE(Generate(*model_, {}, {}).ok());
}

TEST_F(GenerateTest, EosIdsFromBothConfigFiles) {
  auto ids = LoadEosTokenIds(dir_, cfg_);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, std::vector<int64_t>{2});
  const std::string dir = NewTestDir("gen_config");
  ASSERT_TRUE(WriteRandomLlama(dir, cfg_, DType::kF32, 1).ok());
  ASSERT_TRUE(WriteStringToFile(dir + "/generation_config.json", R"({"eos_token_id": [2, 7, 9]})").ok());
  ids = LoadEosTokenIds(dir, cfg_);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{2, 7, 9}));
  ASSERT_TRUE(WriteStringToFile(dir + "/generation_config.json", R"({"eos_token_id": 5})").ok());
  ids = LoadEosTokenIds(dir, cfg_);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{2, 5}));
  ASSERT_TRUE(WriteStringToFile(dir + "/generation_config.json", R"({"eos_token_id": 999})").ok());
  EXPECT_FALSE(LoadEosTokenIds(dir, cfg_).ok());
}

}  // namespace
}  // namespace llama_moe
