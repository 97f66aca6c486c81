// "Distill experts first": before continued pretraining, each MoE layer learns, on its own, to
// reproduce the dense FFN it replaced, on real activations.
//
// The dense model is the identity routing of the same weights (the frozen slices, without LoRA
// adapters); it runs on calibration text and every layer's FFN inputs X are kept. Then, layer by
// layer, the routed layer (learned experts and router weight trainable, frozen experts fixed)
// minimises the relative squared error |MoE(X) - FFN(X)|^2 / |FFN(X)|^2 with Adam on random
// batches of X, the selection bias balanced after each step as in training. Every layer learns
// from the dense model's own activations, so layers do not wait on each other's results. One
// calibration token in ten is held out of the fit: the error is reported on both.
//
// Example:
//   ExpertDistillOptions o;
//   o.model_dir = "out/moe";
//   o.output_dir = "out/moe_distilled";
//   o.calibration_text = "calibration.txt";
//   o.steps = 200;
//   ASSIGN_OR_RETURN(std::vector<LayerDistillResult> layers, DistillExperts(o));
//   const double first_layer_after = layers[0].after_heldout;  // relative squared error
#ifndef LLAMA_MOE_TRAIN_EXPERT_DISTILL_H_
#define LLAMA_MOE_TRAIN_EXPERT_DISTILL_H_

#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llama_moe {

struct ExpertDistillOptions {
  std::string model_dir;         // a converted MoE model with learned experts
  std::string output_dir;        // the distilled model (must not exist unless overwrite)
  std::string calibration_text;  // UTF-8 text, tokenized with the model's tokenizer.json
  int64_t calibration_tokens = 4096;  // tokens of the text used at most, e.g. 4096
  int64_t steps = 200;                // Adam steps per layer
  int64_t batch_tokens = 512;         // rows of X per step
  double lr = 1e-3;                   // Adam learning rate
  double router_lr_scale = 0.1;       // router weights learn this much slower (as in training)
  uint64_t seed = 0;                  // batch order
  c10::Device device = c10::Device(c10::kCPU);  // where the model and the activations live, e.g. cuda:0
  bool overwrite = false;
  std::function<void(const std::string&)> log;  // progress lines; may be empty
};

struct LayerDistillResult {
  int64_t layer = 0;
  // Relative squared error of the routed layer against the dense FFN, before and after, on the
  // fitted tokens and on the held-out tenth.
  double before_fit = 0, after_fit = 0, before_heldout = 0, after_heldout = 0;
  double max_over_mean_load = 0;  // expert-load balance on all calibration tokens, after
};

// Errors name the file: a dense model, no learned experts, an unreadable or too short text, an
// existing output, bad settings. Nothing is left at output_dir on error.
absl::StatusOr<std::vector<LayerDistillResult>> DistillExperts(const ExpertDistillOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_EXPERT_DISTILL_H_
