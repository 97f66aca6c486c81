// Binary token shards: the tokenized training corpus on disk, and the directory that groups them.
//
// A shard file (`train-00000.tok`) is a 64-byte little-endian header followed by the token ids as
// uint32. Documents are terminated by the EOS id, so the payload is "doc0 EOS doc1 EOS ..." and the
// number of EOS tokens equals the number of documents. The header carries the counts and an
// FNV-1a 64 hash of the payload, so that a truncated, corrupted or mismatched file is caught when it
// is opened, not as a wrong loss many hours into training. Readers mmap the file: opening a
// multi-gigabyte split costs one validation pass and no copy, and data-parallel ranks touch only
// the pages of their own sequences.
//
//   offset  size  field
//        0     8  magic "LMTOKSH1"
//        8     4  version (1)
//       12     4  dtype (1 = uint32 token ids, 2 = uint32 token ids with a loss mask bit)
//       16     8  number of tokens T
//       24     8  number of documents (EOS tokens)
//       32     8  FNV-1a 64 of the payload bytes
//       40     4  vocab size V (every id < V)
//       44     4  EOS id
//       48    16  reserved, zero
//       64   4*T  payload
//
// Loss masks. Chat fine-tuning learns only the assistant's tokens. A dtype-2 shard carries that
// choice in the token words themselves: bit 31 (kTokenNoLossBit) set means "this token is never a
// loss target", the id being the low 31 bits. The mask then shares the token's checksum, mapping
// and atomic write, and no second file can fall out of step with the first. Every id is below
// 2^31, so the bit is free; a reader built before dtype 2 refuses such a shard instead of reading
// flagged words as huge ids.
//
// A shard set is a directory holding `train-NNNNN.tok`, `heldout-NNNNN.tok` and `manifest.json`
// (tokenizer path and hash, vocab size, EOS id, per-split shard lists and counts, source files and
// the held-out rule). //train:prepare_data writes one; the data loader reads one.
//
// Example:
//   const std::vector<uint32_t> tokens = {128000, 791, 502, 128001};  // one document, EOS-terminated
//   RETURN_IF_ERROR(WriteTokenShard("/tmp/d/train-00000.tok", tokens, /*vocab_size=*/128256, /*eos_id=*/128001));
//   ASSIGN_OR_RETURN(std::unique_ptr<TokenShard> shard, TokenShard::Open("/tmp/d/train-00000.tok"));
//   const std::vector<uint8_t> loss_mask = {0, 1, 1, 0};  // only "791 502" are targets
//   RETURN_IF_ERROR(WriteTokenShard("/tmp/d/chat-00000.tok", tokens, loss_mask, 128256, 128001));
//   absl::Span<const uint32_t> ids = shard->tokens();
//
//   ASSIGN_OR_RETURN(ShardSetManifest manifest, ReadShardSetManifest("/d"));
//   ASSIGN_OR_RETURN(std::vector<std::unique_ptr<TokenShard>> train, OpenSplit("/d", manifest, "train"));
#ifndef LLAMA_MOE_TRAIN_TOKEN_SHARDS_H_
#define LLAMA_MOE_TRAIN_TOKEN_SHARDS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace llama_moe {

inline constexpr char kTokenShardMagic[] = "LMTOKSH1";  // 8 bytes, no terminator on disk
inline constexpr uint32_t kTokenShardVersion = 1;
inline constexpr uint32_t kTokenShardDtypeUint32 = 1;
inline constexpr uint32_t kTokenShardDtypeUint32Masked = 2;
inline constexpr uint32_t kTokenNoLossBit = uint32_t{1} << 31;
inline constexpr uint32_t kTokenIdMask = kTokenNoLossBit - 1;
inline constexpr size_t kTokenShardHeaderBytes = 64;
inline constexpr char kShardSetManifestName[] = "manifest.json";
// Bounds on what a manifest may claim: 2^20 shards a split (15T tokens in 100M-token shards is
// 150,000) and 2^50 tokens a split, so that counts add without overflow.
inline constexpr size_t kMaxShardsPerSplit = size_t{1} << 20;
inline constexpr uint64_t kMaxTokensPerSplit = uint64_t{1} << 50;

// FNV-1a 64 over `bytes`; the payload checksum of a shard and the tokenizer hash in manifests.
uint64_t Fnv1a64(absl::string_view bytes);
// The same, continuing from a previous value (start with kFnv1a64Offset).
inline constexpr uint64_t kFnv1a64Offset = 0xcbf29ce484222325ULL;
uint64_t Fnv1a64Update(uint64_t hash, absl::string_view bytes);
// "0x" + 16 lowercase hex digits, the form hashes take in manifest.json.
std::string HashToHex(uint64_t hash);

