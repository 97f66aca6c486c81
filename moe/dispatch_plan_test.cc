#include "moe/dispatch_plan.h"

#include <ATen/ATen.h>

#include <limits>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

TEST(DispatchPlanTest, TrainingRunsRowMajorGemmsOnly) {
  const DispatchPlan p = PlanDispatch(DispatchMode::kTraining, at::randn({1, 8}), at::zeros({1, 2}, at::kLong));
  EXPECT_FALSE(p.one_token);
  for (int64_t rows : {1, 16, 127, 128, 4096}) EXPECT_EQ(p.PathFor(rows), SegmentPath::kGemmRowMajor) << rows;
}

TEST(DispatchPlanTest, InferenceOnTheCpuTakesTheKernel) {
  const at::Tensor ids = at::zeros({1, 2}, at::kLong);
  const DispatchPlan one = PlanDispatch(DispatchMode::kInference, at::randn({1, 8}), ids);
  EXPECT_TRUE(one.one_token);
  const DispatchPlan f32 = PlanDispatch(DispatchMode::kInference, at::randn({5, 8}), at::zeros({5, 2}, at::kLong));
  EXPECT_FALSE(f32.one_token);
  EXPECT_EQ(f32.kernel_max_rows, KernelMaxRows(at::kFloat));
  EXPECT_EQ(f32.PathFor(1), SegmentPath::kKernel);
  const DispatchPlan bf16 =
      PlanDispatch(DispatchMode::kInference, at::randn({5, 8}).to(at::kBFloat16), at::zeros({5, 2}, at::kLong));
  EXPECT_EQ(bf16.kernel_max_rows, KernelMaxRows(at::kBFloat16));
  EXPECT_GE(bf16.kernel_max_rows, 8);
  // Feature-major GEMMs are a float32 rule.
  EXPECT_EQ(bf16.feature_major_below, 0);
  // float16 has no kernel form: GEMMs, row-major.
  const DispatchPlan f16 =
      PlanDispatch(DispatchMode::kInference, at::randn({5, 8}).to(at::kHalf), at::zeros({5, 2}, at::kLong));
  EXPECT_FALSE(f16.one_token);
  EXPECT_EQ(f16.PathFor(1), SegmentPath::kGemmRowMajor);
}

TEST(DispatchPlanTest, GroupedRuleNeedsADeviceWithTheKernel) {
  const at::Tensor ids = at::zeros({5, 2}, at::kLong);
  for (const DispatchMode mode : {DispatchMode::kTraining, DispatchMode::kInference}) {
    EXPECT_FALSE(PlanDispatch(mode, at::randn({5, 8}).to(at::kBFloat16), ids).grouped);
    EXPECT_FALSE(PlanDispatch(mode, at::randn({5, 8}), ids).grouped);
  }
  EXPECT_FALSE(HasGroupedGemmKernel(c10::Device(c10::DeviceType::CPU)));
  EXPECT_FALSE(HasGroupedGemmKernel(c10::Device(c10::DeviceType::Meta)));
}

TEST(DispatchPlanTest, RulesApplyInOrder) {
  DispatchPlan p;
  p.kernel_max_rows = 24;
  p.feature_major_below = 128;
  EXPECT_EQ(p.PathFor(24), SegmentPath::kKernel);
  EXPECT_EQ(p.PathFor(25), SegmentPath::kGemmFeatureMajor);
  EXPECT_EQ(p.PathFor(127), SegmentPath::kGemmFeatureMajor);
  EXPECT_EQ(p.PathFor(128), SegmentPath::kGemmRowMajor);
  p.kernel_max_rows = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(p.PathFor(100000), SegmentPath::kKernel);
}

TEST(DispatchPlanTest, UpcastOnlyLargeBfloat16GemmsOnSlowBf16Cpus) {
  const at::Tensor a = at::randn({64, 64}), b = at::randn({64, 64});
  EXPECT_FALSE(UpcastGemm(a, b));  // float32 never
  EXPECT_FALSE(UpcastGemm(a.narrow(0, 0, 4).to(at::kBFloat16), b.to(at::kBFloat16)));  // too few rows
}

}  // namespace
}  // namespace llama_moe
