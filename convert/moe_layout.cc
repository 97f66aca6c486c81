#include "convert/moe_layout.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/llama_layout.h"

namespace llama_moe {

std::string ExpertTensorName(int64_t layer, const std::string& group, const std::string& proj) {
  return absl::StrCat(LayerPrefix(layer), "mlp.", group, ".", proj, ".weight");
}
std::string RouterWeightName(int64_t layer) { return absl::StrCat(LayerPrefix(layer), "mlp.router.weight"); }
std::string RouterBiasName(int64_t layer) { return absl::StrCat(LayerPrefix(layer), "mlp.router.expert_bias"); }
std::string DenseFfnName(int64_t layer, const std::string& proj) {
  return absl::StrCat(LayerPrefix(layer), "mlp.", proj, ".weight");
}

std::vector<TensorSpec> MoeTensorSpecs(const LlamaConfig& cfg, const MoeConfig& moe, DType dtype) {
  const int64_t H = cfg.hidden_size, Ie = moe.expert_intermediate_size;
  std::vector<TensorSpec> out;
  for (TensorSpec& s : LlamaTensorSpecs(cfg, dtype)) {
    if (absl::StrContains(s.name, ".mlp.")) {
      // The dense FFN of a layer is replaced by its experts, written where down_proj stood.
      if (!absl::EndsWith(s.name, "mlp.down_proj.weight")) continue;
      const int64_t layer = std::stoll(s.name.substr(std::string("model.layers.").size()));
      for (const auto& [group, n] : {std::pair<std::string, int64_t>{kFrozenExperts, moe.num_frozen_experts},
                                     {kLearnedExperts, moe.num_learned_experts}}) {
        if (n == 0) continue;
        out.push_back({ExpertTensorName(layer, group, "gate_proj"), dtype, {n, Ie, H}});
        out.push_back({ExpertTensorName(layer, group, "up_proj"), dtype, {n, Ie, H}});
        out.push_back({ExpertTensorName(layer, group, "down_proj"), dtype, {n, H, Ie}});
      }
      out.push_back({RouterWeightName(layer), dtype, {moe.num_experts(), H}});
      out.push_back({RouterBiasName(layer), DType::kF32, {moe.num_experts()}});
      continue;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace llama_moe
