// llama_cpp_generate: greedy generation in llama.cpp from token ids, timed the way this project's
// //eval:generate times itself (prefill: the prompt's batch and the first token; decode: the
// steps after it), printing the same "prefill:" and "decode:" lines. The peer half of
// benchmarks/llama_cpp_peer.sh.
//
//   llama_cpp_generate --gguf model.gguf --backend_dir DIR --tokens 1,2,3 --max_new_tokens 64 --threads 2 [--warmup]
#include <algorithm>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model/file_util.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "tools/llama_cpp/llama_cpp_peer.h"

ABSL_FLAG(std::string, gguf, "", "GGUF file");
ABSL_FLAG(std::string, backend_dir, "", "directory of ggml's CPU backends (libggml-cpu-*.so)");
ABSL_FLAG(std::string, tokens, "", "prompt token ids, e.g. 1,2,3");
ABSL_FLAG(int, max_new_tokens, 64, "tokens to generate (EOS does not stop)");
ABSL_FLAG(int, threads, 1, "threads");
ABSL_FLAG(bool, f32_kv, false, "float32 KV cache instead of llama.cpp's default f16");
ABSL_FLAG(bool, warmup, false, "first run the prompt and one decode step untimed, as //eval:generate --warmup does");

namespace llama_moe {
namespace {

absl::Status Run() {
  if (absl::GetFlag(FLAGS_gguf).empty()) return MissingFlag("gguf");
  std::vector<int32_t> prompt;
  for (absl::string_view t : absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',', absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(t, &id)) return absl::InvalidArgumentError(absl::StrCat("--tokens: '", t, "' is not an id"));
    prompt.push_back(id);
  }
  if (prompt.empty()) return MissingFlag("tokens");
  LlamaCppOptions o;
  o.threads = absl::GetFlag(FLAGS_threads);
  o.f32_kv = absl::GetFlag(FLAGS_f32_kv);
  o.flash_attn = -1;
  o.context = static_cast<int>(prompt.size()) + absl::GetFlag(FLAGS_max_new_tokens) + 8;
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaCppModel> m,
                   LlamaCppModel::Load(ResolveUserPath(absl::GetFlag(FLAGS_gguf)),
                                       ResolveUserPath(absl::GetFlag(FLAGS_backend_dir)), o));
  if (absl::GetFlag(FLAGS_warmup)) {
    RETURN_IF_ERROR(m->Greedy(prompt, std::min(absl::GetFlag(FLAGS_max_new_tokens), 2)).status(), "warm-up");
  }
  ASSIGN_OR_RETURN(LlamaCppModel::Generated g, m->Greedy(prompt, absl::GetFlag(FLAGS_max_new_tokens)));
  std::cout << absl::StrJoin(g.tokens, ",") << std::endl;
  const int decoded = static_cast<int>(g.tokens.size()) - 1;
  std::cerr << absl::StrFormat("prefill: %d tokens in %.3f s (%.1f tokens/s)\ndecode: %d tokens in %.3f s (%.1f tokens/s)\n",
                               prompt.size(), g.prefill_seconds, prompt.size() / g.prefill_seconds, decoded,
                               g.decode_seconds, decoded > 0 ? decoded / g.decode_seconds : 0.0);
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("llama_cpp_generate", llama_moe::Run);
}
