// Loading any model directory the project produces: a dense Llama 3 (HF layout) or a converted
// or trained MoE model (config.json with a "moe" block), with the MoE layer in the FFN slot.
//
// Example:
//   ModelLoadOptions o;
//   o.moe.mode = RoutingMode::kIdentity;
//   ASSIGN_OR_RETURN(LoadedModel m, LoadModel("/models/llama3-8b-moe", o));
//   ASSIGN_OR_RETURN(at::Tensor logits, m.model->Forward(at::tensor({128000, 9906}, at::kLong)));
#ifndef LLAMA_MOE_MOE_MOE_MODEL_H_
#define LLAMA_MOE_MOE_MOE_MODEL_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/moe_config.h"
#include "model/llama_model.h"
#include "moe/moe_layer.h"

namespace llama_moe {

struct ModelLoadOptions {
  std::optional<DType> dtype;               // compute dtype; unset: the checkpoint's
  c10::Device device = c10::Device(c10::kCPU);
  MoeLayerOptions moe;                      // routing mode and aux losses (MoE models only)
  bool map_weights = false;                 // inference: map, not copy (LlamaLoadOptions)
  bool release_pages = false;               // drop file pages once copied (LlamaLoadOptions)
  bool prefault_weights = false;            // read the weights into memory at load (LlamaLoadOptions)
};

struct LoadedModel {
  std::shared_ptr<LlamaForCausalLM> model;
  LlamaConfig config;
  std::optional<MoeConfig> moe;             // set for MoE models
  std::vector<MoeFeedForward*> moe_layers;  // one per decoder layer for MoE models

  // Sets the routing mode of every MoE layer.
  void SetRouting(RoutingMode mode);
  // Switches the frozen experts' LoRA adapters on or off in every MoE layer (no-op without them).
  void SetLoraEnabled(bool enabled);
};

// Loads `dir`; an MoE model's routing mode must be one it can run (CheckRouting). A Mixtral
// directory loads as an MoE whose experts are all frozen (Nf = num_local_experts, Nl = 0).
absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, const ModelLoadOptions& options);

// Whether the model of `dir` can run in `mode`: learned_only needs learned experts.
absl::Status CheckRouting(const std::optional<MoeConfig>& moe, RoutingMode mode, const std::string& dir);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_MOE_MODEL_H_
