// llama.cpp as a peer: a GGUF file loaded through llama.cpp's C API (llama.h), for checking this
// project's GGUF export against the engine that serves it and for benchmarking against it.
//
// The libraries are node-llama-cpp's prebuilt CPU build (tools/setup.sh installs them); ggml picks
// the CPU backend for this machine from the backend directory at load time.
//
// Example:
//   ASSIGN_OR_RETURN(std::unique_ptr<LlamaCppModel> m,
//                    LlamaCppModel::Load("/tmp/model.gguf", "/path/to/bins/linux-x64", LlamaCppOptions{}));
//   std::vector<int32_t> ids = m->Tokenize("Hello world");
//   ASSIGN_OR_RETURN(std::vector<float> logits, m->Logits(ids));  // [T * V]
#ifndef LLAMA_MOE_TOOLS_LLAMA_CPP_LLAMA_CPP_PEER_H_
#define LLAMA_MOE_TOOLS_LLAMA_CPP_LLAMA_CPP_PEER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct llama_model;
struct llama_context;

namespace llama_moe {

// The defaults are for checking against this project's float32 forward; a benchmark passes
// llama.cpp's own defaults (f16 KV cache, flash attention when it chooses) with `f32_kv = false`
// and `flash_attn = -1`.
struct LlamaCppOptions {
  int threads = 1;
  int context = 1024;     // KV cache positions
  bool f32_kv = true;     // float32 KV cache (llama.cpp's default is f16)
  int flash_attn = 0;     // 0 off, 1 on, -1 llama.cpp decides
};

class LlamaCppModel {
 public:
  // Loads `gguf`; `backend_dir` holds ggml's CPU backends (libggml-cpu-*.so).
  static absl::StatusOr<std::unique_ptr<LlamaCppModel>> Load(const std::string& gguf, const std::string& backend_dir,
                                                             const LlamaCppOptions& options);
  ~LlamaCppModel();

  int32_t vocab_size() const;
  // llama.cpp's tokenizer on `text`: no BOS, special-token text treated as plain text.
  std::vector<int32_t> Tokenize(absl::string_view text) const;
  // Clears the KV cache, then evaluates `tokens` in one batch: logits of every position, [T * V].
  absl::StatusOr<std::vector<float>> Logits(const std::vector<int32_t>& tokens);
  struct Generated {
    std::vector<int32_t> tokens;  // the new tokens
    double prefill_seconds = 0;   // the prompt's batch
    double decode_seconds = 0;    // the one-token steps after it
  };
  // Clears the KV cache, then greedy decoding (argmax of the logits, as this project's greedy).
  absl::StatusOr<Generated> Greedy(const std::vector<int32_t>& prompt, int new_tokens);

 private:
  LlamaCppModel() = default;
  absl::Status Decode(const std::vector<int32_t>& tokens, int32_t first_pos, bool all_logits);

  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
  std::string path_;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TOOLS_LLAMA_CPP_LLAMA_CPP_PEER_H_
