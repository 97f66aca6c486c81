#include "train/distill.h"

#include <ATen/ATen.h>

namespace llama_moe {

at::Tensor DistillationLoss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                            const at::Tensor& mask) {
  const at::Tensor t = at::log_softmax(teacher_logits.detach().to(at::kFloat), -1);
  const at::Tensor s = at::log_softmax(student_logits.to(at::kFloat), -1);
  const at::Tensor per_position = (t.exp() * (t - s)).sum(-1);
  if (!mask.defined()) return per_position.sum();
  // where(), not a product: a masked position contributes an exact zero and no gradient.
  return at::where(mask.to(per_position.device()).reshape(per_position.sizes()), per_position,
                   at::zeros({}, per_position.options()))
      .sum();
}

double DistillWeight(const TrainConfig& cfg, int64_t step) {
  const double start = cfg.distill_weight();
  const double end = cfg.distill_weight_end() < 0 ? start : cfg.distill_weight_end();
  const int64_t last = cfg.steps() - 1;
  if (last <= 0) return start;
  const double f = static_cast<double>(std::min<int64_t>(std::max<int64_t>(step, 0), last)) / last;
  return start + (end - start) * f;
}

}  // namespace llama_moe
