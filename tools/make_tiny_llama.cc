// make_tiny_llama: writes a random Llama-3-architecture checkpoint in Hugging Face layout.
//
//   bazel run //tools:make_tiny_llama -- --output /tmp/tiny --dtype bf16 --shards 3
//   bazel run //tools:make_tiny_llama -- --output /tmp/llama8b --preset llama3.1-8b --dtype bf16 --shards 4
//
// Tensors are drawn and written one at a time (peak memory: the largest tensor in float32 and in
// the storage dtype, about 3 GB for 8B's embedding), so any size can be written.
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "model/tiny_llama.h"

ABSL_FLAG(std::string, output, "", "output model directory (must not exist unless --overwrite)");
ABSL_FLAG(int64_t, vocab, 512, "vocabulary size");
ABSL_FLAG(int64_t, hidden, 64, "hidden size H");
ABSL_FLAG(int64_t, intermediate, 128, "FFN intermediate size I");
ABSL_FLAG(std::string, preset, "",
          "start from a real model's exact config instead of the shape flags: llama3.1-8b (--layers may "
          "cut it; --dtype, --shards, --seed, --tie and the token ids still apply)");
ABSL_FLAG(int64_t, layers, 0, "number of layers (0: 2, or the preset's)");
ABSL_FLAG(int64_t, heads, 4, "attention heads");
ABSL_FLAG(int64_t, kv_heads, 2, "key/value heads (= heads: MHA, 1: MQA)");
ABSL_FLAG(int64_t, head_dim, 0, "head dimension (0: hidden / heads)");
ABSL_FLAG(int64_t, max_position, 1024, "max_position_embeddings");
ABSL_FLAG(bool, rope_scaling, true, "use llama3 rope_scaling (factor 8, original context 64)");
ABSL_FLAG(std::string, dtype, "f32", "storage dtype: f32 or bf16");
ABSL_FLAG(int32_t, shards, 1, "number of safetensors shards (an index is written when > 1)");
ABSL_FLAG(bool, tie, false, "tie the output head to the embeddings");
ABSL_FLAG(uint64_t, seed, 0, "random seed");
ABSL_FLAG(std::string, tokenizer, "", "optional tokenizer.json to copy into the model directory");
ABSL_FLAG(bool, overwrite, false, "replace an existing output directory");
ABSL_FLAG(int64_t, bos_token_id, -1,
          "bos_token_id, e.g. 4086 for tools/make_small_tokenizer.py's <|begin_of_text|> "
          "(-1: 128000 for a Llama 3 vocabulary, vocab - 2 otherwise)");
ABSL_FLAG(std::vector<std::string>, eos_token_ids, {},
          "comma-separated eos_token_id list, e.g. 4087,4095 (empty: 128001,128008,128009 for a "
          "Llama 3 vocabulary, vocab - 1 otherwise)");

namespace llama_moe {
namespace {

absl::Status Run() {
  if (absl::GetFlag(FLAGS_output).empty()) return MissingFlag("output");
  TinyLlamaOptions o;
  LlamaConfig& c = o.config;
  const std::string preset = absl::GetFlag(FLAGS_preset);
  if (preset == "llama3.1-8b") {
    c = LlamaConfig();  // its defaults are Llama 3.1 8B's
    c.rope_scaling = RopeScaling();
    if (absl::GetFlag(FLAGS_layers) > 0) c.num_hidden_layers = absl::GetFlag(FLAGS_layers);
  } else if (!preset.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--preset '", preset, "' is not known (llama3.1-8b)"));
  } else {
    c.vocab_size = absl::GetFlag(FLAGS_vocab);
    c.hidden_size = absl::GetFlag(FLAGS_hidden);
    c.intermediate_size = absl::GetFlag(FLAGS_intermediate);
    c.num_hidden_layers = absl::GetFlag(FLAGS_layers) > 0 ? absl::GetFlag(FLAGS_layers) : 2;
    c.num_attention_heads = absl::GetFlag(FLAGS_heads);
    c.num_key_value_heads = absl::GetFlag(FLAGS_kv_heads);
    c.head_dim = absl::GetFlag(FLAGS_head_dim);
    if (c.head_dim == 0 && c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
    c.max_position_embeddings = absl::GetFlag(FLAGS_max_position);
    if (!absl::GetFlag(FLAGS_rope_scaling)) c.rope_scaling.reset();
  }
  c.tie_word_embeddings = absl::GetFlag(FLAGS_tie);
  // The real Llama 3 special ids when the vocabulary is Llama 3's; the top two ids otherwise.
  if (c.vocab_size >= 128256) {
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128008, 128009};
  } else {
    c.bos_token_id = c.vocab_size - 2;
    c.eos_token_ids = {c.vocab_size - 1};
  }
  // A smaller tokenizer keeps its specials elsewhere (tools/make_small_tokenizer.py: after the
  // merged tokens); its ids are given explicitly and checked against the vocabulary by the writer.
  if (absl::GetFlag(FLAGS_bos_token_id) >= 0) c.bos_token_id = absl::GetFlag(FLAGS_bos_token_id);
  if (!absl::GetFlag(FLAGS_eos_token_ids).empty()) {
    c.eos_token_ids.clear();
    for (const std::string& s : absl::GetFlag(FLAGS_eos_token_ids)) {
      int64_t id = 0;
      if (!absl::SimpleAtoi(s, &id)) {
        return absl::InvalidArgumentError(absl::StrCat("--eos_token_ids: '", s, "' is not an integer"));
      }
      c.eos_token_ids.push_back(id);
    }
  }
  ASSIGN_OR_RETURN(o.dtype, ParseFloatDTypeFlag(absl::GetFlag(FLAGS_dtype)), "--dtype");
  o.num_shards = absl::GetFlag(FLAGS_shards);
  if (o.num_shards < 1) return absl::InvalidArgumentError("--shards must be at least 1");
  o.seed = absl::GetFlag(FLAGS_seed);
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  if (!absl::GetFlag(FLAGS_tokenizer).empty()) o.tokenizer_json = ResolveUserPath(absl::GetFlag(FLAGS_tokenizer));
  const std::string out = ResolveUserPath(absl::GetFlag(FLAGS_output));
  RETURN_IF_ERROR(WriteTinyLlama(out, o));
  std::cout << "wrote " << out << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes a random Llama-3-architecture checkpoint in Hugging Face layout.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("make_tiny_llama", llama_moe::Run);
}
