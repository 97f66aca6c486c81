// The typed Llama 3 configuration, parsed from and written to Hugging Face `config.json`.
//
// This struct is the one source of truth for model shapes: the model, the converter and the
// tools read it, and every checkpoint the project writes carries it back out as config.json.
// Fields that the project does not interpret (for example the "moe" block of converted models,
// or HF bookkeeping such as "transformers_version") are kept verbatim in `extra_json` so that a
// parse/serialise round trip loses nothing.
//
// Example:
//   ASSIGN_OR_RETURN(LlamaConfig cfg, LoadLlamaConfig("/models/llama3-8b/config.json"));
//   const int64_t group = cfg.num_attention_heads / cfg.num_key_value_heads;  // 4 for 8B
#ifndef LLAMA_MOE_MODEL_LLAMA_CONFIG_H_
#define LLAMA_MOE_MODEL_LLAMA_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

// rope_scaling of type "llama3" (Llama 3.1+): long wavelengths are divided by `factor`, short ones
// kept, and a smooth ramp between them.
struct RopeScaling {
  std::string rope_type = "llama3";
  double factor = 8.0;                             // e.g. 8.0
  double low_freq_factor = 1.0;                    // e.g. 1.0
  double high_freq_factor = 4.0;                   // e.g. 4.0
  int64_t original_max_position_embeddings = 8192;  // e.g. 8192
};

struct LlamaConfig {
  std::string model_type = "llama";
  int64_t vocab_size = 128256;            // V, e.g. 128256
  int64_t hidden_size = 4096;             // H, e.g. 4096
  int64_t intermediate_size = 14336;      // I, e.g. 14336
  int64_t num_hidden_layers = 32;         // e.g. 32
  int64_t num_attention_heads = 32;       // e.g. 32
  int64_t num_key_value_heads = 8;        // e.g. 8 (GQA); equal to heads for MHA, 1 for MQA
  int64_t head_dim = 128;                 // e.g. 128; HF defaults it to H / heads
  int64_t max_position_embeddings = 131072;  // e.g. 131072
  double rms_norm_eps = 1e-5;             // e.g. 1e-5
  double rope_theta = 500000.0;           // e.g. 500000
  std::optional<RopeScaling> rope_scaling;  // absent: plain RoPE
  bool tie_word_embeddings = false;       // true: lm_head reuses embed_tokens
  std::string torch_dtype = "bfloat16";   // dtype of the stored weights, e.g. "bfloat16"
  std::string hidden_act = "silu";        // only "silu" is supported
  bool attention_bias = false;            // only false is supported
  bool mlp_bias = false;                  // only false is supported
  int64_t bos_token_id = 128000;          // <|begin_of_text|>
  std::vector<int64_t> eos_token_ids = {128001};  // HF allows an int or a list
  std::string extra_json = "{}";          // fields not listed above, as a JSON object
};

// Parses config.json text. `file_name` appears in error messages. Validates the result.
absl::StatusOr<LlamaConfig> ParseLlamaConfig(absl::string_view json_text, absl::string_view file_name);
// Reads and parses a config.json file.
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& path);
// Checks shapes and supported features: sizes in [1, limit] (below), kv heads divide heads (GQA),
// the llama3 rope_scaling fields, a known torch_dtype, token ids inside the vocab.
// The upper limits are far above any released Llama (405B: hidden 16384, FFN 53248, 126 layers)
// and keep every product of sizes the tools compute (tensor shapes, parameter counts, memory
// plans) inside int64, so a hostile config fails here instead of overflowing later.
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
inline constexpr int64_t kMaxHiddenSize = int64_t{1} << 20;
inline constexpr int64_t kMaxIntermediateSize = int64_t{1} << 22;
inline constexpr int64_t kMaxLayers = int64_t{1} << 12;
inline constexpr int64_t kMaxHeads = int64_t{1} << 12;
inline constexpr int64_t kMaxHeadDim = int64_t{1} << 12;
inline constexpr int64_t kMaxPositions = int64_t{1} << 26;
absl::Status ValidateLlamaConfig(const LlamaConfig& cfg);
// Serialises to config.json text (pretty-printed, HF field names, extra fields included).
std::string LlamaConfigToJson(const LlamaConfig& cfg);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_LLAMA_CONFIG_H_
