#include "moe/moe_config.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {
using json = nlohmann::json;
}  // namespace

const char* ScoreFunctionName(ScoreFunction f) {
  switch (f) {
    case ScoreFunction::kSoftmax: return "softmax";
    case ScoreFunction::kSigmoid: return "sigmoid";
  }
  return "?";
}

absl::StatusOr<ScoreFunction> ParseScoreFunction(absl::string_view name) {
  if (name == "softmax") return ScoreFunction::kSoftmax;
  if (name == "sigmoid") return ScoreFunction::kSigmoid;
  return absl::InvalidArgumentError(absl::StrCat("score_function '", name, "' is not softmax or sigmoid"));
}

absl::Status ValidateMoeConfig(const MoeConfig& m, const LlamaConfig& cfg) {
  auto bad = [](const std::string& s) { return absl::InvalidArgumentError(absl::StrCat("moe: ", s)); };
  if (m.num_frozen_experts < 1) return bad(absl::StrCat("num_frozen_experts must be >= 1, got ", m.num_frozen_experts));
  if (m.num_learned_experts < 0) return bad(absl::StrCat("num_learned_experts must be >= 0, got ", m.num_learned_experts));
  if (m.expert_intermediate_size < 1) {
    return bad(absl::StrCat("expert_intermediate_size must be >= 1, got ", m.expert_intermediate_size));
  }
  // Bounded by I first, so that the product below cannot overflow.
  if (m.num_frozen_experts > cfg.intermediate_size || m.expert_intermediate_size > cfg.intermediate_size) {
    return bad(absl::StrCat("num_frozen_experts ", m.num_frozen_experts, " and expert_intermediate_size ",
                            m.expert_intermediate_size, " must each be at most intermediate_size ",
                            cfg.intermediate_size));
  }
  if (m.num_learned_experts > kMaxLearnedExperts) {
    return bad(absl::StrCat("num_learned_experts ", m.num_learned_experts, " is above the limit of ",
                            kMaxLearnedExperts));
  }
  if (m.num_frozen_experts * m.expert_intermediate_size != cfg.intermediate_size) {
    return bad(absl::StrCat("num_frozen_experts ", m.num_frozen_experts, " x expert_intermediate_size ",
                            m.expert_intermediate_size, " != intermediate_size ", cfg.intermediate_size,
                            " (the frozen slices must cover the dense FFN exactly)"));
  }
  if (m.top_k < 1 || m.top_k > m.num_experts()) {
    return bad(absl::StrCat("top_k ", m.top_k, " must be between 1 and the ", m.num_experts(), " experts"));
  }
  if (!(m.gate_scale > 0)) return bad(absl::StrCat("gate_scale must be positive, got ", m.gate_scale));
  if (!(m.bias_update_rate >= 0)) return bad(absl::StrCat("bias_update_rate must be >= 0, got ", m.bias_update_rate));
  const int64_t smaller = std::min<int64_t>(m.expert_intermediate_size, cfg.hidden_size);
  if (m.lora_rank < 0 || m.lora_rank > smaller) {
    return bad(absl::StrCat("lora_rank ", m.lora_rank, " must be between 1 and ", smaller,
                            " (the smaller side of an expert matrix, min(expert_intermediate_size, hidden_size)), "
                            "or 0 for no adapters"));
  }
  if (m.lora_rank > 0 && !(m.lora_alpha > 0 && m.lora_alpha < 1e6)) {
    return bad(absl::StrCat("lora_alpha must be positive (and below 1e6), got ", m.lora_alpha));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<MoeConfig>> MoeConfigFromLlama(const LlamaConfig& cfg) {
  json extra = json::parse(cfg.extra_json, nullptr, /*allow_exceptions=*/false);
  if (!extra.is_object() || !extra.contains("moe")) {
    if (cfg.model_type == kMoeModelType) {
      return absl::InvalidArgumentError(
          absl::StrCat("config says model_type '", kMoeModelType, "' but has no 'moe' block"));
    }
    return std::optional<MoeConfig>();
  }
  const json& j = extra["moe"];
  if (!j.is_object()) return absl::InvalidArgumentError("config field 'moe' is not an object");
  MoeConfig m;
  // nlohmann converts a float such as 1e300 to int64 without a check (undefined behaviour), so
  // integer fields are type-checked before get.
  for (const char* field :
       {"num_frozen_experts", "num_learned_experts", "expert_intermediate_size", "top_k", "lora_rank"}) {
    if (j.contains(field) && !j[field].is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field 'moe.", field, "' must be an integer, got ", j[field].dump()));
    }
  }
  std::string score_function;
  try {
    m.num_frozen_experts = j.at("num_frozen_experts").get<int64_t>();
    m.num_learned_experts = j.at("num_learned_experts").get<int64_t>();
    m.expert_intermediate_size = j.at("expert_intermediate_size").get<int64_t>();
    m.top_k = j.at("top_k").get<int64_t>();
    score_function = j.at("score_function").get<std::string>();
    m.normalize_gates = j.at("normalize_gates").get<bool>();
    m.gate_scale = j.at("gate_scale").get<double>();
    m.bias_update_rate = j.value("bias_update_rate", 1e-3);
    // Written only for a model with adapters: an explicit 0 is a mistake, not "none".
    if (j.contains("lora_rank")) {
      m.lora_rank = j.at("lora_rank").get<int64_t>();
      if (m.lora_rank < 1) {
        return absl::InvalidArgumentError(absl::StrCat("config field 'moe.lora_rank' is ", m.lora_rank,
                                                       ": adapters need rank >= 1 (leave the field out for none)"));
      }
      m.lora_alpha = j.at("lora_alpha").get<double>();
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config field 'moe': ", e.what()));
  }
  absl::StatusOr<ScoreFunction> f = ParseScoreFunction(score_function);
  if (!f.ok()) return absl::InvalidArgumentError(absl::StrCat("config field 'moe': ", f.status().message()));
  m.score_function = *f;
  if (absl::Status s = ValidateMoeConfig(m, cfg); !s.ok()) return s;
  return std::optional<MoeConfig>(m);
}

void SetMoeConfig(const MoeConfig& m, LlamaConfig* cfg) {
  json extra = json::parse(cfg->extra_json, nullptr, /*allow_exceptions=*/false);
  if (!extra.is_object()) extra = json::object();
  extra["moe"] = {{"num_frozen_experts", m.num_frozen_experts},
                  {"num_learned_experts", m.num_learned_experts},
                  {"expert_intermediate_size", m.expert_intermediate_size},
                  {"top_k", m.top_k},
                  {"score_function", ScoreFunctionName(m.score_function)},
                  {"normalize_gates", m.normalize_gates},
                  {"gate_scale", m.gate_scale},
                  {"bias_update_rate", m.bias_update_rate}};
  if (m.lora_rank > 0) {
    extra["moe"]["lora_rank"] = m.lora_rank;
    extra["moe"]["lora_alpha"] = m.lora_alpha;
  }
  extra["architectures"] = {kMoeArchitecture};
  cfg->extra_json = extra.dump();
  cfg->model_type = kMoeModelType;
}

absl::StatusOr<MoeConfig> MoeConfigFromMixtral(LlamaConfig* cfg) {
  json extra = json::parse(cfg->extra_json, nullptr, /*allow_exceptions=*/false);
  if (!extra.is_object()) return absl::InvalidArgumentError("Mixtral config: the extra fields are not an object");
  for (const char* key : {"num_local_experts", "num_experts_per_tok"}) {
    if (!extra.contains(key) || !extra[key].is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat("Mixtral config needs an integer '", key, "'"));
    }
  }
  MoeConfig moe;
  moe.num_frozen_experts = extra["num_local_experts"].get<int64_t>();
  moe.num_learned_experts = 0;
  moe.top_k = extra["num_experts_per_tok"].get<int64_t>();
  moe.expert_intermediate_size = cfg->intermediate_size;
  moe.score_function = ScoreFunction::kSoftmax;
  moe.normalize_gates = true;
  moe.gate_scale = 1.0;
  if (moe.num_frozen_experts < 1 || moe.num_frozen_experts > kMaxLearnedExperts) {
    return absl::InvalidArgumentError(absl::StrCat("Mixtral config: num_local_experts ", moe.num_frozen_experts,
                                                   " is outside [1, ", kMaxLearnedExperts, "]"));
  }
  cfg->intermediate_size = moe.num_frozen_experts * moe.expert_intermediate_size;
  RETURN_IF_ERROR(ValidateMoeConfig(moe, *cfg));
  return moe;
}

}  // namespace llama_moe
