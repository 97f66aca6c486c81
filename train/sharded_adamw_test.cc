#include "train/sharded_adamw.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

// Single-rank ShardedAdamW against LibTorch's own AdamW (the slow, trusted reference), with
// weight decay only on matrices (a second param group without decay for vectors).
TEST(ShardedAdamWTest, MatchesTorchAdamWWithDecayOnMatricesOnly) {
  at::manual_seed(0);
  const at::Tensor w0 = at::randn({6, 5}), b0 = at::randn({5});
  at::Tensor w = w0.clone().set_requires_grad(true), b = b0.clone().set_requires_grad(true);
  at::Tensor rw = w0.clone().set_requires_grad(true), rb = b0.clone().set_requires_grad(true);
  DistEnv env;
  auto comm = *Communicator::Create(env, c10::kCPU, std::chrono::seconds(10));
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  ShardedAdamW ours({{"w", w}, {"b", b}}, comm.get(), o);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{rw},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{rb},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 5; ++step) {
    const at::Tensor x = at::randn({4, 6});
    (at::matmul(x, w) + b).pow(2).sum().backward();
    (at::matmul(x, rw) + rb).pow(2).sum().backward();
    ours.AccumulateGradients();
    const double norm = *ours.ReduceGradients();
    ASSERT_TRUE(ours.Step(1e-2, /*max_norm=*/0, norm).ok());
    ref.step();
    ref.zero_grad();
  }
  // Same float32 arithmetic up to operation order.
  EXPECT_LT((w - rw).abs().max().item<float>(), 1e-6);
  EXPECT_LT((b - rb).abs().max().item<float>(), 1e-6);
  EXPECT_FALSE(at::allclose(w, w0));
}

TEST(ShardedAdamWTest, ClippingScalesTheUpdateAndStateRoundTrips) {
  at::Tensor p = at::ones({3, 3}).set_requires_grad(true);
  DistEnv env;
  auto comm = *Communicator::Create(env, c10::kCPU, std::chrono::seconds(10));
  ShardedAdamW opt({{"p", p}}, comm.get(), {});
  (p * 100).sum().backward();
  opt.AccumulateGradients();
  EXPECT_FALSE(p.grad().defined());  // moved into the float32 buffer
  const double norm = *opt.ReduceGradients();
  EXPECT_NEAR(norm, 300.0, 1e-3);
  ASSERT_TRUE(opt.Step(1e-3, 1.0, norm).ok());
  auto state = opt.State();
  EXPECT_EQ(state.at("step").item<int64_t>(), 1);
  // A fresh optimizer restored from the state holds the same weights.
  at::Tensor q = at::zeros({3, 3}).set_requires_grad(true);
  ShardedAdamW again({{"q", q}}, comm.get(), {});
  ASSERT_TRUE(again.LoadState(state).ok());
  EXPECT_TRUE(at::equal(q, p));
  auto bad = state;
  bad["master"] = at::zeros({4});
  EXPECT_FALSE(again.LoadState(bad).ok());
}

}  // namespace
}  // namespace llama_moe
