#include "train/prepare_data_lib.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/chat_template.h"
#include "model/file_util.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"
#include "train/random.h"
#include "train/token_shards.h"

namespace llama_moe {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Accumulates one split's documents and writes a shard whenever shard_tokens is reached.
class SplitWriter {
 public:
  // With `masked`, every document comes with a loss mask and the shards carry it.
  SplitWriter(std::string dir, std::string split, uint64_t shard_tokens, uint32_t vocab_size, uint32_t eos_id,
              bool masked)
      : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens),
        vocab_size_(vocab_size), eos_id_(eos_id), masked_(masked) {}

  // `loss_mask` (masked writers only): one entry per id, non-zero where the id is a loss target.
  // The EOS that ends the document is not one.
  absl::Status AddDocument(const std::vector<int32_t>& ids, const std::vector<uint8_t>* loss_mask = nullptr) {
    for (const int32_t id : ids) buffer_.push_back(static_cast<uint32_t>(id));
    buffer_.push_back(eos_id_);
    if (masked_) {
      for (const uint8_t m : *loss_mask) {
        buffer_mask_.push_back(m != 0);
        loss_tokens_ += m != 0;
      }
      buffer_mask_.push_back(0);
    }
    if (buffer_.size() >= shard_tokens_) return Flush();
    return absl::OkStatus();
  }

  // Writes the last partial shard; a split without documents still gets one empty shard, so
  // every shard set has the same layout.
  absl::Status Finish() {
    if (!buffer_.empty() || info_.shards.empty()) return Flush();
    return absl::OkStatus();
  }

  const SplitInfo& info() const { return info_; }
  uint64_t loss_tokens() const { return loss_tokens_; }

 private:
  absl::Status Flush() {
    ShardEntry entry;
    entry.file = absl::StrFormat("%s-%05d.tok", split_, info_.shards.size());
    const std::string path = JoinPath(dir_, entry.file);
    // The writer's header: counts and the checksum of the stored words (mask bits included).
    TokenShardHeader header;
    if (masked_) {
      RETURN_IF_ERROR(WriteTokenShard(path, buffer_, buffer_mask_, vocab_size_, eos_id_, &header));
    } else {
      RETURN_IF_ERROR(WriteTokenShard(path, buffer_, vocab_size_, eos_id_, &header));
    }
    entry.num_tokens = header.num_tokens;
    entry.num_documents = header.num_documents;
    entry.payload_hash = header.payload_hash;
    info_.num_tokens += entry.num_tokens;
    info_.num_documents += entry.num_documents;
    info_.shards.push_back(std::move(entry));
    buffer_.clear();
    buffer_mask_.clear();
    return absl::OkStatus();
  }

  const std::string dir_;
  const std::string split_;
  const uint64_t shard_tokens_;
  const uint32_t vocab_size_;
  const uint32_t eos_id_;
  const bool masked_;
  std::vector<uint32_t> buffer_;
  std::vector<uint8_t> buffer_mask_;
  uint64_t loss_tokens_ = 0;
  SplitInfo info_;
};

// Removes the temporary output directory unless the run committed it.
class TempDirGuard {
 public:
  explicit TempDirGuard(std::string path) : path_(std::move(path)) {}
  ~TempDirGuard() {
    if (!committed_) RemoveAll(path_).IgnoreError();
  }
  void Commit() { committed_ = true; }

 private:
  std::string path_;
  bool committed_ = false;
};

absl::Status Publish(const std::string& tmp, const std::string& output, bool overwrite) {
  std::string old;
  if (PathExists(output)) {
    if (!overwrite) return absl::AlreadyExistsError(absl::StrCat("output '", output, "' already exists"));
    old = absl::StrCat(output, ".old-", ::getpid());
    if (::rename(output.c_str(), old.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("moving old output '", output, "' aside: ", std::strerror(errno)));
    }
  }
  if (::rename(tmp.c_str(), output.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("renaming '", tmp, "' to '", output, "': ", std::strerror(errno)));
  }
  if (!old.empty()) RETURN_IF_ERROR(RemoveAll(old));
  return absl::OkStatus();
}

}  // namespace

bool IsHeldOutDocument(uint64_t index, uint64_t seed, double heldout_fraction) {
  return ToUnitInterval(MixSeed(seed, index)) < heldout_fraction;
}

