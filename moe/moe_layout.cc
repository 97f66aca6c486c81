#include "moe/moe_layout.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/llama_layout.h"

namespace llama_moe {

std::string ExpertTensorName(int64_t layer, const std::string& group, const std::string& proj) {
  return absl::StrCat(LayerPrefix(layer), "mlp.", group, ".", proj, ".weight");
}
std::string RouterWeightName(int64_t layer) { return absl::StrCat(LayerPrefix(layer), "mlp.", kRouter, ".weight"); }
std::string RouterBiasName(int64_t layer) { return absl::StrCat(LayerPrefix(layer), "mlp.", kRouter, ".expert_bias"); }

std::string LoraTensorName(int64_t layer, const std::string& proj, const std::string& matrix) {
  return absl::StrCat(LayerPrefix(layer), "mlp.", kFrozenLora, ".", proj, ".", matrix);
}

MoeTensorRole MoeTensorRoleOf(absl::string_view name) {
  if (absl::StrContains(name, absl::StrCat(".mlp.", kFrozenLora, "."))) return MoeTensorRole::kLoraAdapter;
  if (absl::StrContains(name, absl::StrCat(".mlp.", kFrozenExperts, "."))) return MoeTensorRole::kFrozenExpert;
  if (absl::StrContains(name, absl::StrCat(".mlp.", kLearnedExperts, "."))) return MoeTensorRole::kLearnedExpert;
  if (absl::EndsWith(name, absl::StrCat(".mlp.", kRouter, ".weight"))) return MoeTensorRole::kRouterWeight;
  if (absl::EndsWith(name, absl::StrCat(".mlp.", kRouter, ".expert_bias"))) return MoeTensorRole::kRouterBias;
  return MoeTensorRole::kOther;
}

std::vector<TensorSpec> MoeFfnTensorSpecs(const LlamaConfig& cfg, const MoeConfig& moe, int64_t layer, DType dtype) {
  const int64_t H = cfg.hidden_size, Ie = moe.expert_intermediate_size;
  std::vector<TensorSpec> out;
  for (const auto& [group, n] : {std::pair<std::string, int64_t>{kFrozenExperts, moe.num_frozen_experts},
                                 {kLearnedExperts, moe.num_learned_experts}}) {
    if (n == 0) continue;
    out.push_back({ExpertTensorName(layer, group, kFfnProjections[0]), dtype, {n, Ie, H}});
    out.push_back({ExpertTensorName(layer, group, kFfnProjections[1]), dtype, {n, Ie, H}});
    out.push_back({ExpertTensorName(layer, group, kFfnProjections[2]), dtype, {n, H, Ie}});
  }
  out.push_back({RouterWeightName(layer), dtype, {moe.num_experts(), H}});
  out.push_back({RouterBiasName(layer), DType::kF32, {moe.num_experts()}});
  if (moe.lora_rank > 0) {
    const int64_t nf = moe.num_frozen_experts, r = moe.lora_rank;
    for (int k = 0; k < 3; ++k) {
      const int64_t in = k < 2 ? H : Ie, out_dim = k < 2 ? Ie : H;
      out.push_back({LoraTensorName(layer, kFfnProjections[k], "lora_A"), dtype, {nf, r, in}});
      out.push_back({LoraTensorName(layer, kFfnProjections[k], "lora_B"), dtype, {nf, out_dim, r}});
    }
  }
  return out;
}

std::vector<TensorSpec> MoeTensorSpecs(const LlamaConfig& cfg, const MoeConfig& moe, DType dtype) {
  return LlamaTensorSpecs(cfg, dtype, [&](int64_t layer) { return MoeFfnTensorSpecs(cfg, moe, layer, dtype); });
}

}  // namespace llama_moe
