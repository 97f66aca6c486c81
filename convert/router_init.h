// Router initialisation: a new router's weight [E,H] and selection bias [E] (float32).
//
// One function per strategy (recipe.proto's RouterInit documents what each guarantees);
// InitRouter picks the recipe's. Experts are numbered frozen first, as the router numbers them.
// ARCHITECTURE.md says how to add one.
//
// Example:
//   RouterInitWeights r = DensePreservingRouterInit(/*num_frozen=*/8, /*num_learned=*/8, /*hidden=*/64,
//                                                   /*bias_margin=*/1.0);
//   // r.weight [16,64] zeros; r.bias +0.5 on the frozen experts, -0.5 on the learned ones
#ifndef LLAMA_MOE_CONVERT_ROUTER_INIT_H_
#define LLAMA_MOE_CONVERT_ROUTER_INIT_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "convert/recipe.pb.h"
#include "moe/moe_config.h"

namespace llama_moe {

struct RouterInitWeights {
  at::Tensor weight;  // [E,H] float32
  at::Tensor bias;    // [E] float32
};

// N(0, std^2) weights, zero bias.
RouterInitWeights NormalRouterInit(int64_t num_experts, int64_t hidden, double std, at::Generator gen);

// Zero weights (equal scores for every token) and a zero-mean bias that prefers every frozen
// expert by `bias_margin`: routed mode selects exactly the frozen experts.
RouterInitWeights DensePreservingRouterInit(int64_t num_frozen, int64_t num_learned, int64_t hidden,
                                            double bias_margin);

// Frozen rows u ~ N(0, std^2), learned rows -u, zero bias: each token's top-K is one whole group.
RouterInitWeights ComplementaryRouterInit(int64_t num_frozen, int64_t num_learned, int64_t hidden, double std,
                                          at::Generator gen);

// The recipe's router for layer `layer`.
RouterInitWeights InitRouter(const ConversionRecipe& recipe, const MoeConfig& moe, int64_t hidden, int64_t layer);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_ROUTER_INIT_H_
