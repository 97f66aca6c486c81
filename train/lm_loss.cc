#include "train/lm_loss.h"

#include <ATen/ATen.h>

namespace llama_moe {
namespace {

// The target index cross_entropy_loss skips (PyTorch's default ignore_index).
constexpr int64_t kIgnoredTarget = -100;

}  // namespace

at::Tensor NextTokenLoss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& target_mask) {
  at::Tensor flat = targets.reshape({-1});
  if (target_mask.defined()) {
    flat = flat.masked_fill(target_mask.to(flat.device()).reshape({-1}).logical_not(), kIgnoredTarget);
  }
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), flat, {}, at::Reduction::Sum,
                                kIgnoredTarget);
}

}  // namespace llama_moe
