// Prints the Llama 3 token ids of each input line as a JSON array, one line per input line.
//
// No BOS is added and special-token strings ("<|eot_id|>") are plain text. With --jsonl each input
// line is a JSON string, so one text can hold newlines, tabs or "\r\n".
//
// Example:
//   bazel run //tools:tokenize -- --tokenizer tokenizer.json --input lines.txt
//   [9906,1917]
//   bazel run //tools:tokenize -- --tokenizer tokenizer.model --input texts.jsonl --jsonl
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json (Hugging Face) or tokenizer.model (tiktoken ranks)");
ABSL_FLAG(std::string, input, "", "text file; one text per line");
ABSL_FLAG(bool, jsonl, false, "each input line is a JSON string rather than raw text");

namespace llama_moe {
namespace {

struct TokenizeOptions {
  std::string tokenizer_path;
  std::string input_path;
  bool jsonl = false;
};

// `bazel run` starts binaries in their runfiles tree; resolve relative paths against the folder
// the user ran it from.
std::string ResolvePath(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || cwd == nullptr || *cwd == '\0') return path;
  return absl::StrCat(cwd, "/", path);
}

absl::Status Run(const TokenizeOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile(options.tokenizer_path));
  std::ifstream in(options.input_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open input file '", options.input_path, "'"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  std::string content = buffer.str();
  // A final newline ends the last line; it does not start an empty one.
  if (!content.empty() && content.back() == '\n') content.pop_back();
  if (content.empty() && buffer.str().empty()) return absl::OkStatus();

  std::string out;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    ++line_number;
    std::string text;
    if (options.jsonl) {
      nlohmann::json value;
      try {
        value = nlohmann::json::parse(line.begin(), line.end());
      } catch (const nlohmann::json::exception& e) {
        return absl::InvalidArgumentError(absl::StrCat("input file '", options.input_path, "' line ",
                                                       line_number, ": not valid JSON: ", e.what()));
      }
      if (!value.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat("input file '", options.input_path, "' line ",
                                                       line_number, ": expected a JSON string, got ",
                                                       value.type_name()));
      }
      text = value.get<std::string>();
    } else {
      text = std::string(line);
    }
    const std::vector<int32_t> ids = tokenizer->Encode(text);
    out.push_back('[');
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) out.push_back(',');
      absl::StrAppend(&out, ids[i]);
    }
    out += "]\n";
    if (out.size() > (1 << 20)) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  if (std::fflush(stdout) != 0) return absl::DataLossError("writing to stdout failed");
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Prints one JSON array of Llama 3 token ids per input line.\n"
      "  tokenize --tokenizer tokenizer.json --input lines.txt [--jsonl]");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "tokenize: unexpected argument '" << positional[1] << "'\n";
    return 2;
  }
  // RunMain: any error, or an exception escaping the tokenizer, is one line and a non-zero exit.
  return llama_moe::RunMain("tokenize", [] {
    llama_moe::TokenizeOptions options;
    options.tokenizer_path = llama_moe::ResolvePath(absl::GetFlag(FLAGS_tokenizer));
    options.input_path = llama_moe::ResolvePath(absl::GetFlag(FLAGS_input));
    options.jsonl = absl::GetFlag(FLAGS_jsonl);
    if (options.tokenizer_path.empty() || options.input_path.empty()) {
      return absl::InvalidArgumentError("--tokenizer and --input are required (see --help)");
    }
    return llama_moe::Run(options);
  });
}
