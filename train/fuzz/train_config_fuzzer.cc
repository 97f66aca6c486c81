// libFuzzer target over training configs (text protos) and their validation. Built and run by
// tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "train/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<llama_moe::TrainConfig> cfg = llama_moe::ParseTrainConfig(text, "fuzz.textproto");
  if (!cfg.ok()) return 0;
  if (llama_moe::ValidateTrainConfig(*cfg).ok()) {
    // What the trainer then relies on.
    if (cfg->steps() < 1 || cfg->seq_len() < 1 || cfg->micro_batch() < 1 || cfg->bucket_mb() < 1) __builtin_trap();
  }
  return 0;
}