struct TokenShardHeader {
  uint32_t version = kTokenShardVersion;
  uint32_t dtype = kTokenShardDtypeUint32;
  uint64_t num_tokens = 0;     // T, e.g. 1400000
  uint64_t num_documents = 0;  // EOS count, e.g. 500
  uint64_t payload_hash = 0;   // FNV-1a 64 of the 4*T payload bytes
  uint32_t vocab_size = 0;     // V, e.g. 128256
  uint32_t eos_id = 0;         // e.g. 128001 (<|end_of_text|>)
};

// Writes `tokens` as a shard at `path`, atomically: a temporary file in the same directory is
// written, fsynced and renamed. Fails (naming the path) when an id is >= vocab_size or when the
// payload is non-empty and does not end with eos_id (every document must be terminated). With
// `written`, receives the header written (counts and checksum, as a manifest entry needs them).
absl::Status WriteTokenShard(const std::string& path, absl::Span<const uint32_t> tokens,
                             uint32_t vocab_size, uint32_t eos_id, TokenShardHeader* written = nullptr);
// The same with a loss mask (a dtype-2 shard): loss_mask[i] != 0 when token i counts as a target.
// The sizes must agree.
absl::Status WriteTokenShard(const std::string& path, absl::Span<const uint32_t> tokens,
                             absl::Span<const uint8_t> loss_mask, uint32_t vocab_size, uint32_t eos_id,
                             TokenShardHeader* written = nullptr);

struct TokenShardOpenOptions {
  // Hash the payload and check every id against the vocabulary: one pass over the file
  // (~1 GB/s). Turn off only for files already verified in this process.
  bool verify_payload = true;
  // When non-zero, the header's vocab size / EOS id must equal these (from the manifest).
  uint32_t expected_vocab_size = 0;
  int64_t expected_eos_id = -1;
};

// A read-only, memory-mapped shard. Errors name the file: bad magic, unknown version or dtype,
// a size that disagrees with the header's token count, a checksum or document-count mismatch,
// a token id >= vocab size.
class TokenShard {
 public:
  static absl::StatusOr<std::unique_ptr<TokenShard>> Open(const std::string& path,
                                                          const TokenShardOpenOptions& options = {});
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  const TokenShardHeader& header() const { return header_; }
  // The stored words: token ids, and in a masked shard kTokenNoLossBit on the tokens that are not
  // loss targets (take `word & kTokenIdMask` for the id).
  absl::Span<const uint32_t> tokens() const { return tokens_; }
  bool has_loss_mask() const { return header_.dtype == kTokenShardDtypeUint32Masked; }

 private:
  TokenShard() = default;
  std::string path_;
  TokenShardHeader header_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  absl::Span<const uint32_t> tokens_;
};

// One shard's entry in the manifest.
struct ShardEntry {
  std::string file;  // relative to the shard set directory, e.g. "train-00000.tok"
  uint64_t num_tokens = 0;
  uint64_t num_documents = 0;
  uint64_t payload_hash = 0;
};

struct SplitInfo {
  uint64_t num_tokens = 0;
  uint64_t num_documents = 0;
  std::vector<ShardEntry> shards;  // in stream order
};

// manifest.json of a shard set.
struct ShardSetManifest {
  std::string tokenizer_path;  // as given to prepare_data, e.g. "/data/tokenizer.json"
  uint64_t tokenizer_hash = 0;  // FNV-1a 64 of the tokenizer file's bytes
  uint32_t vocab_size = 0;      // e.g. 128256
  uint32_t eos_id = 0;          // e.g. 128001
  std::map<std::string, SplitInfo> splits;  // "train", "heldout"
  std::vector<std::string> source_files;    // the input files, in document order
  std::string input_format;                 // "text" or "brown"
  // The held-out rule, recorded so that the split can be reproduced and audited.
  double heldout_fraction = 0.0;  // e.g. 0.05
  uint64_t seed = 0;
  std::string split_rule;  // a sentence describing the rule
  // Whether the shards carry a loss mask (dtype 2; chat data, where only assistant turns are
  // targets). Every shard of the set agrees.
  bool loss_mask = false;

  nlohmann::json ToJson() const;
  // Fails naming `name` (the manifest's path) when a field is missing or has the wrong type.
  static absl::StatusOr<ShardSetManifest> FromJson(const nlohmann::json& json, absl::string_view name);
};

absl::StatusOr<ShardSetManifest> ReadShardSetManifest(const std::string& dir);
absl::Status WriteShardSetManifest(const std::string& dir, const ShardSetManifest& manifest);

// Opens every shard of `split` in order and checks each against its manifest entry (counts,
// hash, vocab size, EOS id). An unknown split name is NotFound.
absl::StatusOr<std::vector<std::unique_ptr<TokenShard>>> OpenSplit(
    const std::string& dir, const ShardSetManifest& manifest, const std::string& split);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_TOKEN_SHARDS_H_
