// gguf_check: runs an exported GGUF file in llama.cpp beside the model directory it came from in
// this project's own forward, and checks that the two agree: tokenization of a text, every
// position's logits on it, and greedy tokens.
//
//   gguf_check --gguf model.gguf --model DIR --backend_dir .../bins/linux-x64 --text_file brown.txt
//       [--logit_tokens 64] [--greedy_tokens 32] [--tolerance 1e-4] [--threads 1]
//
// Prints one line per check and exits non-zero when any fails.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model/file_util.h"
#include "model/generate.h"
#include "model/main_util.h"
#include "model/safetensors_header.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"
#include "moe/moe_model.h"
#include "tools/llama_cpp/llama_cpp_peer.h"

ABSL_FLAG(std::string, gguf, "", "GGUF file (written by //convert:export)");
ABSL_FLAG(std::string, model, "", "the model directory it was exported from");
ABSL_FLAG(std::string, backend_dir, "", "directory of ggml's CPU backends (libggml-cpu-*.so)");
ABSL_FLAG(std::string, text_file, "", "plain text for the tokenizer check and the logits' prompt");
ABSL_FLAG(int, logit_tokens, 64, "positions whose logits are compared (BOS + text tokens)");
ABSL_FLAG(int, greedy_tokens, 32, "greedy tokens compared after a 16-token prompt");
ABSL_FLAG(double, tolerance, 1e-4, "largest max|ours - llama.cpp| / max|ours| accepted");
ABSL_FLAG(std::string, dtype, "float32", "our compute dtype");
ABSL_FLAG(int, threads, 1, "llama.cpp threads");

namespace llama_moe {
namespace {

absl::Status Run() {
  const std::string gguf = ResolveUserPath(absl::GetFlag(FLAGS_gguf));
  const std::string dir = ResolveUserPath(absl::GetFlag(FLAGS_model));
  if (absl::GetFlag(FLAGS_gguf).empty()) return MissingFlag("gguf");
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  if (absl::GetFlag(FLAGS_text_file).empty()) return MissingFlag("text_file");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(ResolveUserPath(absl::GetFlag(FLAGS_text_file)), 64 << 20));

  LlamaCppOptions lo;
  lo.threads = absl::GetFlag(FLAGS_threads);
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaCppModel> peer,
                   LlamaCppModel::Load(gguf, ResolveUserPath(absl::GetFlag(FLAGS_backend_dir)), lo));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile(JoinPath(dir, "tokenizer.json")));
  ModelLoadOptions mo;
  ASSIGN_OR_RETURN(mo.dtype, ParseFloatDTypeFlag(absl::GetFlag(FLAGS_dtype)));
  ASSIGN_OR_RETURN(LoadedModel ours, LoadModel(dir, mo));
  bool ok = true;

  // Tokenizer: line by line, so that a mismatch names its line.
  int64_t lines = 0, tokens = 0, bad_lines = 0;
  std::vector<int32_t> all_ours;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty()) continue;
    const std::vector<int32_t> a = tok->Encode(line);
    const std::vector<int32_t> b = peer->Tokenize(line);
    ++lines;
    tokens += static_cast<int64_t>(a.size());
    if (a != b) {
      if (bad_lines++ == 0) {
        std::cout << "first mismatching line: \"" << line << "\"\n  ours:      " << absl::StrJoin(a, ",")
                  << "\n  llama.cpp: " << absl::StrJoin(b, ",") << "\n";
      }
    }
    all_ours.insert(all_ours.end(), a.begin(), a.end());
  }
  std::cout << absl::StrFormat("tokenizer: %d of %d lines (%d tokens) identical\n", lines - bad_lines, lines, tokens);
  ok = ok && bad_lines == 0 && lines > 0;

  // Logits at every position of BOS + the text's first tokens.
  const int n = absl::GetFlag(FLAGS_logit_tokens);
  std::vector<int32_t> ids;
  if (tok->bos_id()) ids.push_back(*tok->bos_id());
  for (int32_t t : all_ours) {
    if (static_cast<int>(ids.size()) >= n) break;
    ids.push_back(t);
  }
  ASSIGN_OR_RETURN(std::vector<float> theirs, peer->Logits(ids));
  at::Tensor mine;
  {
    at::NoGradGuard no_grad;
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    ASSIGN_OR_RETURN(mine, ours.model->Forward(at::tensor(ids64, at::kLong)));
  }
  mine = mine.to(at::kFloat).contiguous();
  const int64_t V = mine.size(-1);
  if (V != peer->vocab_size()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("vocabulary sizes differ: ours %d, llama.cpp %d", V, peer->vocab_size()));
  }
  const at::Tensor other = at::from_blob(theirs.data(), {static_cast<int64_t>(ids.size()), V}, at::kFloat).clone();
  const double max_diff = (mine - other).abs().max().item<double>();
  const double scale = mine.abs().max().item<double>();
  const double rel = max_diff / std::max(scale, 1e-30);
  const int64_t argmax_equal = mine.argmax(-1).eq(other.argmax(-1)).sum().item<int64_t>();
  std::cout << absl::StrFormat("logits: %d positions x %d, max |diff| %.3g, max |logit| %.3g, relative %.3g (tolerance %.1g); "
                               "argmax equal at %d of %d\n",
                               ids.size(), V, max_diff, scale, rel, absl::GetFlag(FLAGS_tolerance), argmax_equal, ids.size());
  ok = ok && rel <= absl::GetFlag(FLAGS_tolerance);

  // Greedy tokens after a 16-token prompt, EOS not stopping either side.
  const int g = absl::GetFlag(FLAGS_greedy_tokens);
  if (g <= 0) {
    if (!ok) return absl::InternalError(absl::StrCat("'", gguf, "' does not match '", dir, "' in llama.cpp"));
    std::cout << "gguf_check: ok\n";
    return absl::OkStatus();
  }
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + std::min<size_t>(16, ids.size()));
  ASSIGN_OR_RETURN(LlamaCppModel::Generated pg, peer->Greedy(prompt, g));
  GenerateOptions go;
  go.max_new_tokens = g;
  ASSIGN_OR_RETURN(GenerateResult og, Generate(*ours.model, {std::vector<int64_t>(prompt.begin(), prompt.end())}, go));
  std::vector<int32_t> og32(og.tokens[0].begin(), og.tokens[0].end());
  int same = 0;
  while (same < static_cast<int>(std::min(og32.size(), pg.tokens.size())) && og32[same] == pg.tokens[same]) ++same;
  std::cout << absl::StrFormat("greedy: %d of %d tokens identical\n", same, g);
  if (same != g) {
    std::cout << "  ours:      " << absl::StrJoin(og32, ",") << "\n  llama.cpp: " << absl::StrJoin(pg.tokens, ",") << "\n";
  }
  ok = ok && same == g && static_cast<int>(og32.size()) == g;
  if (!ok) return absl::InternalError(absl::StrCat("'", gguf, "' does not match '", dir, "' in llama.cpp"));
  std::cout << "gguf_check: ok\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("gguf_check", llama_moe::Run);
}
