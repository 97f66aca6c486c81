// libFuzzer target over config.json: the Llama fields, the MoE block, and a Mixtral config read as an MoE. Built and run by
// tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/llama_config.h"
#include "moe/moe_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<llama_moe::LlamaConfig> cfg = llama_moe::ParseLlamaConfig(text, "fuzz.json");
  if (!cfg.ok()) return 0;
  // An accepted config is valid, and writing it back and reading it again gives the same text.
  if (!llama_moe::ValidateLlamaConfig(*cfg).ok()) __builtin_trap();
  const std::string written = llama_moe::LlamaConfigToJson(*cfg);
  absl::StatusOr<llama_moe::LlamaConfig> again = llama_moe::ParseLlamaConfig(written, "round trip");
  if (!again.ok() || llama_moe::LlamaConfigToJson(*again) != written) __builtin_trap();
  absl::StatusOr<std::optional<llama_moe::MoeConfig>> moe = llama_moe::MoeConfigFromLlama(*cfg);
  if (moe.ok() && moe->has_value() && !llama_moe::ValidateMoeConfig(**moe, *cfg).ok()) __builtin_trap();
  // A Mixtral config read as an all-frozen MoE is valid, and its FFN is all of its experts.
  llama_moe::LlamaConfig mixtral = *cfg;
  absl::StatusOr<llama_moe::MoeConfig> m = llama_moe::MoeConfigFromMixtral(&mixtral);
  if (m.ok() && (!llama_moe::ValidateMoeConfig(*m, mixtral).ok() ||
                 mixtral.intermediate_size != m->num_frozen_experts * m->expert_intermediate_size)) {
    __builtin_trap();
  }
  return 0;
}
