#include "moe/moe_model.h"

#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/status_macros.h"
#include "moe/moe_layout.h"

namespace llama_moe {
namespace {

std::string MixtralName(int64_t layer, absl::string_view rest) {
  return absl::StrCat("model.layers.", layer, ".block_sparse_moe.", rest);
}

// Assembles the MoE layers' parameters from a Mixtral checkpoint's per-expert matrices.
TensorRemap MixtralRemap(const Checkpoint& ckpt, const LlamaConfig& cfg, const MoeConfig& moe) {
  return [&ckpt, cfg, moe](const std::string& name) -> absl::StatusOr<std::optional<at::Tensor>> {
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
      if (name == RouterWeightName(l)) {
        ASSIGN_OR_RETURN(at::Tensor w, ckpt.Get(MixtralName(l, "gate.weight")));
        return std::optional<at::Tensor>(w);
      }
      if (name == RouterBiasName(l)) return std::optional<at::Tensor>(at::zeros({moe.num_experts()}, at::kFloat));
      for (const auto& [proj, w] : {std::pair<const char*, const char*>{"gate_proj", "w1"}, {"up_proj", "w3"}, {"down_proj", "w2"}}) {
        if (name != ExpertTensorName(l, kFrozenExperts, proj)) continue;
        std::vector<at::Tensor> experts;
        for (int64_t e = 0; e < moe.num_frozen_experts; ++e) {
          ASSIGN_OR_RETURN(at::Tensor t, ckpt.Get(MixtralName(l, absl::StrCat("experts.", e, ".", w, ".weight"))));
          experts.push_back(t);
        }
        return std::optional<at::Tensor>(at::stack(experts, 0));
      }
    }
    return std::optional<at::Tensor>();
  };
}

}  // namespace

void LoadedModel::SetRouting(RoutingMode mode) {
  for (MoeFeedForward* l : moe_layers) l->set_mode(mode);
}

void LoadedModel::SetLoraEnabled(bool enabled) {
  for (MoeFeedForward* l : moe_layers) l->set_lora_enabled(enabled);
}

absl::Status CheckRouting(const std::optional<MoeConfig>& moe, RoutingMode mode, const std::string& dir) {
  if (moe && mode == RoutingMode::kLearnedOnly && moe->num_learned_experts == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", dir, "' has no learned experts, so it cannot run in learned_only routing"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& dir, const ModelLoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  LoadedModel out;
  ASSIGN_OR_RETURN(out.config, ckpt->LoadConfig());
  LlamaLoadOptions lo;
  if (out.config.model_type == kMixtralModelType) {
    ASSIGN_OR_RETURN(out.moe, MoeConfigFromMixtral(&out.config), absl::StrCat("config of '", dir, "'"));
    lo.remap = MixtralRemap(*ckpt, out.config, *out.moe);
    for (const std::string& name : ckpt->TensorNames()) {
      if (absl::StrContains(name, ".block_sparse_moe.")) lo.served_elsewhere.push_back(name);
    }
  } else {
    ASSIGN_OR_RETURN(out.moe, MoeConfigFromLlama(out.config), absl::StrCat("config of '", dir, "'"));
  }
  RETURN_IF_ERROR(CheckRouting(out.moe, options.moe.mode, dir));
  lo.dtype = options.dtype;
  lo.device = options.device;
  lo.map_weights = options.map_weights;
  lo.release_pages = options.release_pages;
  lo.prefault_weights = options.prefault_weights;
  if (out.moe) lo.ffn = MoeFeedForwardFactory(*out.moe, options.moe);
  ASSIGN_OR_RETURN(out.model, LoadLlamaForCausalLM(*ckpt, out.config, lo));
  if (out.moe) {
    for (int64_t l = 0; l < out.config.num_hidden_layers; ++l) {
      auto* layer = dynamic_cast<MoeFeedForward*>(&out.model->backbone().layer(l).mlp());
      if (layer == nullptr) return absl::InternalError("MoE factory produced a non-MoE layer");
      out.moe_layers.push_back(layer);
    }
  }
  return out;
}

}  // namespace llama_moe
