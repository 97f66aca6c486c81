// The declarative tensor table of a converted (MoE) checkpoint.
//
// Per layer the dense `mlp.{gate,up,down}_proj` become stacked expert tensors, frozen and learned
// kept apart so that the frozen ones can live without gradients or optimizer state:
//   model.layers.L.mlp.frozen_experts.gate_proj.weight    [Nf, Ie, H]
//   model.layers.L.mlp.frozen_experts.up_proj.weight      [Nf, Ie, H]
//   model.layers.L.mlp.frozen_experts.down_proj.weight    [Nf, H, Ie]
//   model.layers.L.mlp.learned_experts.{gate,up,down}_proj.weight   (same with Nl)
//   model.layers.L.mlp.router.weight                      [E, H]   (experts: frozen first)
//   model.layers.L.mlp.router.expert_bias                 [E]      F32, selection-only bias
// Expert e of a stack is one contiguous byte range, so it can be read without its neighbours.
//
// Example:
//   for (const TensorSpec& s : MoeTensorSpecs(cfg, moe, DType::kBF16)) ...
#ifndef LLAMA_MOE_CONVERT_MOE_LAYOUT_H_
#define LLAMA_MOE_CONVERT_MOE_LAYOUT_H_

#include <string>
#include <vector>

#include "convert/moe_config.h"
#include "model/checkpoint_writer.h"
#include "model/llama_config.h"

namespace llama_moe {

// `group` is "frozen_experts" or "learned_experts"; `proj` is "gate_proj", "up_proj" or "down_proj".
std::string ExpertTensorName(int64_t layer, const std::string& group, const std::string& proj);
std::string RouterWeightName(int64_t layer);
std::string RouterBiasName(int64_t layer);
// The dense FFN tensor "model.layers.L.mlp.<proj>.weight".
std::string DenseFfnName(int64_t layer, const std::string& proj);

inline constexpr char kFrozenExperts[] = "frozen_experts";
inline constexpr char kLearnedExperts[] = "learned_experts";

// Every tensor of the MoE model, in checkpoint order: a layer's tensors stay together.
std::vector<TensorSpec> MoeTensorSpecs(const LlamaConfig& cfg, const MoeConfig& moe, DType dtype);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_MOE_LAYOUT_H_
