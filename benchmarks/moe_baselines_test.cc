// The benchmark's baselines compute what the slow reference computes, so that their timings
// compare equal work.
#include "benchmarks/moe_baselines.h"

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "moe/moe_reference.h"
#include "moe/random_expert_bank.h"

namespace llama_moe {
namespace {

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() /
         b.to(at::kDouble).abs().max().item<double>();
}

TEST(MoeBaselinesTest, MatchTheReference) {
  at::manual_seed(0);
  for (const auto& [T, nf, nl, K] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 8, 8, 8}, {7, 8, 8, 2}, {33, 4, 4, 1}, {64, 8, 0, 3}}) {
    const int64_t H = 24, ie = 12;
    const ExpertBank bank = RandomExpertBank(nf, nl, ie, H, at::kFloat);
    const at::Tensor expert = std::get<1>(at::rand({T, nf + nl}).topk(K, -1));
    const at::Tensor weight = at::rand({T, K}) + 0.1;
    const at::Tensor x = at::randn({T, H});
    const at::Tensor ref = ReferenceMoeForward(x, expert, weight, bank);
    // Float32 with different summation orders: a few ulps of the output scale.
    EXPECT_LT(RelErr(AllTokensMoeForward(x, expert, weight, bank), ref), 1e-5) << T << " " << K;
    EXPECT_LT(RelErr(MixtralLoopMoeForward(x, expert, weight, bank), ref), 1e-5) << T << " " << K;
  }
}

}  // namespace
}  // namespace llama_moe
