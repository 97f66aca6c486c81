// libFuzzer target over the safetensors header parser: arbitrary bytes as a whole file image.
// Built and run by tools/fuzz.sh with clang's -fsanitize=fuzzer,address,undefined.
#include <cstddef>
#include <cstdint>

#include "model/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<llama_moe::SafetensorsHeader> h =
      llama_moe::ParseSafetensorsPrefix(data, size, "fuzz.safetensors");
  if (h.ok()) {
    // Invariants the reader relies on for every accepted header.
    uint64_t covered = 0;
    for (const llama_moe::TensorEntry& t : h->tensors) {
      if (t.begin != covered || t.end > h->data_size) __builtin_trap();
      if (static_cast<uint64_t>(t.numel()) * llama_moe::DTypeSize(t.dtype) != t.nbytes()) __builtin_trap();
      covered = t.end;
    }
    if (covered != h->data_size || h->data_start + h->data_size != size) __builtin_trap();
  }
  return 0;
}
