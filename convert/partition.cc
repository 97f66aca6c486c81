#include "convert/partition.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "convert/random_streams.h"

namespace llama_moe {
namespace {

// The neurons in `order` ([I] int64), gate/up rows and down columns together.
DenseFfnWeights Reorder(const DenseFfnWeights& ffn, const at::Tensor& order) {
  return {ffn.gate.index_select(0, order), ffn.up.index_select(0, order), ffn.down.index_select(1, order)};
}

}  // namespace

ExpertStackWeights PartitionContiguous(const DenseFfnWeights& ffn, int64_t num_experts) {
  const int64_t I = ffn.gate.size(0), H = ffn.gate.size(1), Ie = I / num_experts;
  // [I, H] -> [N, Ie, H]; [H, I] -> [H, N, Ie] -> [N, H, Ie].
  return {ffn.gate.reshape({num_experts, Ie, H}), ffn.up.reshape({num_experts, Ie, H}),
          ffn.down.reshape({H, num_experts, Ie}).permute({1, 0, 2})};
}

ExpertStackWeights PartitionRandomPermutation(const DenseFfnWeights& ffn, int64_t num_experts, at::Generator gen) {
  const at::Tensor perm = at::randperm(ffn.gate.size(0), gen, at::kLong);
  return PartitionContiguous(Reorder(ffn, perm), num_experts);
}

at::Tensor CoactivationOrder(const at::Tensor& activations, int64_t num_experts, at::Generator gen) {
  const int64_t I = activations.size(0), E = num_experts;
  TORCH_CHECK(E >= 1 && I % E == 0, "cannot split ", I, " neurons into ", E, " equal groups");
  const int64_t Ie = I / E;
  // Unit rows: cosine similarity is a dot product (a neuron that never fires stays at zero and
  // fills whichever group has room).
  at::Tensor x = activations.to(at::kFloat).contiguous();
  x = x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
  // Farthest-point start: a seeded first neuron, then each time the neuron least similar to every
  // centroid so far (random starts put two centroids in one cluster too often).
  std::vector<int64_t> start = {at::randperm(I, gen, at::kLong)[0].item<int64_t>()};
  at::Tensor closest = at::matmul(x, x[start[0]]);  // [I] best similarity to a chosen start
  for (int64_t e = 1; e < E; ++e) {
    at::Tensor candidates = closest.clone();
    for (int64_t c : start) candidates[c] = INFINITY;  // never the same neuron twice
    start.push_back(candidates.argmin().item<int64_t>());
    closest = at::maximum(closest, at::matmul(x, x[start.back()]));
  }
  at::Tensor centroids = x.index_select(0, at::tensor(start, at::kLong));
  std::vector<int64_t> group(I, -1), previous;
  constexpr int kMaxIterations = 20;
  for (int it = 0; it < kMaxIterations && group != previous; ++it) {
    previous = group;
    // Balanced assignment: (neuron, group) pairs by decreasing similarity; a neuron takes the
    // first group that still has room. A stable sort keeps ties in index order.
    const at::Tensor sim = at::matmul(x, centroids.t()).contiguous().reshape({-1});
    const at::Tensor order = std::get<1>(sim.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
    const int64_t* o = order.data_ptr<int64_t>();
    std::vector<int64_t> room(E, Ie);
    std::fill(group.begin(), group.end(), -1);
    int64_t placed = 0;
    for (int64_t k = 0; k < I * E && placed < I; ++k) {
      const int64_t n = o[k] / E, e = o[k] % E;
      if (group[n] >= 0 || room[e] == 0) continue;
      group[n] = e;
      --room[e];
      ++placed;
    }
    const at::Tensor index = at::tensor(group, at::kLong);
    centroids = at::zeros({E, x.size(1)}, x.options()).index_add_(0, index, x);
    centroids = centroids / centroids.norm(2, {1}, true).clamp_min(1e-12);
  }
  // Groups in the order of their lowest neuron, neurons ascending within a group.
  std::vector<std::vector<int64_t>> members(E);
  for (int64_t n = 0; n < I; ++n) members[group[n]].push_back(n);
  std::sort(members.begin(), members.end(),
            [](const std::vector<int64_t>& a, const std::vector<int64_t>& b) { return a.front() < b.front(); });
  std::vector<int64_t> out;
  out.reserve(I);
  for (const auto& m : members) out.insert(out.end(), m.begin(), m.end());
  return at::tensor(out, at::kLong);
}

ExpertStackWeights PartitionCoactivationClusters(const DenseFfnWeights& ffn, int64_t num_experts,
                                                 const at::Tensor& activations, at::Generator gen) {
  TORCH_CHECK(activations.defined() && activations.dim() == 2 && activations.size(0) == ffn.gate.size(0),
              "co-activation clustering needs activations [", ffn.gate.size(0), ", tokens]");
  return PartitionContiguous(Reorder(ffn, CoactivationOrder(activations, num_experts, gen)), num_experts);
}

ExpertStackWeights PartitionNeurons(const DenseFfnWeights& ffn, int64_t num_experts, const ConversionRecipe& recipe,
                                    int64_t layer, const at::Tensor& activations) {
  switch (recipe.partition()) {
    case ConversionRecipe::COACTIVATION_CLUSTERS:
      return PartitionCoactivationClusters(ffn, num_experts, activations,
                                           ConversionStream(recipe.seed(), layer, StreamPurpose::kPermutation));
    case ConversionRecipe::RANDOM_PERMUTATION:
      return PartitionRandomPermutation(ffn, num_experts,
                                        ConversionStream(recipe.seed(), layer, StreamPurpose::kPermutation));
    case ConversionRecipe::CONTIGUOUS:
      break;
  }
  return PartitionContiguous(ffn, num_experts);
}

}  // namespace llama_moe
