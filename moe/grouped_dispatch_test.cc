#include "moe/grouped_dispatch.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "moe/dispatch.h"
#include "moe/moe_layer.h"
#include "moe/moe_reference.h"
#include "moe/random_expert_bank.h"

namespace llama_moe {
namespace {

std::pair<at::Tensor, at::Tensor> RandomRoute(int64_t T, int64_t E, int64_t K) {
  return {std::get<1>(at::rand({T, E}).topk(K, -1)), at::rand({T, K}) + 0.1};
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.to(at::kDouble).abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// Forward and every gradient against autograd through the reference, in float64: the same
// products summed in other orders.
void CheckAgainstReference(int64_t T, int64_t nf, int64_t nl, int64_t K, bool train_frozen, int64_t align) {
  const int64_t H = 16, ie = 8;
  ExpertBank s = RandomExpertBank(nf, nl, ie, H, at::kDouble);
  std::vector<at::Tensor*> params;
  if (nl > 0) params = {&s.learned_gate, &s.learned_up, &s.learned_down};
  if (train_frozen) params.insert(params.end(), {&s.frozen_gate, &s.frozen_up, &s.frozen_down});
  for (at::Tensor* p : params) p->set_requires_grad(true);
  auto [expert, weight0] = RandomRoute(T, nf + nl, K);
  const at::Tensor x = at::randn({T, H}, at::kDouble).set_requires_grad(true);
  const at::Tensor weight = weight0.clone().set_requires_grad(true);
  std::vector<at::Tensor> wrt = {x, weight};
  for (at::Tensor* p : params) wrt.push_back(*p);
  const at::Tensor probe = at::randn({T, H}, at::kDouble);
  const at::Tensor y = GroupedMoeForward(x, expert, weight, s, ReferenceGroupedGemm(align));
  const at::Tensor ref = ReferenceMoeForward(x, expert, weight, s);
  const std::string where = "T " + std::to_string(T) + " nf " + std::to_string(nf) + " nl " + std::to_string(nl) +
                            " K " + std::to_string(K) + " align " + std::to_string(align);
  EXPECT_LT(RelErr(y, ref), 1e-12) << where;
  const auto fast = torch::autograd::grad({y}, wrt, {probe});
  // The reference leaves a stack no token chose out of its graph: its gradient is zero.
  const auto slow = torch::autograd::grad({ref}, wrt, {probe}, /*retain_graph=*/{}, /*create_graph=*/false,
                                          /*allow_unused=*/true);
  ASSERT_EQ(fast.size(), slow.size());
  for (size_t i = 0; i < fast.size(); ++i) {
    ASSERT_TRUE(fast[i].defined()) << "input " << i << " " << where;
    const at::Tensor expected = slow[i].defined() ? slow[i] : at::zeros_like(wrt[i]);
    EXPECT_EQ(fast[i].sizes(), expected.sizes()) << "input " << i << " " << where;
    EXPECT_LT(RelErr(fast[i], expected), 1e-12) << "input " << i << " " << where;
  }
}

TEST(GroupedDispatchTest, ForwardAndGradientsEqualTheReference) {
  at::manual_seed(0);
  for (const int64_t align : {1, 8}) {
    CheckAgainstReference(12, 4, 4, 3, /*train_frozen=*/false, align);
    CheckAgainstReference(40, 8, 8, 8, /*train_frozen=*/true, align);  // 16 experts, top-8
    CheckAgainstReference(1, 8, 8, 8, /*train_frozen=*/false, align);  // a decode step
    CheckAgainstReference(3, 2, 2, 1, /*train_frozen=*/true, align);   // most experts unchosen
    CheckAgainstReference(30, 6, 0, 2, /*train_frozen=*/true, align);  // no learned stack
  }
}

TEST(GroupedDispatchTest, AStackNoTokenChoseGetsADefinedZeroGradient) {
  at::manual_seed(1);
  const int64_t T = 3, H = 16, ie = 8;
  ExpertBank s = RandomExpertBank(4, 4, ie, H, at::kFloat);
  s.learned_gate.set_requires_grad(true);
  s.learned_down.set_requires_grad(true);
  const at::Tensor x = at::randn({T, H}).set_requires_grad(true), weight = at::rand({T, 2}) + 0.1;
  const at::Tensor expert = at::stack({at::arange(T, at::kLong), at::arange(T, at::kLong) + 1}, 1);  // frozen only
  const auto grads = torch::autograd::grad({GroupedMoeForward(x, expert, weight, s, ReferenceGroupedGemm(8))},
                                           {x, s.learned_gate, s.learned_down}, {at::randn({T, H})});
  EXPECT_GT(grads[0].abs().max().item<float>(), 0.0f);
  for (size_t i = 1; i < 3; ++i) {
    ASSERT_TRUE(grads[i].defined());
    EXPECT_TRUE(at::equal(grads[i], at::zeros_like(grads[i])));
  }
}

TEST(GroupedDispatchTest, EqualsTheSegmentDispatch) {
  at::manual_seed(2);
  const int64_t T = 50, H = 32, ie = 16;
  ExpertBank s = RandomExpertBank(8, 8, ie, H, at::kFloat);
  auto [expert, weight] = RandomRoute(T, 16, 8);
  const at::Tensor x = at::randn({T, H});
  EXPECT_LT(RelErr(GroupedMoeForward(x, expert, weight, s, ReferenceGroupedGemm()),
                   SparseMoeForward(x, expert, weight, s)),
            1e-5);
}

TEST(GroupedDispatchTest, Bfloat16MatchesTheReference) {
  at::manual_seed(3);
  const int64_t T = 40, H = 32, ie = 16;
  ExpertBank s = RandomExpertBank(8, 8, ie, H, at::kBFloat16);
  s.learned_gate.set_requires_grad(true);
  s.learned_up.set_requires_grad(true);
  s.learned_down.set_requires_grad(true);
  auto [expert, weight0] = RandomRoute(T, 16, 4);
  const at::Tensor x = at::randn({T, H}).to(at::kBFloat16).set_requires_grad(true);
  const at::Tensor weight = weight0.clone().set_requires_grad(true);
  const std::vector<at::Tensor> wrt = {x, weight, s.learned_gate, s.learned_up, s.learned_down};
  const at::Tensor probe = at::randn({T, H}).to(at::kBFloat16);
  const at::Tensor y = GroupedMoeForward(x, expert, weight, s, ReferenceGroupedGemm(8));
  const at::Tensor ref = ReferenceMoeForward(x, expert, weight, s);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  // bfloat16 keeps 8 bits of mantissa; intermediate roundings differ by path: 2^-6 relative.
  EXPECT_LT(RelErr(y, ref), 1.6e-2);
  const auto fast = torch::autograd::grad({y}, wrt, {probe});
  const auto slow = torch::autograd::grad({ref}, wrt, {probe});
  for (size_t i = 0; i < fast.size(); ++i) EXPECT_LT(RelErr(fast[i], slow[i]), 3e-2) << "input " << i;
}

TEST(GroupedDispatchTest, InferenceKeepsNoGraph) {
  at::manual_seed(4);
  ExpertBank s = RandomExpertBank(4, 4, 8, 16, at::kFloat);
  auto [expert, weight] = RandomRoute(5, 8, 2);
  const at::Tensor y = GroupedMoeForward(at::randn({5, 16}), expert, weight, s, ReferenceGroupedGemm());
  EXPECT_FALSE(y.requires_grad());
}

TEST(GroupedDispatchTest, LayerStacksAreOneAllocationLearnedFirst) {
  MoeConfig moe;
  moe.num_frozen_experts = 3;
  moe.num_learned_experts = 2;
  moe.expert_intermediate_size = 4;
  moe.top_k = 2;
  MoeFeedForward layer(8, moe, MoeLayerOptions(), at::TensorOptions().dtype(at::kFloat));
  {
    c10::NoGradGuard no_grad;
    for (auto& p : layer.parameters()) p.normal_();  // in place, as loading a checkpoint writes them
  }
  const ExpertBank bank = layer.experts();
  EXPECT_TRUE(bank.learned_gate.requires_grad());
  EXPECT_FALSE(bank.frozen_gate.requires_grad());
  for (const auto& [learned, frozen] : {std::make_pair(bank.learned_gate, bank.frozen_gate),
                                        std::make_pair(bank.learned_up, bank.frozen_up),
                                        std::make_pair(bank.learned_down, bank.frozen_down)}) {
    const at::Tensor both = LearnedThenFrozen(learned, frozen);
    EXPECT_EQ(both.data_ptr(), learned.data_ptr());  // a view: no copy
    EXPECT_TRUE(at::equal(both, at::cat({learned, frozen})));
  }
  // Separate allocations still work, through a copy.
  const at::Tensor l = at::randn({2, 4, 8}), f = at::randn({3, 4, 8});
  const at::Tensor both = LearnedThenFrozen(l, f);
  EXPECT_NE(both.data_ptr(), l.data_ptr());
  EXPECT_TRUE(at::equal(both, at::cat({l, f})));
  EXPECT_TRUE(LearnedThenFrozen(at::Tensor(), f).is_same(f));
}

}  // namespace
}  // namespace llama_moe
