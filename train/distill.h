// Knowledge distillation toward the dense model during continued pretraining: the KL term and its
// weight schedule (train_config.proto: distill_weight, distill_weight_end).
//
// The teacher is the dense model, which an MoE converted by this project holds exactly: its
// identity routing (the frozen slices, which never train) computes the dense FFN. The trainer
// runs that routing without gradients for the teacher's logits, then the routed forward for the
// student's, so no second model is loaded.
//
// Example:
//   const at::Tensor teacher = at::randn({4, 10});
//   const at::Tensor student = teacher.clone().requires_grad_(true);
//   at::Tensor kl = DistillationLoss(student, teacher);  // 0: the model equals its teacher
//   TrainConfig cfg;
//   cfg.set_distill_weight(1.0);
//   cfg.set_distill_weight_end(0.0);
//   cfg.set_steps(11);
//   const double w = DistillWeight(cfg, 5);  // 0.5, halfway
#ifndef LLAMA_MOE_TRAIN_DISTILL_H_
#define LLAMA_MOE_TRAIN_DISTILL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "train/train_config.pb.h"

namespace llama_moe {

// Sum over positions of KL(softmax(teacher) || softmax(student)), in nats; logits [..., V], any
// float dtype (computed in float32). Gradients flow to the student only. With `mask` (bool, the
// logits' leading shape) only the positions where it is true count.
at::Tensor DistillationLoss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                            const at::Tensor& mask = at::Tensor());

// The distillation weight at `step` (0-based) of a run of cfg.steps() steps: linear from
// distill_weight to distill_weight_end (constant when the end is -1).
double DistillWeight(const TrainConfig& cfg, int64_t step);

// Whether any step of the run distills.
inline bool Distills(const TrainConfig& cfg) { return cfg.distill_weight() > 0 || cfg.distill_weight_end() > 0; }

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_DISTILL_H_
