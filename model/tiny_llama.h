// Random Llama-3-architecture checkpoints in Hugging Face layout, for tests, demos and benchmarks.
//
// Weights are Gaussian with scales chosen so the model is numerically like a trained one where
// it matters for testing: activations stay O(1) through the layers (fan-in scaling) and logits
// are far from uniform (a lm_head scale that gives per-token logit spreads of a few units), so
// that a wrong rotation, mask or head mapping changes the argmax instead of hiding in noise.
//
// Example:
//   TinyLlamaOptions o;
//   o.config.num_key_value_heads = 2;  // GQA
//   o.num_shards = 3;
//   RETURN_IF_ERROR(WriteTinyLlama("/tmp/tiny", o));
#ifndef LLAMA_MOE_MODEL_TINY_LLAMA_H_
#define LLAMA_MOE_MODEL_TINY_LLAMA_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "model/llama_config.h"
#include "model/safetensors_header.h"

namespace llama_moe {

struct TinyLlamaOptions {
  LlamaConfig config = DefaultTinyConfig();  // shapes; torch_dtype is set from `dtype`
  DType dtype = DType::kF32;                 // storage dtype, kF32 or kBF16
  int num_shards = 1;                        // e.g. 3: sharded with an index
  uint64_t seed = 0;                         // same seed, same bytes
  std::string tokenizer_json;                // optional tokenizer.json to copy into the directory
  bool overwrite = false;                    // replace an existing output directory

  // vocab 512, hidden 64, FFN 128, 2 layers, 4 heads, 2 KV heads, llama3 rope scaling.
  static LlamaConfig DefaultTinyConfig();
};

// Writes config.json, generation_config.json, safetensors (sharded as asked) and, if given, the
// tokenizer into `dir`, atomically.
absl::Status WriteTinyLlama(const std::string& dir, const TinyLlamaOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_TINY_LLAMA_H_
