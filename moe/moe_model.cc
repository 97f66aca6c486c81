#include "moe/moe_model.h"

#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "model/status_macros.h"

namespace llama_moe {

void LoadedModel::SetRouting(RoutingMode mode) {
  for (MoeFeedForward* l : moe_layers) l->set_mode(mode);
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
  ASSIGN_OR_RETURN(out.moe, MoeConfigFromLlama(out.config), absl::StrCat("config of '", dir, "'"));
  RETURN_IF_ERROR(CheckRouting(out.moe, options.moe.mode, dir));
  LlamaLoadOptions lo;
  lo.dtype = options.dtype;
  lo.device = options.device;
  lo.map_weights = options.map_weights;
  lo.release_pages = options.release_pages;
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
