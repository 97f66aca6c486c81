#include "moe/topk_router.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

MoeConfig Moe(int64_t nf, int64_t nl, int64_t k, bool normalize, ScoreFunction fn, double scale) {
  MoeConfig m;
  m.num_frozen_experts = nf;
  m.num_learned_experts = nl;
  m.expert_intermediate_size = 4;
  m.top_k = k;
  m.normalize_gates = normalize;
  m.score_function = fn;
  m.gate_scale = scale;
  return m;
}

TEST(RouterTest, BiasSteersSelectionButNotWeights) {
  const MoeConfig m = Moe(2, 2, 2, /*normalize=*/false, ScoreFunction::kSoftmax, 1.0);
  at::Tensor logits = at::tensor({3.0f, 2.0f, 1.0f, 0.0f}).reshape({1, 4});
  at::Tensor bias = at::tensor({0.0f, 0.0f, 1.0f, 1.0f});  // pushes experts 2,3 to the top
  RouterOutput r = RouteFromLogits(logits, bias, m);
  EXPECT_EQ(r.expert[0][0].item<int64_t>(), 2);
  EXPECT_EQ(r.expert[0][1].item<int64_t>(), 3);
  const at::Tensor p = at::softmax(logits, -1);
  EXPECT_FLOAT_EQ(r.weight[0][0].item<float>(), p[0][2].item<float>());  // unbiased score
  EXPECT_FLOAT_EQ(r.weight[0][1].item<float>(), p[0][3].item<float>());
}

TEST(RouterTest, NormalisedGatesTimesScaleAndSigmoid) {
  at::manual_seed(0);
  at::Tensor logits = at::randn({5, 8});
  RouterOutput r = RouteFromLogits(logits, at::zeros({8}), Moe(4, 4, 3, true, ScoreFunction::kSigmoid, 3.0));
  EXPECT_TRUE(at::allclose(r.weight.sum(-1), at::full({5}, 3.0f)));
  // Top-3 of the sigmoid scores are the top-3 logits.
  EXPECT_TRUE(at::equal(r.expert, std::get<1>(logits.topk(3, -1))));
  // Uniform scores with the automatic scale give every selected expert weight 1.
  RouterOutput u = RouteFromLogits(at::zeros({2, 8}), at::zeros({8}), Moe(4, 4, 4, true, ScoreFunction::kSoftmax, 4.0));
  EXPECT_TRUE(at::allclose(u.weight, at::ones({2, 4})));
}

TEST(RouterTest, DensePreservingBiasSelectsFrozenExperts) {
  // Zero router weights: all scores equal; a bias of +m/2 on frozen, -m/2 on learned experts.
  MoeConfig m = Moe(8, 8, 8, true, ScoreFunction::kSoftmax, 8.0);
  TopKRouter router(32, m, at::TensorOptions().dtype(at::kFloat));
  router.expert_bias().slice(0, 0, 8).fill_(0.5);
  router.expert_bias().slice(0, 8, 16).fill_(-0.5);
  RouterOutput r = router.forward(at::randn({10, 32}));
  EXPECT_TRUE(at::equal(std::get<0>(r.expert.sort(-1)), at::arange(8, at::kLong).repeat({10, 1})));
  EXPECT_TRUE(at::allclose(r.weight, at::ones({10, 8})));
}

TEST(RouterTest, BiasUpdateMovesTowardBalanceAndStaysCentred) {
  at::Tensor bias = at::zeros({4});
  UpdateExpertBias(bias, at::tensor(std::vector<int64_t>{10, 0, 5, 5}), 0.01);
  // Overloaded expert 0 goes down, starved expert 1 up, the balanced ones stay (then re-centred).
  EXPECT_LT(bias[0].item<float>(), bias[2].item<float>());
  EXPECT_GT(bias[1].item<float>(), bias[2].item<float>());
  EXPECT_NEAR(bias.sum().item<float>(), 0.0f, 1e-7);
  EXPECT_NEAR(bias[0].item<float>(), -0.01f, 1e-7);
  EXPECT_NEAR(bias[1].item<float>(), 0.01f, 1e-7);
}

TEST(RouterTest, UpdateBalanceMovesTheSelectionBias) {
  MoeConfig m = Moe(2, 2, 2, true, ScoreFunction::kSoftmax, 2.0);
  TopKRouter router(8, m, at::TensorOptions().dtype(at::kFloat));
  Router& seam = router;
  seam.UpdateBalance(at::tensor({8.0, 0.0, 4.0, 4.0}), 0.5);
  EXPECT_TRUE(at::equal(seam.balance_state(), at::tensor({-0.5f, 0.5f, 0.0f, 0.0f})));
  EXPECT_TRUE(seam.balance_state().is_same(router.expert_bias()));
}

TEST(RouterTest, RouterWeightGetsGradientThroughGates) {
  MoeConfig m = Moe(2, 2, 2, true, ScoreFunction::kSoftmax, 2.0);
  TopKRouter router(8, m, at::TensorOptions().dtype(at::kFloat));
  router.weight().data().normal_();
  RouterOutput r = router.forward(at::randn({6, 8}));
  (r.weight * at::randn({6, 2})).sum().backward();
  ASSERT_TRUE(router.weight().grad().defined());
  EXPECT_GT(router.weight().grad().abs().sum().item<float>(), 0.0f);
}

}  // namespace
}  // namespace llama_moe
