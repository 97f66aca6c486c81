#include "eval/evaluate_lib.h"

#include <ATen/ATen.h>
#include <sys/resource.h>

#include <cmath>

#include "gtest/gtest.h"
#include "model/llama_model.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"

namespace llama_moe {
namespace {

std::shared_ptr<const TokenStream> RandomStream(int64_t n, int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor t = at::randint(0, vocab - 1, {n}, at::kLong);
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<uint32_t>(t[i].item<int64_t>());
  return TokenStream::FromTokens(std::move(ids), static_cast<uint32_t>(vocab - 1));
}

int64_t PeakRssBytes() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

TEST(EvaluateTest, PerplexityEqualsTheDirectComputation) {
  const std::string dir = TestPath("tiny");
  ASSERT_TRUE(WriteTinyLlama(dir, TinyLlamaOptions()).ok());
  const int64_t L = 16, V = 512;
  // Two windows of L+1 tokens, the second sharing the first's last token (as windows overlap).
  auto stream = RandomStream(2 * L + 1, V, 1);
  EvalOptions o;
  o.model_dir = dir;
  o.reference_dir = dir;
  o.seq_len = L;
  o.batch = 1;
  o.max_windows = 2;
  absl::StatusOr<nlohmann::json> r = Evaluate(o, stream);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ((*r)["windows"], 2);
  // Directly: the full logits of each window, log-softmax, the targets' log-probabilities.
  auto model = *LoadLlamaFromDir(dir, {});
  std::vector<int64_t> all(2 * L + 1);
  stream->Read(0, absl::MakeSpan(all));
  double nll = 0;
  for (int w = 0; w < 2; ++w) {
    const at::Tensor window = at::tensor(std::vector<int64_t>(all.begin() + w * L, all.begin() + w * L + L + 1));
    const at::Tensor lp = at::log_softmax(*model->Forward(window.narrow(0, 0, L)), -1);
    nll -= lp.gather(-1, window.narrow(0, 1, L).unsqueeze(-1)).sum().item<double>();
  }
  const nlohmann::json& dense = (*r)["results"][0];
  // float32 logits summed in float64: the same numbers up to the head's chunking.
  EXPECT_NEAR(dense["loss"].get<double>(), nll / (2 * L), 1e-5);
  EXPECT_NEAR(dense["kl_to_reference"].get<double>(), 0.0, 1e-7);  // the model against itself
  EXPECT_EQ(dense["top1_agreement"].get<double>(), 1.0);
}

TEST(EvaluateTest, WindowsLongerThanTheContextAreRefused) {
  const std::string dir = TestPath("short_context");
  TinyLlamaOptions t;
  t.config.max_position_embeddings = 32;
  ASSERT_TRUE(WriteTinyLlama(dir, t).ok());
  EvalOptions o;
  o.model_dir = dir;
  o.seq_len = 33;
  const absl::Status s = Evaluate(o, RandomStream(100, 512, 3)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("max_position_embeddings 32"), std::string::npos) << s;
}

TEST(EvaluateTest, MemoryDoesNotGrowWithTheNumberOfWindows) {
  // V 32000, 128 positions: one window's float32 log-probabilities are 16 MB, so 64 windows of
  // them kept would be 1 GB.
  const std::string dir = TestPath("wide_vocab");
  TinyLlamaOptions t;
  t.config.vocab_size = 32000;
  t.config.bos_token_id = 1;
  t.config.eos_token_ids = {2};
  ASSERT_TRUE(WriteTinyLlama(dir, t).ok());
  auto stream = RandomStream(64 * 128 + 1, 32000, 2);
  EvalOptions o;
  o.model_dir = dir;
  o.reference_dir = dir;
  o.seq_len = 128;
  o.batch = 2;
  o.max_windows = 8;
  ASSERT_TRUE(Evaluate(o, stream).ok());
  const int64_t after_8 = PeakRssBytes();
  o.max_windows = 64;
  absl::StatusOr<nlohmann::json> r = Evaluate(o, stream);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["windows"], 64);
  const int64_t growth = PeakRssBytes() - after_8;
  // Keeping each window's log-probabilities would add ~900 MB; the allocator's own slack after
  // the earlier tests of this binary reaches ~70 MB, so the bound sits well between the two.
  EXPECT_LT(growth, int64_t{192} << 20) << "peak RSS grew by " << growth / 1e6 << " MB from 8 to 64 windows";
}

}  // namespace
}  // namespace llama_moe
