// Independent random streams of a conversion, one per (seed, layer, purpose, chunk), so that
// the output depends on the recipe's seed only: not on the order tensors are produced in, nor
// on the thread count.
//
// Example:
//   at::Generator gen = ConversionStream(/*seed=*/0, /*layer=*/3, StreamPurpose::kRouter);
//   at::Tensor router = at::randn({16, 64}, gen, at::kFloat);
#ifndef LLAMA_MOE_CONVERT_RANDOM_STREAMS_H_
#define LLAMA_MOE_CONVERT_RANDOM_STREAMS_H_

#include <ATen/core/Generator.h>

#include <cstdint>

namespace llama_moe {

// What a stream draws; the values are part of the output format (changing one changes every
// converted model).
enum class StreamPurpose {
  kPermutation = 1,  // the neuron permutation of a partition
  kNoiseGate = 2,    // learned-expert noise of gate_proj
  kNoiseUp = 3,      // ... of up_proj
  kNoiseDown = 4,    // ... of down_proj
  kDropNeurons = 5,  // Drop-Upcycling's choice of re-drawn neurons
  kRouter = 6,       // router weights
  kLoraA = 7,        // LoRA A matrices (chunk: the projection, 0 gate, 1 up, 2 down)
};

// The seed of stream (seed, layer, purpose, chunk): a generator seeded with it is the stream.
uint64_t ConversionSeed(uint64_t seed, int64_t layer, StreamPurpose purpose, int64_t chunk = 0);

at::Generator ConversionStream(uint64_t seed, int64_t layer, StreamPurpose purpose, int64_t chunk = 0);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_RANDOM_STREAMS_H_
