// Neuron partition: how the dense FFN's intermediate neurons are grouped into expert slices.
//
// A strategy orders the I neurons; expert e then owns positions [e*Ie, (e+1)*Ie) of that order.
// Gate and up rows and down columns always move together, so the slices' sum stays exactly the
// dense FFN whatever the order. One function per strategy; PartitionNeurons picks the recipe's.
// ARCHITECTURE.md says how to add one.
//
// Example:
//   DenseFfnWeights ffn{at::randn({8, 4}), at::randn({8, 4}), at::randn({4, 8})};  // I 8, H 4
//   ExpertStackWeights frozen = PartitionContiguous(ffn, /*num_experts=*/2);  // gate [2,4,4]
#ifndef LLAMA_MOE_CONVERT_PARTITION_H_
#define LLAMA_MOE_CONVERT_PARTITION_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "convert/recipe.pb.h"

namespace llama_moe {

// One layer's dense SwiGLU: gate and up [I,H], down [H,I].
struct DenseFfnWeights {
  at::Tensor gate, up, down;
};

// A stack of N expert slices: gate and up [N,Ie,H], down [N,H,Ie] (the checkpoint's layout).
struct ExpertStackWeights {
  at::Tensor gate, up, down;
};

// Expert e owns neurons [e*Ie, (e+1)*Ie): views of the dense matrices, no copy of gate/up.
ExpertStackWeights PartitionContiguous(const DenseFfnWeights& ffn, int64_t num_experts);

// A seeded random permutation of the neurons, then contiguous slices of it.
ExpertStackWeights PartitionRandomPermutation(const DenseFfnWeights& ffn, int64_t num_experts, at::Generator gen);

// The neurons grouped by co-activation: balanced k-means (exactly I/num_experts neurons per group)
// over the rows of `activations` [I,N] (each neuron's activation magnitudes on N calibration
// tokens), compared by cosine similarity; groups ordered by their lowest neuron, each ascending.
// Returns the order [I] int64; the seed picks the first starting neuron (farthest-point starts
// follow), the rest is deterministic.
at::Tensor CoactivationOrder(const at::Tensor& activations, int64_t num_experts, at::Generator gen);
ExpertStackWeights PartitionCoactivationClusters(const DenseFfnWeights& ffn, int64_t num_experts,
                                                 const at::Tensor& activations, at::Generator gen);

// The recipe's partition of layer `layer` into `num_experts` slices. `activations` ([I,N], the
// layer's calibration statistics) is needed by COACTIVATION_CLUSTERS and ignored otherwise.
ExpertStackWeights PartitionNeurons(const DenseFfnWeights& ffn, int64_t num_experts, const ConversionRecipe& recipe,
                                    int64_t layer, const at::Tensor& activations = {});

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_PARTITION_H_
