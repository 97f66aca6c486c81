// The MoE block of a model's config.json: the one description of an MoE layer's shape and
// routing that the converter writes and the MoE layer, trainer and evaluation read.
//
// Example:
//   LlamaConfig cfg;
//   cfg.intermediate_size = 128;
//   MoeConfig moe;
//   moe.num_frozen_experts = 4;
//   moe.expert_intermediate_size = 32;
//   moe.top_k = 4;
//   SetMoeConfig(moe, &cfg);
//   ASSIGN_OR_RETURN(std::optional<MoeConfig> read, MoeConfigFromLlama(cfg));
//   if (read && read->score_function == ScoreFunction::kSoftmax) return absl::OkStatus();
#ifndef LLAMA_MOE_MOE_MOE_CONFIG_H_
#define LLAMA_MOE_MOE_MOE_CONFIG_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/llama_config.h"

namespace llama_moe {

// How router logits become expert scores.
enum class ScoreFunction {
  kSoftmax,  // over all E experts
  kSigmoid,  // per expert, independently
};
// "softmax" / "sigmoid", the names config.json stores.
const char* ScoreFunctionName(ScoreFunction f);
absl::StatusOr<ScoreFunction> ParseScoreFunction(absl::string_view name);

struct MoeConfig {
  int64_t num_frozen_experts = 8;           // Nf, e.g. 8: exact slices, never trained
  int64_t num_learned_experts = 8;          // Nl, e.g. 8: trained
  int64_t expert_intermediate_size = 1792;  // Ie, e.g. 14336 / 8
  int64_t top_k = 8;                        // K, e.g. 8
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  bool normalize_gates = true;              // renormalise the K selected weights to sum to 1
  double gate_scale = 8.0;                  // resolved factor on gate weights, e.g. K
  double bias_update_rate = 1e-3;           // gamma of the balancing bias update, e.g. 1e-3
  // Low-rank adapters on the frozen experts (moe/lora.h): rank r (0: none) and alpha, the
  // adapters' output being scaled by alpha / r. E.g. 16 and 32.
  int64_t lora_rank = 0;
  double lora_alpha = 0;

  double lora_scale() const { return lora_rank > 0 ? lora_alpha / static_cast<double>(lora_rank) : 0.0; }

  int64_t num_experts() const { return num_frozen_experts + num_learned_experts; }  // E
};

// What an MoE directory's config.json calls itself. Not "llama"/"LlamaForCausalLM": Hugging Face
// transformers would load such a directory as a dense Llama with random MLPs and only warn; an
// unknown model_type makes it refuse.
inline constexpr char kMoeModelType[] = "llama_moe_cc";
inline constexpr char kMoeArchitecture[] = "LlamaMoeCcForCausalLM";

// Far above any MoE trained so far (DeepSeek-V3: 256 routed experts); bounds the router and
// expert stacks a hostile config can ask for.
inline constexpr int64_t kMaxLearnedExperts = 4096;

// Checks the MoE block against the dense shapes (Nf * Ie == I, 1 <= K <= E, Nl <= 4096, a LoRA
// rank no larger than the smaller side of an expert matrix, ...).
absl::Status ValidateMoeConfig(const MoeConfig& moe, const LlamaConfig& cfg);

// The "moe" block of `cfg.extra_json`, or nullopt for a dense model. Validated. A model_type of
// kMoeModelType without the block is an error; directories written before the labels existed
// (model_type "llama" with a "moe" block) still read.
absl::StatusOr<std::optional<MoeConfig>> MoeConfigFromLlama(const LlamaConfig& cfg);

// The model_type of a Hugging Face Mixtral directory (what `export --format hf_mixtral` writes).
inline constexpr char kMixtralModelType[] = "mixtral";

// A Mixtral config (num_local_experts, num_experts_per_tok in `cfg->extra_json`) as this
// project's MoE: every expert frozen (Nf = num_local_experts, Nl = 0), the config's
// intermediate_size the expert size, softmax top-k renormalised, no gate scale. Rewrites
// cfg->intermediate_size to the experts' total width (Nf * Ie), as the MoE layer expects. Validated.
absl::StatusOr<MoeConfig> MoeConfigFromMixtral(LlamaConfig* cfg);

// Stores `moe` as the "moe" block of `cfg->extra_json` (replacing any previous one) and labels the
// config kMoeModelType / kMoeArchitecture.
void SetMoeConfig(const MoeConfig& moe, LlamaConfig* cfg);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_MOE_CONFIG_H_
