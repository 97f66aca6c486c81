// Token-choice top-k router with auxiliary-loss-free load balancing (DeepSeek-V3).
//
// scores = softmax or sigmoid of x W^T ([T,E], float32). Selection takes the top K of
// scores + expert_bias; the gate weights come from the *unbiased* scores of the selected experts
// (renormalised to sum to 1 when asked, then times gate_scale). The bias therefore steers which
// experts are used, never how much they contribute, and is moved once per optimizer step by
// UpdateBalance from the loads counted over that step.
//
// Parameters (under "model.layers.N.mlp.router"): "weight" [E,H]; buffer "expert_bias" [E]
// float32.
//
// Example:
//   MoeConfig moe;
//   moe.num_frozen_experts = 2;
//   moe.num_learned_experts = 2;
//   moe.top_k = 2;
//   TopKRouter router(/*hidden=*/16, moe, at::TensorOptions().dtype(at::kFloat));
//   RouterOutput r = router.forward(at::randn({5, 16}));  // r.expert [5,2], r.weight [5,2]
//   router.UpdateBalance(at::bincount(r.expert.reshape({-1}), {}, 4), moe.bias_update_rate);
#ifndef LLAMA_MOE_MOE_TOPK_ROUTER_H_
#define LLAMA_MOE_MOE_TOPK_ROUTER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "moe/moe_config.h"
#include "moe/router.h"

namespace llama_moe {

class TopKRouter : public Router {
 public:
  TopKRouter(int64_t hidden, const MoeConfig& moe, const at::TensorOptions& options);
  RouterOutput forward(const at::Tensor& x) override;
  void UpdateBalance(const at::Tensor& load, double rate) override;
  at::Tensor balance_state() const override { return expert_bias_; }

  at::Tensor& weight() { return weight_; }
  at::Tensor& expert_bias() { return expert_bias_; }

 private:
  MoeConfig moe_;
  at::Tensor weight_;       // [E,H]
  at::Tensor expert_bias_;  // [E] float32
};

// Selection and gate weights from router logits, shared by the router and its reference test.
RouterOutput RouteFromLogits(const at::Tensor& logits, const at::Tensor& expert_bias, const MoeConfig& moe);

// b += rate * sign(mean(load) - load), then b -= mean(b).
void UpdateExpertBias(at::Tensor& bias, const at::Tensor& load, double rate);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_TOPK_ROUTER_H_
