#include "train/lm_loss.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

// A small differentiable model: an embedding, a tanh mixing layer and a head, so that every
// position's loss reaches the shared parameters.
struct Toy {
  at::Tensor embed = at::randn({11, 6}, at::kDouble).requires_grad_(true);
  at::Tensor mix = at::randn({6, 6}, at::kDouble).requires_grad_(true);
  at::Tensor head = at::randn({6, 11}, at::kDouble).requires_grad_(true);

  at::Tensor Logits(const at::Tensor& inputs) const {
    const at::Tensor h = embed.index_select(0, inputs.reshape({-1})).reshape({inputs.size(0), inputs.size(1), 6});
    return at::tanh(h.matmul(mix)).matmul(head);
  }
  std::vector<at::Tensor> Grads(const at::Tensor& loss) {
    for (at::Tensor* p : {&embed, &mix, &head}) {
      if (p->grad().defined()) p->mutable_grad().zero_();
    }
    loss.backward();
    return {embed.grad().clone(), mix.grad().clone(), head.grad().clone()};
  }
};

TEST(NextTokenLossTest, WithoutMaskItIsTheSummedCrossEntropy) {
  at::manual_seed(1);
  const at::Tensor logits = at::randn({2, 5, 11}, at::kDouble);
  const at::Tensor targets = at::randint(11, {2, 5}, at::kLong);
  const double expected = -at::log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).sum().item<double>();
  EXPECT_NEAR(NextTokenLoss(logits, targets).item<double>(), expected, 1e-12);
  const at::Tensor all = at::ones({2, 5}, at::kBool);
  EXPECT_EQ(NextTokenLoss(logits, targets, all).item<double>(), NextTokenLoss(logits, targets).item<double>());
}

TEST(NextTokenLossTest, MaskedTargetsCarryNoGradient) {
  at::manual_seed(2);
  Toy toy;
  const at::Tensor tokens = at::randint(11, {3, 9}, at::kLong);
  const at::Tensor inputs = tokens.narrow(1, 0, 8), targets = tokens.narrow(1, 1, 8);
  const at::Tensor mask = at::rand({3, 8}) < 0.5;
  ASSERT_GT(mask.sum().item<int64_t>(), 0);
  ASSERT_LT(mask.sum().item<int64_t>(), 24);

  // The masked loss equals the loss over the kept positions alone.
  const at::Tensor logits = toy.Logits(inputs);
  const at::Tensor kept = -at::log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_select(mask);
  EXPECT_NEAR(NextTokenLoss(logits, targets, mask).item<double>(), kept.sum().item<double>(), 1e-10);

  // Changing the masked targets changes neither the loss nor any parameter's gradient.
  const std::vector<at::Tensor> g1 = toy.Grads(NextTokenLoss(toy.Logits(inputs), targets, mask));
  const at::Tensor other = at::where(mask, targets, (targets + 5).remainder(11));
  ASSERT_FALSE(at::equal(other, targets));
  const std::vector<at::Tensor> g2 = toy.Grads(NextTokenLoss(toy.Logits(inputs), other, mask));
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_TRUE(at::equal(g1[i], g2[i])) << "parameter " << i;

  // The gradient reaching a masked position's logits is exactly zero; a kept position's is not.
  const at::Tensor leaf = toy.Logits(inputs).detach().requires_grad_(true);
  NextTokenLoss(leaf, targets, mask).backward();
  const at::Tensor per_position = leaf.grad().abs().sum(-1);
  EXPECT_TRUE(per_position.masked_select(mask.logical_not()).eq(0).all().item<bool>());
  EXPECT_TRUE(per_position.masked_select(mask).gt(0).all().item<bool>());

  // And a fully masked batch has a zero loss and zero gradients.
  const std::vector<at::Tensor> g0 =
      toy.Grads(NextTokenLoss(toy.Logits(inputs), targets, at::zeros({3, 8}, at::kBool)) * 1.0);
  for (const at::Tensor& g : g0) EXPECT_EQ(g.abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace llama_moe
