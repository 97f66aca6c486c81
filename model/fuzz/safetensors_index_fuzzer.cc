// libFuzzer target over model.safetensors.index.json parsing. Built and run by tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

#include "model/safetensors_index.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::map<std::string, std::string>> map = llama_moe::ParseSafetensorsIndex(text, "fuzz.json");
  if (!map.ok()) return 0;
  // Accepted shard names stay inside the model directory, and there are not too many of them.
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : *map) {
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") __builtin_trap();
    shards.insert(shard);
  }
  if (shards.size() > llama_moe::kMaxIndexShards) __builtin_trap();
  return 0;
}
