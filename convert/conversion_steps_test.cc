// The converter's steps one by one: each partition keeps the slices' sum equal to the dense
// FFN, each learned-expert init does what its recipe field says, each router init has the
// property recipe.proto promises.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "convert/learned_init.h"
#include "convert/partition.h"
#include "convert/random_streams.h"
#include "convert/router_init.h"
#include "gtest/gtest.h"

namespace llama_moe {
namespace {

// The SwiGLU of a stack's experts summed, with weight 1 each: the dense FFN when the stack
// partitions it.
at::Tensor SumOfExperts(const ExpertStackWeights& s, const at::Tensor& x) {
  at::Tensor y = at::zeros({x.size(0), s.down.size(1)}, at::kDouble);
  for (int64_t e = 0; e < s.gate.size(0); ++e) {
    y += at::matmul(at::silu(at::matmul(x, s.gate[e].t())) * at::matmul(x, s.up[e].t()), s.down[e].t());
  }
  return y;
}

DenseFfnWeights RandomFfn(int64_t I, int64_t H) {
  return {at::randn({I, H}, at::kDouble), at::randn({I, H}, at::kDouble), at::randn({H, I}, at::kDouble)};
}

at::Tensor DenseForward(const DenseFfnWeights& f, const at::Tensor& x) {
  return at::matmul(at::silu(at::matmul(x, f.gate.t())) * at::matmul(x, f.up.t()), f.down.t());
}

TEST(PartitionTest, EveryStrategyPartitionsTheDenseFfn) {
  at::manual_seed(0);
  const DenseFfnWeights ffn = RandomFfn(24, 8);
  const at::Tensor x = at::randn({5, 8}, at::kDouble);
  const at::Tensor want = DenseForward(ffn, x);
  const ExpertStackWeights contiguous = PartitionContiguous(ffn, 4);
  EXPECT_EQ(contiguous.gate.sizes(), at::IntArrayRef({4, 6, 8}));
  EXPECT_EQ(contiguous.down.sizes(), at::IntArrayRef({4, 8, 6}));
  // Expert 1 owns neurons 6..11: gate/up rows and down columns alike.
  EXPECT_TRUE(at::equal(contiguous.gate[1], ffn.gate.slice(0, 6, 12)));
  EXPECT_TRUE(at::equal(contiguous.down[1], ffn.down.slice(1, 6, 12)));
  const ExpertStackWeights shuffled =
      PartitionRandomPermutation(ffn, 4, ConversionStream(3, 0, StreamPurpose::kPermutation));
  EXPECT_FALSE(at::equal(shuffled.gate, contiguous.gate));
  // Summation order differs: float64 rounding only.
  EXPECT_LT((SumOfExperts(contiguous, x) - want).abs().max().item<double>(), 1e-10);
  EXPECT_LT((SumOfExperts(shuffled, x) - want).abs().max().item<double>(), 1e-10);
  // The same stream gives the same permutation.
  const ExpertStackWeights again = PartitionRandomPermutation(ffn, 4, ConversionStream(3, 0, StreamPurpose::kPermutation));
  EXPECT_TRUE(at::equal(again.up, shuffled.up));
}

TEST(PartitionTest, CoactivationClustersGroupNeuronsThatFireTogetherInEqualGroups) {
  // 12 neurons, 3 groups: neurons n % 3 == g fire on tokens [10g, 10g + 10) (with noise), so
  // the groups must be {0,3,6,9}, {1,4,7,10}, {2,5,8,11}.
  at::manual_seed(1);
  const int64_t I = 12, E = 3, N = 30;
  at::Tensor acts = 0.05 * at::rand({I, N}, at::kDouble);
  for (int64_t n = 0; n < I; ++n) acts[n].slice(0, 10 * (n % 3), 10 * (n % 3) + 10) += 1.0 + at::rand({10}, at::kDouble);
  for (int seed = 0; seed < 4; ++seed) {
    const at::Tensor order = CoactivationOrder(acts, E, ConversionStream(seed, 0, StreamPurpose::kPermutation));
    EXPECT_TRUE(at::equal(order, at::tensor({0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11}, at::kLong))) << order;
  }
  // Balanced even when the data favour one group: every neuron fires on the same tokens.
  const at::Tensor same = at::ones({I, N}, at::kDouble) + 1e-3 * at::rand({I, N}, at::kDouble);
  const at::Tensor order = CoactivationOrder(same, 4, ConversionStream(5, 2, StreamPurpose::kPermutation));
  EXPECT_TRUE(at::equal(std::get<0>(order.sort()), at::arange(I, at::kLong)));  // a permutation
  // Neurons that never fire (zero rows) still get a place.
  const at::Tensor silent = at::zeros({I, N}, at::kDouble);
  EXPECT_TRUE(at::equal(std::get<0>(CoactivationOrder(silent, E, ConversionStream(0, 0, StreamPurpose::kPermutation))
                                        .sort()),
                        at::arange(I, at::kLong)));
  // The partition keeps the experts' sum equal to the dense FFN, and is the same for the same stream.
  const DenseFfnWeights ffn = RandomFfn(I, 8);
  const at::Tensor x = at::randn({5, 8}, at::kDouble);
  const ExpertStackWeights clustered =
      PartitionCoactivationClusters(ffn, E, acts, ConversionStream(3, 0, StreamPurpose::kPermutation));
  EXPECT_EQ(clustered.gate.sizes(), at::IntArrayRef({3, 4, 8}));
  EXPECT_TRUE(at::equal(clustered.gate[1], ffn.gate.index_select(0, at::tensor({1, 4, 7, 10}, at::kLong))));
  EXPECT_LT((SumOfExperts(clustered, x) - DenseForward(ffn, x)).abs().max().item<double>(), 1e-10);
  // Groups that cannot be equal are refused.
  EXPECT_THROW(CoactivationOrder(acts, 5, ConversionStream(0, 0, StreamPurpose::kPermutation)), c10::Error);
}

TEST(LearnedInitTest, NoisySliceCopiesAndPerturbs) {
  at::manual_seed(1);
  const at::Tensor frozen = at::randn({2, 4, 8});
  const at::Tensor exact = NoisySliceInit(frozen, 3, 0.0, 0, 0, StreamPurpose::kNoiseGate);
  EXPECT_TRUE(at::equal(exact[0], frozen[0]));
  EXPECT_TRUE(at::equal(exact[2], frozen[0]));  // expert j copies slice j mod Nf
  const at::Tensor noisy = NoisySliceInit(frozen, 3, 0.5, 0, 0, StreamPurpose::kNoiseGate);
  const double noise_std = (noisy - exact).std().item<double>();
  EXPECT_NEAR(noise_std, 0.5, 0.1);  // 96 draws: within 0.1 of the asked std
  EXPECT_TRUE(at::equal(noisy, NoisySliceInit(frozen, 3, 0.5, 0, 0, StreamPurpose::kNoiseGate)));
}

// NoisySliceInitInto against the obvious composition: copy the slices, add per-chunk draws of
// ATen's own normal_, round once. A small stack fits one chunk of 2^20; stacks of 3 and 12 copies
// of 5 slices of 7 x 60000 span 2 and 5 chunks, with a slice period that does not divide them.
TEST(LearnedInitTest, NoisySliceIntoEqualsTheComposition) {
  at::manual_seed(4);
  for (const auto& shape : std::vector<std::vector<int64_t>>{{5, 7, 600}, {5, 7, 60000}}) {
    const at::Tensor frozen = at::randn(shape);
    for (int64_t learned : {3, 12}) {
      const at::Tensor copies = frozen.index_select(0, at::arange(learned, at::kLong).remainder(shape[0])).contiguous();
      at::Tensor reference = copies.clone().view({-1});
      const int64_t chunk = int64_t{1} << 20, n = reference.numel();
      for (int64_t c = 0; c * chunk < n; ++c) {
        at::Tensor part = reference.narrow(0, c * chunk, std::min(chunk, n - c * chunk));
        part.add_(at::empty_like(part).normal_(0.0, 0.03, ConversionStream(9, 2, StreamPurpose::kNoiseUp, c)));
      }
      reference = reference.view(copies.sizes());
      for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
        at::Tensor out = at::empty(copies.sizes(), type);
        NoisySliceInitInto(frozen, 0.03, 9, 2, StreamPurpose::kNoiseUp, out);
        EXPECT_TRUE(at::equal(out, reference.to(type))) << learned << " " << type;
      }
    }
  }
}

TEST(LearnedInitTest, DropUpcyclingRedrawsTheAskedFraction) {
  at::manual_seed(2);
  const at::Tensor frozen = at::randn({2, 10, 6});  // gate-like: neurons on dim 1
  const at::Tensor learned = DropUpcyclingInit(frozen, 2, 0.3, 0.0, 1.0, /*neuron_dim=*/1, 0, 0,
                                               StreamPurpose::kNoiseGate);
  for (int64_t j = 0; j < 2; ++j) {
    const at::Tensor same_rows = (learned[j] == frozen[j]).all(/*dim=*/1);
    EXPECT_EQ(same_rows.sum().item<int64_t>(), 7) << j;  // 3 of 10 neurons re-drawn
  }
}

TEST(RouterInitTest, DensePreservingPrefersEveryFrozenExpert) {
  const RouterInitWeights r = DensePreservingRouterInit(8, 8, 16, 1.0);
  EXPECT_EQ(r.weight.abs().sum().item<float>(), 0.0f);
  EXPECT_NEAR(r.bias.sum().item<float>(), 0.0f, 1e-6);
  EXPECT_FLOAT_EQ(r.bias[0].item<float>() - r.bias[8].item<float>(), 1.0f);
}

TEST(RouterInitTest, ComplementaryRowsAreOpposite) {
  const RouterInitWeights r = ComplementaryRouterInit(4, 4, 16, 0.1, ConversionStream(0, 2, StreamPurpose::kRouter));
  EXPECT_TRUE(at::equal(r.weight.slice(0, 0, 4), -r.weight.slice(0, 4, 8)));
  EXPECT_TRUE(at::equal(r.weight[0], r.weight[3]));
  EXPECT_EQ(r.bias.abs().sum().item<float>(), 0.0f);
  const RouterInitWeights n = NormalRouterInit(16, 64, 0.02, ConversionStream(0, 0, StreamPurpose::kRouter));
  EXPECT_NEAR(n.weight.std().item<double>(), 0.02, 0.002);  // 1024 draws
}

}  // namespace
}  // namespace llama_moe
