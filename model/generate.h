// Autoregressive generation for a batch of token prompts: a prefill pass over the left-padded
// prompts into a KV cache, then one-token decode steps, each sequence stopping at its own EOS,
// token budget or the context length. Batching changes no sequence's result: padding is masked
// (model/kv_cache.h) and every sequence has its own sampler seeded with the same seed, so a
// prompt decodes the same alone or in a batch.
//
// Example:
//   ASSIGN_OR_RETURN(std::shared_ptr<LlamaForCausalLM> model, LoadLlamaFromDir("/models/llama3-8b", {}));
//   GenerateOptions opts;
//   opts.max_new_tokens = 64;
//   ASSIGN_OR_RETURN(opts.eos_token_ids, LoadEosTokenIds("/models/llama3-8b", model->config()));
//   ASSIGN_OR_RETURN(GenerateResult r, Generate(*model, {{128000, 9906}}, opts));
//   std::cout << r.tokens[0].size() << " tokens, " << r.DecodeTokensPerSecond() << " tok/s\n";
#ifndef LLAMA_MOE_MODEL_GENERATE_H_
#define LLAMA_MOE_MODEL_GENERATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama_config.h"
#include "model/llama_model.h"
#include "model/sampler.h"

namespace llama_moe {

enum class StopReason { kEos, kMaxNewTokens, kContext };
const char* StopReasonName(StopReason reason);  // "eos", "max_new_tokens", "context"

struct GenerateOptions {
  int64_t max_new_tokens = 128;        // e.g. 128
  SamplingOptions sampling;            // greedy by default
  std::vector<int64_t> eos_token_ids;  // generation stops after emitting one, e.g. {128001, 128009}
  int64_t max_context = 0;             // cap below max_position_embeddings; 0: none
  // false: every step recomputes the whole sequence without a cache (reference and baseline).
  bool use_cache = true;
  // Prompts are prefilled through the cache this many slots at a time, which bounds the float32
  // attention scores to heads * chunk * S instead of heads * T * T (8 GB for T = 8192 at 32 heads).
  int64_t prefill_chunk = 512;
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;  // new tokens per prompt, an EOS included
  std::vector<StopReason> stop_reasons;      // per prompt
  int64_t prefill_tokens = 0;    // prompt tokens (padding excluded)
  double prefill_seconds = 0.0;  // prompt forward pass and the first token
  int64_t decode_tokens = 0;     // tokens produced by decode steps (after the first per prompt)
  double decode_seconds = 0.0;

  double PrefillTokensPerSecond() const { return prefill_seconds > 0 ? prefill_tokens / prefill_seconds : 0; }
  double DecodeTokensPerSecond() const { return decode_seconds > 0 ? decode_tokens / decode_seconds : 0; }
};

// Generates for every prompt. Errors: an empty prompt list or prompt, ids outside the
// vocabulary, a prompt longer than the context (min of max_position_embeddings and max_context).
absl::StatusOr<GenerateResult> Generate(LlamaForCausalLM& model,
                                        const std::vector<std::vector<int64_t>>& prompts,
                                        const GenerateOptions& options);

// The EOS ids of a model directory: config.json's eos_token_id (in `cfg`) together with
// generation_config.json's when that file exists; either may be an int or a list.
absl::StatusOr<std::vector<int64_t>> LoadEosTokenIds(const std::string& model_dir, const LlamaConfig& cfg);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_GENERATE_H_
