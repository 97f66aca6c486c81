// Token-choice top-k router with auxiliary-loss-free load balancing (DeepSeek-V3).
//
// scores = softmax or sigmoid of x W^T ([T,E], float32). Selection takes the top K of
// scores + expert_bias; the gate weights come from the *unbiased* scores of the selected experts
// (renormalised to sum to 1 when asked, then times gate_scale). The bias therefore steers which
// experts are used, never how much they contribute, and is moved once per optimizer step by
// UpdateExpertBias from the loads counted over that step.
//
// Parameters (HF-style names under "model.layers.N.mlp.router"): "weight" [E,H];
// buffer "expert_bias" [E] float32.
//
// Example:
//   auto router = std::make_shared<TopKRouter>(H, moe, options);
//   RouterOutput r = router->forward(x);          // r.expert [T,K], r.weight [T,K]
//   UpdateExpertBias(router->expert_bias(), load_per_expert, moe.bias_update_rate);
#ifndef LLAMA_MOE_MOE_ROUTER_H_
#define LLAMA_MOE_MOE_ROUTER_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "convert/moe_config.h"

namespace llama_moe {

struct RouterOutput {
  at::Tensor expert;  // [T,K] int64: selected expert ids, highest biased score first
  at::Tensor weight;  // [T,K] float32: gate weights (differentiable w.r.t. the router weight)
  at::Tensor logits;  // [T,E] float32: x W^T, for z-loss and statistics
  at::Tensor scores;  // [T,E] float32: softmax/sigmoid of logits
};

class TopKRouter : public torch::nn::Module {
 public:
  TopKRouter(int64_t hidden, const MoeConfig& moe, const at::TensorOptions& options);
  // x [T,H] in the compute dtype.
  RouterOutput forward(const at::Tensor& x);
  at::Tensor& weight() { return weight_; }
  at::Tensor& expert_bias() { return expert_bias_; }

 private:
  MoeConfig moe_;
  at::Tensor weight_;       // [E,H]
  at::Tensor expert_bias_;  // [E] float32
};

// Selection and gate weights from router logits, shared by the router and its reference test.
RouterOutput RouteFromLogits(const at::Tensor& logits, const at::Tensor& expert_bias, const MoeConfig& moe);

// b += rate * sign(mean(load) - load), then b -= mean(b). `load` [E] counts (token, slot) pairs
// per expert over one optimizer step (summed over micro-batches and ranks).
void UpdateExpertBias(at::Tensor& bias, const at::Tensor& load, double rate);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_ROUTER_H_
