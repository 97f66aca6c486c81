#include "moe/topk_router.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

namespace llama_moe {

TopKRouter::TopKRouter(int64_t hidden, const MoeConfig& moe, const at::TensorOptions& options) : moe_(moe) {
  weight_ = register_parameter("weight", at::zeros({moe.num_experts(), hidden}, options));
  expert_bias_ = register_buffer("expert_bias", at::zeros({moe.num_experts()}, options.dtype(at::kFloat)));
}

RouterOutput RouteFromLogits(const at::Tensor& logits, const at::Tensor& expert_bias, const MoeConfig& moe) {
  RouterOutput r;
  r.logits = logits;
  r.scores = moe.score_function == ScoreFunction::kSigmoid ? at::sigmoid(logits) : at::softmax(logits, -1);
  // The bias changes only which experts win; detach so no gradient flows through selection.
  const at::Tensor biased = r.scores.detach() + expert_bias.to(r.scores.device());
  r.expert = std::get<1>(at::topk(biased, moe.top_k, /*dim=*/-1, /*largest=*/true, /*sorted=*/true));
  at::Tensor w = r.scores.gather(-1, r.expert);
  if (moe.normalize_gates) w = w / w.sum(-1, /*keepdim=*/true).clamp_min(1e-20);
  r.weight = w * moe.gate_scale;
  return r;
}

RouterOutput TopKRouter::forward(const at::Tensor& x) {
  const at::Tensor logits = at::matmul(x, weight_.t()).to(at::kFloat);
  return RouteFromLogits(logits, expert_bias_, moe_);
}

void TopKRouter::UpdateBalance(const at::Tensor& load, double rate) { UpdateExpertBias(expert_bias_, load, rate); }

void UpdateExpertBias(at::Tensor& bias, const at::Tensor& load, double rate) {
  c10::NoGradGuard no_grad;
  const at::Tensor l = load.to(bias.device(), at::kFloat);
  bias.add_(at::sign(l.mean() - l) * rate);
  bias.sub_(bias.mean());
}

}  // namespace llama_moe
