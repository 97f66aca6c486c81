// The Llama 3 tokenizer: byte-level BPE over the Llama 3 pre-tokenizer regex.
//
// Loads either Hugging Face's `tokenizer.json` (model.vocab, model.merges, added_tokens) or Meta's
// tiktoken-format `tokenizer.model` (lines "base64-token rank", plus the 256 special tokens Meta's
// tokenizer.py appends at ids 128000..). The format is detected from the content. Encoding splits
// text with the pre-tokenizer regex (PCRE2, JIT-compiled once), then merges the bytes of each piece
// by merge rank; results per piece are cached, so repeated words cost one hash lookup.
//
// Tokens are handled as raw bytes: TokenToId(" the"), not the byte-level alphabet's "Ġthe".
// Encode and Decode are thread-safe; the word cache is shared behind a mutex.
//
// Example:
//   ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile("tokenizer.json"));
//   std::vector<int32_t> ids = tok->Encode("Hello world");  // {9906, 1917}
//   ASSIGN_OR_RETURN(std::string text, tok->Decode(ids));    // "Hello world"
//   std::vector<int32_t> eot = tok->EncodeWithSpecials("<|eot_id|>");  // {128009}
#ifndef LLAMA_MOE_MODEL_TOKENIZER_H_
#define LLAMA_MOE_MODEL_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "nlohmann/json_fwd.hpp"

namespace llama_moe {

namespace tokenizer_internal {
class PreTokenizer;  // Owns the compiled PCRE2 pattern; defined in tokenizer.cc.
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // Words cached by default: enough for the working vocabulary of a large corpus (~100 bytes each).
  static constexpr size_t kDefaultWordCacheCapacity = 1 << 17;

  // Loads `path`, a tokenizer.json (content starts with '{') or a tiktoken rank file. Errors name
  // the file and what is wrong with it (missing vocab, a merge of unknown tokens, bad base64 ...).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // As FromFile, from the file's content; `name` is used in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromContent(absl::string_view content,
                                                                absl::string_view name);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes text without BOS; special-token strings such as "<|eot_id|>" are ordinary text.
  // Any byte string is accepted: bytes of invalid UTF-8 become pieces of their own.
  std::vector<int32_t> Encode(absl::string_view text) const;
  // As Encode, but occurrences of added/special token strings become their ids.
  std::vector<int32_t> EncodeWithSpecials(absl::string_view text) const;
  // Concatenates the tokens' bytes (specials as their text). Fails naming the first unknown id.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const;

  // The id of a token given as raw bytes (" the", "<|eot_id|>"); NotFound if absent.
  absl::StatusOr<int32_t> TokenToId(absl::string_view token) const;
  // The raw bytes of token `id`; NotFound if no token has that id.
  absl::StatusOr<std::string> IdToToken(int32_t id) const;

  // One past the largest id, e.g. 128256 for Llama 3.
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }
  // <|begin_of_text|>, e.g. 128000; nullopt when the vocabulary has none.
  std::optional<int32_t> bos_id() const { return bos_id_; }
  // Tokens that end generation: <|end_of_text|>, <|eom_id|>, <|eot_id|> where present.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // <|eot_id|>, the end of a chat turn, e.g. 128009; nullopt when absent.
  std::optional<int32_t> eot_id() const { return eot_id_; }
  bool IsSpecial(int32_t id) const;

  // Splits `text` into pre-tokenizer pieces (views into `text`); their concatenation is `text`.
  std::vector<absl::string_view> PreTokenize(absl::string_view text) const;

  // Bounds the word cache; 0 disables it (the benchmark's baseline). Not for use during Encode
  // calls on other threads' hot paths: it takes the cache lock and clears the cache.
  void SetWordCacheCapacity(size_t capacity);

 private:
  struct MergeResult {
    int32_t rank;    // lower merges first, e.g. 0 for "Ġ Ġ"
    int32_t merged;  // id of the concatenated token
  };

  Tokenizer();
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJson(absl::string_view content,
                                                               absl::string_view name);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJsonValue(const nlohmann::json& json,
                                                                    absl::string_view name);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTiktoken(absl::string_view content,
                                                                 absl::string_view name);
  // Shared last step of both loaders: id tables, byte tokens, special ids, the regex.
  absl::Status Finish(absl::string_view name);
  absl::Status AddToken(absl::string_view bytes, int32_t id, bool special, absl::string_view name);

  // Appends the ids of one pre-tokenized piece (cache, whole-token shortcut, then BPE).
  void EncodePiece(absl::string_view piece, std::vector<int32_t>* out) const;
  // Byte-pair merging of `piece` by rank; the fast path without any cache.
  void BytePairMerge(absl::string_view piece, std::vector<int32_t>* out) const;
  void EncodeOrdinary(absl::string_view text, std::vector<int32_t>* out) const;

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;       // raw bytes -> id, model vocabulary
  std::vector<std::optional<std::string>> id_to_token_;    // id -> raw bytes; holes are nullopt
  std::vector<bool> is_special_;
  absl::flat_hash_map<uint64_t, MergeResult> merges_;  // PairKey(left, right) -> merge
  int32_t byte_to_id_[256];
  // tiktoken and Llama 3's tokenizer.json (ignore_merges) emit a piece that is itself a token
  // directly, even where merging its bytes would not reach it.
  bool whole_piece_shortcut_ = true;

  // Added tokens (tokenizer.json added_tokens, tiktoken specials): content -> id.
  absl::flat_hash_map<std::string, int32_t> added_;
  // The same, grouped by first byte and longest first, for EncodeWithSpecials' leftmost-longest scan.
  std::vector<std::pair<std::string, int32_t>> added_by_first_byte_[256];

  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eot_id_;
  std::vector<int32_t> eos_ids_;

  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
  size_t cache_capacity_ ABSL_GUARDED_BY(cache_mu_) = kDefaultWordCacheCapacity;
};

// The Llama 3 pre-tokenizer pattern as published in tokenizer.json and Meta's tokenizer.py. A
// tokenizer.json whose Split pre-tokenizer has another pattern is rejected.
extern const char kLlama3Pattern[];

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_TOKENIZER_H_
