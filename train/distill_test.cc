#include "train/distill.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

TEST(DistillTest, ZeroWhenTheModelEqualsItsTeacher) {
  const at::Tensor teacher = at::randn({3, 5, 17});
  EXPECT_NEAR(DistillationLoss(teacher.clone(), teacher).item<double>(), 0.0, 1e-6);
  // A constant shift of the logits is the same distribution.
  EXPECT_NEAR(DistillationLoss(teacher + 3.0, teacher).item<double>(), 0.0, 1e-5);
}

TEST(DistillTest, EqualsTheKlSumAndTrainsOnlyTheStudent) {
  const at::Tensor teacher = at::randn({6, 11}, at::kDouble).requires_grad_(true);
  const at::Tensor student = at::randn({6, 11}, at::kDouble).requires_grad_(true);
  const at::Tensor kl = DistillationLoss(student, teacher);
  const at::Tensor p = at::softmax(teacher.detach(), -1), q = at::softmax(student.detach(), -1);
  const double want = (p * (p.log() - q.log())).sum().item<double>();
  EXPECT_GT(want, 0);
  EXPECT_NEAR(kl.item<double>(), want, 1e-5 * want);
  kl.backward();
  ASSERT_TRUE(student.grad().defined());
  // d/ds KL = softmax(s) - softmax(t), per row.
  EXPECT_LE((student.grad() - (q - p)).abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(teacher.grad().defined());
}

TEST(DistillTest, MaskedPositionsAddNothingAndGetNoGradient) {
  const at::Tensor teacher = at::randn({2, 3, 11}, at::kDouble);
  const at::Tensor student = at::randn({2, 3, 11}, at::kDouble).requires_grad_(true);
  const at::Tensor mask = at::tensor({1, 0, 1, 0, 0, 1}).to(at::kBool).reshape({2, 3});
  const at::Tensor kl = DistillationLoss(student, teacher, mask);
  const double want = DistillationLoss(student.detach().masked_select(mask.unsqueeze(-1)).reshape({3, 11}),
                                       teacher.masked_select(mask.unsqueeze(-1)).reshape({3, 11}))
                          .item<double>();
  EXPECT_NEAR(kl.item<double>(), want, 1e-5 * want);
  kl.backward();
  const at::Tensor per_position = student.grad().abs().sum(-1);
  EXPECT_TRUE(per_position.masked_select(mask.logical_not()).eq(0).all().item<bool>());
  EXPECT_TRUE(per_position.masked_select(mask).gt(0).all().item<bool>());
}

TEST(DistillTest, WeightMovesLinearlyOverTheRun) {
  TrainConfig cfg;
  cfg.set_steps(11);
  cfg.set_distill_weight(1.0);
  EXPECT_EQ(DistillWeight(cfg, 7), 1.0);  // constant without an end
  cfg.set_distill_weight_end(0.0);
  EXPECT_DOUBLE_EQ(DistillWeight(cfg, 0), 1.0);
  EXPECT_DOUBLE_EQ(DistillWeight(cfg, 5), 0.5);
  EXPECT_DOUBLE_EQ(DistillWeight(cfg, 10), 0.0);
  EXPECT_DOUBLE_EQ(DistillWeight(cfg, 99), 0.0);
  EXPECT_TRUE(Distills(cfg));
  EXPECT_FALSE(Distills(TrainConfig()));
}

}  // namespace
}  // namespace llama_moe
