// The declarative tensor table of an MoE checkpoint, and the names of its tensors.
//
// Per layer the dense `mlp.{gate,up,down}_proj` become stacked expert tensors, frozen and learned
// kept apart so that the frozen ones can live without gradients or optimizer state:
//   model.layers.L.mlp.frozen_experts.gate_proj.weight    [Nf, Ie, H]
//   model.layers.L.mlp.frozen_experts.up_proj.weight      [Nf, Ie, H]
//   model.layers.L.mlp.frozen_experts.down_proj.weight    [Nf, H, Ie]
//   model.layers.L.mlp.learned_experts.{gate,up,down}_proj.weight   (same with Nl)
//   model.layers.L.mlp.router.weight                      [E, H]   (experts: frozen first)
//   model.layers.L.mlp.router.expert_bias                 [E]      F32, selection-only bias
// and, for a model with LoRA adapters on its frozen experts (rank r, moe/lora.h):
//   model.layers.L.mlp.frozen_lora.{gate,up}_proj.lora_A  [Nf, r, H]
//   model.layers.L.mlp.frozen_lora.{gate,up}_proj.lora_B  [Nf, Ie, r]
//   model.layers.L.mlp.frozen_lora.down_proj.lora_A       [Nf, r, Ie]
//   model.layers.L.mlp.frozen_lora.down_proj.lora_B       [Nf, H, r]
// Expert e of a stack is one contiguous byte range, so it can be read without its neighbours.
// The module names of moe/moe_layer.h are these names' parts, so parameters load by name.
//
// Example:
//   LlamaConfig cfg;
//   MoeConfig moe;
//   for (const TensorSpec& s : MoeTensorSpecs(cfg, moe, DType::kBF16)) {
//     if (MoeTensorRoleOf(s.name) == MoeTensorRole::kRouterBias) return absl::OkStatus();
//   }
#ifndef LLAMA_MOE_MOE_MOE_LAYOUT_H_
#define LLAMA_MOE_MOE_MOE_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "model/llama_config.h"
#include "model/tensor_spec.h"
#include "moe/moe_config.h"

namespace llama_moe {

// Module names under "model.layers.L.mlp.".
inline constexpr char kFrozenExperts[] = "frozen_experts";
inline constexpr char kLearnedExperts[] = "learned_experts";
inline constexpr char kRouter[] = "router";
inline constexpr char kFrozenLora[] = "frozen_lora";

// `group` is kFrozenExperts or kLearnedExperts; `proj` one of kFfnProjections (model/llama_layout.h).
std::string ExpertTensorName(int64_t layer, const std::string& group, const std::string& proj);
std::string RouterWeightName(int64_t layer);
std::string RouterBiasName(int64_t layer);
// `proj` one of kFfnProjections; `matrix` "lora_A" or "lora_B".
std::string LoraTensorName(int64_t layer, const std::string& proj, const std::string& matrix);

// What a tensor of an MoE (or dense) checkpoint is, from its name: what the trainer freezes,
// trains and scales by.
enum class MoeTensorRole {
  kFrozenExpert,   // a frozen expert stack: never trained
  kLearnedExpert,  // a learned expert stack
  kRouterWeight,   // a router's weight
  kRouterBias,     // a router's selection bias (balancing state, not a gradient-trained parameter)
  kLoraAdapter,    // a low-rank adapter of the frozen experts
  kOther,          // embeddings, attention, norms, head, a dense FFN
};
MoeTensorRole MoeTensorRoleOf(absl::string_view name);

// The tensors of layer L's MoE block, in checkpoint order.
std::vector<TensorSpec> MoeFfnTensorSpecs(const LlamaConfig& cfg, const MoeConfig& moe, int64_t layer, DType dtype);

// Every tensor of the MoE model, in checkpoint order: a layer's tensors stay together.
std::vector<TensorSpec> MoeTensorSpecs(const LlamaConfig& cfg, const MoeConfig& moe, DType dtype);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_MOE_LAYOUT_H_
