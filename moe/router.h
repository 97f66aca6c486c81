// The router seam: what an MoE layer asks of a router, whatever its algorithm.
//
// A router maps a layer's FFN input to the K experts of every token and their gate weights, and
// keeps whatever balancing state it needs. The MoE layers (moe/moe_layer.h,
// moe/expert_offload.h) hold a Router built by MakeRouter (moe/router_factory.h); the trainer
// moves the balancing state once per optimizer step through UpdateBalance. Top-k token choice
// with a selection bias (moe/topk_router.h) is the one implementation; ARCHITECTURE.md says how
// to add another.
//
// Example:
//   struct NoBalance : Router {
//     RouterOutput forward(const at::Tensor& x) override { return {}; }
//     void UpdateBalance(const at::Tensor& load, double rate) override {}
//     at::Tensor balance_state() const override { return at::Tensor(); }
//   };
//   NoBalance router;
//   if (!router.balance_state().defined()) return absl::OkStatus();
#ifndef LLAMA_MOE_MOE_ROUTER_H_
#define LLAMA_MOE_MOE_ROUTER_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace llama_moe {

struct RouterOutput {
  at::Tensor expert;  // [T,K] int64: selected expert ids, highest (biased) score first
  at::Tensor weight;  // [T,K] float32: gate weights (differentiable w.r.t. the router's parameters)
  at::Tensor logits;  // [T,E] float32: router logits, for the z-loss and statistics
  at::Tensor scores;  // [T,E] float32: the scores the gates come from, for statistics and aux losses
};

// Parameters and buffers are registered under HF-style names relative to "model.layers.N.mlp.router".
class Router : public torch::nn::Module {
 public:
  // x [T,H] in the compute dtype.
  virtual RouterOutput forward(const at::Tensor& x) = 0;
  // Moves the balancing state toward even loads, once per optimizer step, outside autograd.
  // `load` [E] counts the (token, slot) pairs each expert received over the step (summed over
  // micro-batches and ranks, so every rank makes the same update); `rate` is the step size.
  virtual void UpdateBalance(const at::Tensor& load, double rate) = 0;
  // The balancing state (float32, checkpointed as a buffer), or undefined for a router that
  // keeps none (one balanced by an auxiliary loss alone).
  virtual at::Tensor balance_state() const = 0;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_ROUTER_H_