absl::StatusOr<PrepareDataStats> PrepareData(const PrepareDataOptions& options) {
  const Clock::time_point start = Clock::now();
  if (options.output_dir.empty()) return absl::InvalidArgumentError("no output directory given");
  if (!(options.heldout_fraction >= 0.0 && options.heldout_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("heldout fraction ", options.heldout_fraction, " is not in [0, 1]"));
  }
  if (options.shard_tokens == 0) return absl::InvalidArgumentError("shard_tokens must be positive");
  if (options.max_documents < 0) return absl::InvalidArgumentError("max_documents must be >= 0");
  // Fail before hours of tokenization, not at the final rename.
  if (PathExists(options.output_dir) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat("output '", options.output_dir, "' already exists"));
  }
  ASSIGN_OR_RETURN(const std::vector<std::string> files, ListInputFiles(options.inputs, options.format));

  ASSIGN_OR_RETURN(const std::string tokenizer_content, ReadFileToString(options.tokenizer_path));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::FromContent(tokenizer_content, options.tokenizer_path));
  ASSIGN_OR_RETURN(const int32_t eos_id, tokenizer->TokenToId(options.eos_token),
                   absl::StrCat("EOS token of tokenizer '", options.tokenizer_path, "'"));
  const uint32_t vocab_size = static_cast<uint32_t>(tokenizer->vocab_size());

  std::string output = options.output_dir;
  while (output.size() > 1 && output.back() == '/') output.pop_back();
  const std::string tmp = absl::StrCat(output, ".tmp-", ::getpid());
  RETURN_IF_ERROR(RemoveAll(tmp));
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    return absl::InternalError(absl::StrCat("creating '", tmp, "': ", std::strerror(errno)));
  }
  TempDirGuard guard(tmp);

  const bool chat = options.format == CorpusFormat::kChat;
  SplitWriter train(tmp, "train", options.shard_tokens, vocab_size, static_cast<uint32_t>(eos_id), chat);
  SplitWriter heldout(tmp, "heldout", options.shard_tokens, vocab_size, static_cast<uint32_t>(eos_id), chat);
  PrepareDataStats stats;
  ShardSetManifest manifest;
  uint64_t document_index = 0;
  const uint64_t limit = options.max_documents > 0 ? static_cast<uint64_t>(options.max_documents) : UINT64_MAX;
  for (const std::string& file : files) {
    if (document_index >= limit) break;
    if (chat) {
      // One document per conversation, in the Llama 3 chat format, its assistant turns the targets.
      ASSIGN_OR_RETURN(const std::vector<std::vector<ChatMessage>> conversations, ReadConversations(file));
      ++stats.files;
      manifest.source_files.push_back(file);
      for (size_t c = 0; c < conversations.size() && document_index < limit; ++c) {
        const Clock::time_point encode_start = Clock::now();
        ASSIGN_OR_RETURN(const EncodedChat encoded, EncodeLlama3ChatForTraining(*tokenizer, conversations[c]),
                         absl::StrCat("conversation ", c, " of '", file, "' with tokenizer '",
                                      options.tokenizer_path, "'"));
        stats.tokenize_seconds += SecondsSince(encode_start);
        for (const ChatMessage& m : conversations[c]) stats.text_bytes += m.content.size();
        const bool held_out = IsHeldOutDocument(document_index, options.seed, options.heldout_fraction);
        RETURN_IF_ERROR((held_out ? heldout : train).AddDocument(encoded.ids, &encoded.assistant),
                        absl::StrCat("conversation ", c, " of '", file, "'"));
        ++document_index;
      }
      continue;
    }
    ASSIGN_OR_RETURN(const std::vector<std::string> documents, ReadDocuments(file, options.format));
    ++stats.files;
    manifest.source_files.push_back(file);
    for (const std::string& document : documents) {
      if (document_index >= limit) break;
      const Clock::time_point encode_start = Clock::now();
      const std::vector<int32_t> ids = tokenizer->Encode(document);
      stats.tokenize_seconds += SecondsSince(encode_start);
      stats.text_bytes += document.size();
      const bool held_out = IsHeldOutDocument(document_index, options.seed, options.heldout_fraction);
      RETURN_IF_ERROR((held_out ? heldout : train).AddDocument(ids), absl::StrCat("document ", document_index, " of '", file, "'"));
      ++document_index;
    }
  }
  RETURN_IF_ERROR(train.Finish());
  RETURN_IF_ERROR(heldout.Finish());

  manifest.tokenizer_path = options.tokenizer_path;
  manifest.tokenizer_hash = Fnv1a64(tokenizer_content);
  manifest.vocab_size = vocab_size;
  manifest.eos_id = static_cast<uint32_t>(eos_id);
  manifest.splits["train"] = train.info();
  manifest.splits["heldout"] = heldout.info();
  manifest.input_format = CorpusFormatName(options.format);
  manifest.loss_mask = chat;
  manifest.heldout_fraction = options.heldout_fraction;
  manifest.seed = options.seed;
  manifest.split_rule =
      "documents are numbered from 0 in source_files order; document d is held out iff "
      "(Mix64(Mix64(seed) ^ d) >> 11) * 2^-53 < heldout_fraction, Mix64 being SplitMix64's finalizer "
      "(train/random.h)";
  RETURN_IF_ERROR(WriteShardSetManifest(tmp, manifest));
  RETURN_IF_ERROR(Publish(tmp, output, options.overwrite));
  guard.Commit();

  for (auto [split, out] : {std::pair{&train, &stats.train}, std::pair{&heldout, &stats.heldout}}) {
    out->documents = split->info().num_documents;
    out->tokens = split->info().num_tokens;
    out->shards = split->info().shards.size();
    out->loss_tokens = chat ? split->loss_tokens() : out->tokens;
  }
  stats.seconds = SecondsSince(start);
  return stats;
}

}  // namespace llama_moe
