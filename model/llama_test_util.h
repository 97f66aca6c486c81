// Test helpers: tiny Llama configs and random checkpoints written through CheckpointWriter.
//
// The tensor list here is spelled out by hand from the HF naming (not taken from the model or
// llama_layout), so tests that load these checkpoints also check the model's parameter names.
// Scales keep activations O(1) and make logits far from uniform (std of a few units), so that
// numeric comparisons and greedy decoding are meaningful.
//
// Example:
//   const LlamaConfig cfg = TinyLlamaConfig(/*heads=*/4, /*kv_heads=*/2);
//   RETURN_IF_ERROR(WriteRandomLlama(NewTestDir("gqa"), cfg, DType::kF32, /*seed=*/1));
#ifndef LLAMA_MOE_MODEL_LLAMA_TEST_UTIL_H_
#define LLAMA_MOE_MODEL_LLAMA_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/checkpoint_writer.h"
#include "model/llama_config.h"

namespace llama_moe {

// A 2-layer model: hidden 64, vocab 211, intermediate 96, head_dim 16, context 512, theta 10000.
LlamaConfig TinyLlamaConfig(int64_t heads, int64_t kv_heads);

// HF tensor names and shapes of `cfg` (lm_head omitted when tied).
std::vector<TensorSpec> TinyLlamaSpecs(const LlamaConfig& cfg, DType dtype);

// Writes `specs` filled with seeded random values (norm weights around 1, projections
// ~N(0, 1/fan_in) with q/k and the head scaled up) and config.json into `dir`.
absl::Status WriteRandomCheckpoint(const std::string& dir, const LlamaConfig& cfg,
                                   const std::vector<TensorSpec>& specs, uint64_t seed,
                                   uint64_t max_shard_bytes = 5'000'000'000ull);

// WriteRandomCheckpoint with TinyLlamaSpecs(cfg, dtype).
absl::Status WriteRandomLlama(const std::string& dir, const LlamaConfig& cfg, DType dtype, uint64_t seed,
                              uint64_t max_shard_bytes = 5'000'000'000ull);

// A fresh directory path under TEST_TMPDIR (or /tmp), not yet created.
std::string NewTestDir(const std::string& name);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_LLAMA_TEST_UTIL_H_
