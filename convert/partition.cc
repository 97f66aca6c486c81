#include "convert/partition.h"

#include <ATen/ATen.h>

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

ExpertStackWeights PartitionNeurons(const DenseFfnWeights& ffn, int64_t num_experts, const ConversionRecipe& recipe,
                                    int64_t layer) {
  switch (recipe.partition()) {
    case ConversionRecipe::RANDOM_PERMUTATION:
      return PartitionRandomPermutation(ffn, num_experts,
                                        ConversionStream(recipe.seed(), layer, StreamPurpose::kPermutation));
    case ConversionRecipe::CONTIGUOUS:
      break;
  }
  return PartitionContiguous(ffn, num_experts);
}

}  // namespace llama_moe
