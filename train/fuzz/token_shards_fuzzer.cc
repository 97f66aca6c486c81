// libFuzzer target over token-shard sets: the first byte picks the input (even: manifest.json,
// odd: a shard file's bytes); the rest is the file. Built and run by tools/fuzz.sh.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "model/json_util.h"
#include "train/token_shards.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string file(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    absl::StatusOr<nlohmann::json> json = llama_moe::ParseJson(file, "manifest");
    if (json.ok()) (void)llama_moe::ShardSetManifest::FromJson(*json, "fuzz/manifest.json");
    return 0;
  }
  // TokenShard reads a path (it maps the file).
  static const std::string path = "/tmp/token_shards_fuzzer_" + std::to_string(::getpid()) + ".tok";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(file.data(), 1, file.size(), f);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<llama_moe::TokenShard>> shard = llama_moe::TokenShard::Open(path);
  if (shard.ok()) {
    // A verified shard: every id below the vocabulary, the count the header says.
    const llama_moe::TokenShardHeader& h = (*shard)->header();
    if ((*shard)->tokens().size() != h.num_tokens) __builtin_trap();
    const uint32_t id_mask = (*shard)->has_loss_mask() ? llama_moe::kTokenIdMask : ~uint32_t{0};
    for (uint32_t word : (*shard)->tokens()) {
      if ((word & id_mask) >= h.vocab_size) __builtin_trap();
    }
  }
  return 0;
}
