#include "convert/random_streams.h"

#include <ATen/CPUGeneratorImpl.h>

namespace llama_moe {

uint64_t ConversionSeed(uint64_t seed, int64_t layer, StreamPurpose purpose, int64_t chunk) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(layer) * 0x100000001B3ull +
               static_cast<uint64_t>(purpose) * 0xC2B2AE3D27D4EB4Full + static_cast<uint64_t>(chunk) * 0x165667B19E3779F9ull;
  x ^= x >> 33;
  return x;
}

at::Generator ConversionStream(uint64_t seed, int64_t layer, StreamPurpose purpose, int64_t chunk) {
  return at::make_generator<at::CPUGeneratorImpl>(ConversionSeed(seed, layer, purpose, chunk));
}

}  // namespace llama_moe
