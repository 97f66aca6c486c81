// Evaluation of a model (dense or MoE, in one or more routing modes) on held-out tokens:
// perplexity; against a reference model, the KL divergence KL(reference || model) of next-token
// distributions and top-1 agreement; for MoE modes with a router, per-layer expert loads and
// router entropy. The results are one JSON document that eval/make_report.py renders as a
// Markdown report with PNG plots.
//
// It streams: one batch of windows at a time, every mode and the reference on it, then the next;
// the head runs on a few positions at a time, so no [B,L,V] logits exist at V = 128256 and
// memory does not grow with the number of windows.
//
// Example:
//   EvalOptions o;
//   o.model_dir = "out/moe";
//   o.reference_dir = "out/dense";
//   o.data_dir = "out/data";
//   o.modes = {RoutingMode::kIdentity, RoutingMode::kRouted};
//   ASSIGN_OR_RETURN(nlohmann::json report, Evaluate(o));
#ifndef LLAMA_MOE_EVAL_EVALUATE_LIB_H_
#define LLAMA_MOE_EVAL_EVALUATE_LIB_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/moe_layer.h"
#include "train/data_loader.h"
#include "nlohmann/json.hpp"

namespace llama_moe {

struct EvalOptions {
  std::string model_dir;      // model to evaluate
  std::string reference_dir;  // optional reference (e.g. the dense model it came from)
  std::string data_dir;       // token shard set (//train:prepare_data), or
  std::string text_file;      // a text file, tokenized with the model's tokenizer.json
  std::string split = "heldout";
  int64_t seq_len = 256;      // window length, e.g. 256
  int64_t batch = 8;          // windows per forward pass
  int64_t max_windows = 64;   // windows evaluated at most (0: all)
  std::vector<RoutingMode> modes = {RoutingMode::kRouted};  // ignored for dense models
  std::optional<DType> dtype;  // compute dtype; unset: the checkpoint's
  c10::Device device = c10::Device(c10::kCPU);  // e.g. cuda:0
};

// {"model": ..., "reference": {...}, "tokens": N, "loss_mask": bool (chat data: the assistant's tokens
//   only are scored), "results": [{"mode", "loss", "perplexity", "kl_to_reference", "top1_agreement",
//   "layers": [{"load": [...], "max_over_mean", "entropy"}]}]}
absl::StatusOr<nlohmann::json> Evaluate(const EvalOptions& options);
// The same on a given token stream (options.data_dir and text_file are not read).
absl::StatusOr<nlohmann::json> Evaluate(const EvalOptions& options, std::shared_ptr<const TokenStream> data);

}  // namespace llama_moe

#endif  // LLAMA_MOE_EVAL_EVALUATE_LIB_H_
