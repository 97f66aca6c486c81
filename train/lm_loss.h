// The language-modelling loss of a batch: summed next-token cross-entropy over the targets that
// count. The trainer divides the sum by the step's target count (DataLoader::StepTargets) so
// that micro-batches holding different numbers of targets weigh each target equally.
//
// Example:
//   const at::Tensor logits = at::randn({2, 8, 32});                // [B, L, V] from the model
//   const at::Tensor targets = at::randint(32, {2, 8}, at::kLong);  // the batch's tokens[:, 1:]
//   const at::Tensor mask = at::rand({2, 8}) < 0.5;                 // DataLoader::TargetMask
//   at::Tensor loss = NextTokenLoss(logits, targets, mask) / mask.sum();
#ifndef LLAMA_MOE_TRAIN_LM_LOSS_H_
#define LLAMA_MOE_TRAIN_LM_LOSS_H_

#include <ATen/core/Tensor.h>

namespace llama_moe {

// Sum over positions of -log softmax(logits)[target], logits [..., V] and targets [...] (int64).
// With `target_mask` (bool, the targets' shape) a position where it is false adds nothing to the
// loss and passes no gradient back (its target becomes the index cross_entropy ignores).
at::Tensor NextTokenLoss(const at::Tensor& logits, const at::Tensor& targets,
                         const at::Tensor& target_mask = at::Tensor());

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_LM_LOSS_H_
