#include "train/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/file_util.h"
#include "model/json_util.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "token shards are little-endian and read by mmap without byte swapping");

constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

template <typename T>
void PutLe(char* out, T value) {
  std::memcpy(out, &value, sizeof(T));
}
template <typename T>
T GetLe(const char* in) {
  T value;
  std::memcpy(&value, in, sizeof(T));
  return value;
}

std::string ErrnoText() { return std::strerror(errno); }

absl::Status WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("writing '", path, "': ", ErrnoText()));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string EncodeHeader(const TokenShardHeader& h) {
  std::string out(kTokenShardHeaderBytes, '\0');
  std::memcpy(out.data(), kTokenShardMagic, 8);
  PutLe<uint32_t>(&out[8], h.version);
  PutLe<uint32_t>(&out[12], h.dtype);
  PutLe<uint64_t>(&out[16], h.num_tokens);
  PutLe<uint64_t>(&out[24], h.num_documents);
  PutLe<uint64_t>(&out[32], h.payload_hash);
  PutLe<uint32_t>(&out[40], h.vocab_size);
  PutLe<uint32_t>(&out[44], h.eos_id);
  return out;
}

absl::StatusOr<uint64_t> ParseHex(const nlohmann::json& value, absl::string_view what) {
  if (!value.is_string()) return absl::InvalidArgumentError(absl::StrCat(what, " is not a string"));
  const std::string text = value.get<std::string>();
  if (text.size() != 18 || text.compare(0, 2, "0x") != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", text, "' is not 0x + 16 hex digits"));
  }
  uint64_t out = 0;
  for (size_t i = 2; i < text.size(); ++i) {
    const char c = text[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(what, " '", text, "' is not 0x + 16 hex digits"));
    }
    out = (out << 4) | static_cast<uint64_t>(digit);
  }
  return out;
}

// json.at() with a Status instead of an exception; `what` names the field path for the message.
absl::StatusOr<const nlohmann::json*> Field(const nlohmann::json& object, const char* key,
                                            absl::string_view what) {
  if (!object.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, " is not an object"));
  auto it = object.find(key);
  if (it == object.end()) return absl::InvalidArgumentError(absl::StrCat("missing field '", what, ".", key, "'"));
  return &*it;
}

template <typename T>
absl::StatusOr<T> UnsignedField(const nlohmann::json& object, const char* key, absl::string_view what) {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Field(object, key, what));
  if (!v->is_number_unsigned()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", what, ".", key, "' is not a non-negative integer"));
  }
  const uint64_t value = v->get<uint64_t>();
  if (value > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("field '", what, ".", key, "' = ", value, " is too large"));
  }
  return static_cast<T>(value);
}

absl::StatusOr<std::string> StringField(const nlohmann::json& object, const char* key, absl::string_view what) {
  ASSIGN_OR_RETURN(const nlohmann::json* v, Field(object, key, what));
  if (!v->is_string()) return absl::InvalidArgumentError(absl::StrCat("field '", what, ".", key, "' is not a string"));
  return v->get<std::string>();
}

}  // namespace

uint64_t Fnv1a64Update(uint64_t hash, absl::string_view bytes) {
  for (const char c : bytes) {
    hash ^= static_cast<uint8_t>(c);
    hash *= kFnvPrime;
  }
  return hash;
}

uint64_t Fnv1a64(absl::string_view bytes) { return Fnv1a64Update(kFnv1a64Offset, bytes); }

std::string HashToHex(uint64_t hash) { return absl::StrFormat("0x%016x", hash); }

namespace {

absl::Status WriteShardFile(const std::string& path, absl::Span<const uint32_t> words, uint32_t dtype,
                            uint32_t vocab_size, uint32_t eos_id, TokenShardHeader* written) {
  if (eos_id >= vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("token shard '", path, "': EOS id ", eos_id,
                                                   " >= vocab size ", vocab_size));
  }
  TokenShardHeader header;
  header.dtype = dtype;
  header.num_tokens = words.size();
  header.vocab_size = vocab_size;
  header.eos_id = eos_id;
  const uint32_t id_mask = dtype == kTokenShardDtypeUint32Masked ? kTokenIdMask : ~uint32_t{0};
  for (size_t i = 0; i < words.size(); ++i) {
    const uint32_t id = words[i] & id_mask;
    if (id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token shard '", path, "': token ", i, " has id ",
                                                     id, " >= vocab size ", vocab_size));
    }
    if (id == eos_id) ++header.num_documents;
  }
  if (!words.empty() && (words.back() & id_mask) != eos_id) {
    return absl::InvalidArgumentError(absl::StrCat("token shard '", path,
                                                   "': the last document is not terminated by EOS id ", eos_id));
  }
  const absl::string_view payload(reinterpret_cast<const char*>(words.data()), words.size() * sizeof(uint32_t));
  header.payload_hash = Fnv1a64(payload);

  // Same directory as the target, so that rename() is atomic; the pid keeps writers apart.
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("creating '", tmp, "': ", ErrnoText()));
  const std::string head = EncodeHeader(header);
  absl::Status status = WriteAll(fd, head.data(), head.size(), tmp);
  if (status.ok()) status = WriteAll(fd, payload.data(), payload.size(), tmp);
  if (status.ok() && ::fsync(fd) != 0) status = absl::InternalError(absl::StrCat("fsync '", tmp, "': ", ErrnoText()));
  if (::close(fd) != 0 && status.ok()) status = absl::InternalError(absl::StrCat("closing '", tmp, "': ", ErrnoText()));
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(absl::StrCat("renaming '", tmp, "' to '", path, "': ", ErrnoText()));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  if (status.ok() && written != nullptr) *written = header;
  return status;
}

}  // namespace

absl::Status WriteTokenShard(const std::string& path, absl::Span<const uint32_t> tokens,
                             uint32_t vocab_size, uint32_t eos_id, TokenShardHeader* written) {
  return WriteShardFile(path, tokens, kTokenShardDtypeUint32, vocab_size, eos_id, written);
}

absl::Status WriteTokenShard(const std::string& path, absl::Span<const uint32_t> tokens,
                             absl::Span<const uint8_t> loss_mask, uint32_t vocab_size, uint32_t eos_id,
                             TokenShardHeader* written) {
  if (loss_mask.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("token shard '", path, "': ", tokens.size(), " tokens but ",
                                                   loss_mask.size(), " loss mask entries"));
  }
  std::vector<uint32_t> words(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] > kTokenIdMask) {
      return absl::InvalidArgumentError(absl::StrCat("token shard '", path, "': token ", i, " has id ", tokens[i],
                                                     ", which leaves no bit for the loss mask"));
    }
    words[i] = tokens[i] | (loss_mask[i] ? 0 : kTokenNoLossBit);
  }
  return WriteShardFile(path, words, kTokenShardDtypeUint32Masked, vocab_size, eos_id, written);
}

TokenShard::~TokenShard() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

absl::StatusOr<std::unique_ptr<TokenShard>> TokenShard::Open(const std::string& path,
                                                             const TokenShardOpenOptions& options) {
  auto error = [&path](auto&&... parts) {
    return absl::DataLossError(absl::StrCat("token shard '", path, "': ", parts...));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open token shard '", path, "': ", ErrnoText()));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("stat '", path, "': ", ErrnoText()));
  }
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < kTokenShardHeaderBytes) {
    ::close(fd);
    return error("truncated: ", file_bytes, " bytes, shorter than the ", kTokenShardHeaderBytes, "-byte header");
  }
  void* mapping = ::mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap '", path, "': ", ErrnoText()));

  std::unique_ptr<TokenShard> shard(new TokenShard());
  shard->path_ = path;
  shard->mapping_ = mapping;
  shard->mapping_bytes_ = file_bytes;
  const char* base = static_cast<const char*>(mapping);

  if (std::memcmp(base, kTokenShardMagic, 8) != 0) {
    return error("bad magic (not a token shard; expected \"", kTokenShardMagic, "\")");
  }
  TokenShardHeader& h = shard->header_;
  h.version = GetLe<uint32_t>(base + 8);
  h.dtype = GetLe<uint32_t>(base + 12);
  h.num_tokens = GetLe<uint64_t>(base + 16);
  h.num_documents = GetLe<uint64_t>(base + 24);
  h.payload_hash = GetLe<uint64_t>(base + 32);
  h.vocab_size = GetLe<uint32_t>(base + 40);
  h.eos_id = GetLe<uint32_t>(base + 44);
  if (h.version != kTokenShardVersion) return error("unsupported version ", h.version, " (expected ", kTokenShardVersion, ")");
  if (h.dtype != kTokenShardDtypeUint32 && h.dtype != kTokenShardDtypeUint32Masked) {
    return error("unsupported dtype ", h.dtype, " (expected 1 = uint32 or 2 = uint32 with a loss mask)");
  }
  const size_t payload_bytes = file_bytes - kTokenShardHeaderBytes;
  // Compare as counts so that a huge num_tokens cannot overflow the byte size.
  if (payload_bytes % sizeof(uint32_t) != 0 || payload_bytes / sizeof(uint32_t) != h.num_tokens) {
    return error(payload_bytes < h.num_tokens * sizeof(uint32_t) ? "truncated: " : "size mismatch: ",
                 "header says ", h.num_tokens, " tokens (", kTokenShardHeaderBytes + h.num_tokens * 4,
                 " bytes), file has ", file_bytes, " bytes");
  }
  if (h.eos_id >= h.vocab_size) return error("EOS id ", h.eos_id, " >= vocab size ", h.vocab_size);
  if (options.expected_vocab_size != 0 && h.vocab_size != options.expected_vocab_size) {
    return error("vocab size ", h.vocab_size, ", expected ", options.expected_vocab_size);
  }
  if (options.expected_eos_id >= 0 && h.eos_id != options.expected_eos_id) {
    return error("EOS id ", h.eos_id, ", expected ", options.expected_eos_id);
  }
  shard->tokens_ = absl::MakeConstSpan(reinterpret_cast<const uint32_t*>(base + kTokenShardHeaderBytes),
                                       static_cast<size_t>(h.num_tokens));
  if (options.verify_payload) {
    const absl::string_view payload(base + kTokenShardHeaderBytes, payload_bytes);
    const uint64_t hash = Fnv1a64(payload);
    if (hash != h.payload_hash) {
      return error("checksum mismatch: payload hashes to ", HashToHex(hash), ", header says ",
                   HashToHex(h.payload_hash), " (corrupted file)");
    }
    uint64_t documents = 0;
    const absl::Span<const uint32_t> tokens = shard->tokens_;
    const uint32_t id_mask = shard->has_loss_mask() ? kTokenIdMask : ~uint32_t{0};
    for (size_t i = 0; i < tokens.size(); ++i) {
      const uint32_t id = tokens[i] & id_mask;
      if (id >= h.vocab_size) return error("token ", i, " has id ", id, " >= vocab size ", h.vocab_size);
      documents += id == h.eos_id;
    }
    if (documents != h.num_documents) {
      return error("document count mismatch: header says ", h.num_documents, ", payload has ", documents,
                   " EOS tokens");
    }
    if (!tokens.empty() && (tokens.back() & id_mask) != h.eos_id) {
      return error("the last document is not terminated by EOS id ", h.eos_id);
    }
  }
  return shard;
}

nlohmann::json ShardSetManifest::ToJson() const {
  nlohmann::json splits_json = nlohmann::json::object();
  for (const auto& [name, split] : splits) {
    nlohmann::json shards_json = nlohmann::json::array();
    for (const ShardEntry& s : split.shards) {
      shards_json.push_back({{"file", s.file},
                             {"num_tokens", s.num_tokens},
                             {"num_documents", s.num_documents},
                             {"payload_fnv1a64", HashToHex(s.payload_hash)}});
    }
    splits_json[name] = {{"num_tokens", split.num_tokens},
                         {"num_documents", split.num_documents},
                         {"shards", shards_json}};
  }
  return {{"format", "llama-moe token shards"},
          {"version", kTokenShardVersion},
          {"tokenizer", {{"path", tokenizer_path}, {"fnv1a64", HashToHex(tokenizer_hash)}}},
          {"vocab_size", vocab_size},
          {"eos_id", eos_id},
          {"splits", splits_json},
          {"source_files", source_files},
          {"input_format", input_format},
          {"loss_mask", loss_mask},
          {"split_rule",
           {{"heldout_fraction", heldout_fraction}, {"seed", seed}, {"description", split_rule}}}};
}

absl::StatusOr<ShardSetManifest> ShardSetManifest::FromJson(const nlohmann::json& json, absl::string_view name) {
  auto parse = [&json]() -> absl::StatusOr<ShardSetManifest> {
    ShardSetManifest m;
    ASSIGN_OR_RETURN(const uint32_t version, UnsignedField<uint32_t>(json, "version", "manifest"));
    if (version != kTokenShardVersion) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported manifest version ", version));
    }
    ASSIGN_OR_RETURN(const nlohmann::json* tok, Field(json, "tokenizer", "manifest"));
    ASSIGN_OR_RETURN(m.tokenizer_path, StringField(*tok, "path", "tokenizer"));
    ASSIGN_OR_RETURN(const nlohmann::json* tok_hash, Field(*tok, "fnv1a64", "tokenizer"));
    ASSIGN_OR_RETURN(m.tokenizer_hash, ParseHex(*tok_hash, "tokenizer.fnv1a64"));
    ASSIGN_OR_RETURN(m.vocab_size, UnsignedField<uint32_t>(json, "vocab_size", "manifest"));
    ASSIGN_OR_RETURN(m.eos_id, UnsignedField<uint32_t>(json, "eos_id", "manifest"));
    ASSIGN_OR_RETURN(const nlohmann::json* splits, Field(json, "splits", "manifest"));
    if (!splits->is_object()) return absl::InvalidArgumentError("field 'splits' is not an object");
    for (const auto& [split_name, split_json] : splits->items()) {
      const std::string what = absl::StrCat("splits.", split_name);
      SplitInfo split;
      ASSIGN_OR_RETURN(split.num_tokens, UnsignedField<uint64_t>(split_json, "num_tokens", what));
      ASSIGN_OR_RETURN(split.num_documents, UnsignedField<uint64_t>(split_json, "num_documents", what));
      ASSIGN_OR_RETURN(const nlohmann::json* shards, Field(split_json, "shards", what));
      if (!shards->is_array()) return absl::InvalidArgumentError(absl::StrCat("field '", what, ".shards' is not an array"));
      if (shards->size() > kMaxShardsPerSplit) {
        return absl::InvalidArgumentError(absl::StrCat("field '", what, ".shards' lists ", shards->size(),
                                                       " shards, above the limit of ", kMaxShardsPerSplit));
      }
      uint64_t tokens = 0, documents = 0;
      for (size_t i = 0; i < shards->size(); ++i) {
        const std::string shard_what = absl::StrCat(what, ".shards[", i, "]");
        const nlohmann::json& s = (*shards)[i];
        ShardEntry entry;
        ASSIGN_OR_RETURN(entry.file, StringField(s, "file", shard_what));
        if (entry.file.empty() || entry.file.find('/') != std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(shard_what, ".file '", entry.file,
                                                         "' must be a plain file name"));
        }
        ASSIGN_OR_RETURN(entry.num_tokens, UnsignedField<uint64_t>(s, "num_tokens", shard_what));
        ASSIGN_OR_RETURN(entry.num_documents, UnsignedField<uint64_t>(s, "num_documents", shard_what));
        ASSIGN_OR_RETURN(const nlohmann::json* h, Field(s, "payload_fnv1a64", shard_what));
        ASSIGN_OR_RETURN(entry.payload_hash, ParseHex(*h, absl::StrCat(shard_what, ".payload_fnv1a64")));
        if (entry.num_tokens > kMaxTokensPerSplit - tokens || entry.num_documents > entry.num_tokens) {
          return absl::InvalidArgumentError(absl::StrCat(shard_what, " claims ", entry.num_tokens, " tokens and ",
                                                         entry.num_documents, " documents (documents <= tokens, ",
                                                         "at most ", kMaxTokensPerSplit, " tokens a split)"));
        }
        tokens += entry.num_tokens;
        documents += entry.num_documents;
        split.shards.push_back(std::move(entry));
      }
      if (tokens != split.num_tokens || documents != split.num_documents) {
        return absl::InvalidArgumentError(absl::StrCat(what, " says ", split.num_tokens, " tokens and ",
                                                       split.num_documents, " documents; its shards sum to ",
                                                       tokens, " and ", documents));
      }
      m.splits[split_name] = std::move(split);
    }
    ASSIGN_OR_RETURN(const nlohmann::json* sources, Field(json, "source_files", "manifest"));
    if (!sources->is_array()) return absl::InvalidArgumentError("field 'source_files' is not an array");
    for (const nlohmann::json& s : *sources) {
      if (!s.is_string()) return absl::InvalidArgumentError("field 'source_files' holds a non-string");
      m.source_files.push_back(s.get<std::string>());
    }
    ASSIGN_OR_RETURN(m.input_format, StringField(json, "input_format", "manifest"));
    // Absent in shard sets written before loss masks existed: those have none.
    if (auto it = json.find("loss_mask"); it != json.end()) {
      if (!it->is_boolean()) return absl::InvalidArgumentError("field 'loss_mask' is not a boolean");
      m.loss_mask = it->get<bool>();
    }
    ASSIGN_OR_RETURN(const nlohmann::json* rule, Field(json, "split_rule", "manifest"));
    ASSIGN_OR_RETURN(const nlohmann::json* fraction, Field(*rule, "heldout_fraction", "split_rule"));
    if (!fraction->is_number()) return absl::InvalidArgumentError("field 'split_rule.heldout_fraction' is not a number");
    m.heldout_fraction = fraction->get<double>();
    ASSIGN_OR_RETURN(m.seed, UnsignedField<uint64_t>(*rule, "seed", "split_rule"));
    ASSIGN_OR_RETURN(m.split_rule, StringField(*rule, "description", "split_rule"));
    return m;
  };
  absl::StatusOr<ShardSetManifest> result = parse();
  if (!result.ok()) return WithContext(result.status(), absl::StrCat("manifest '", name, "'"));
  return result;
}

absl::StatusOr<ShardSetManifest> ReadShardSetManifest(const std::string& dir) {
  const std::string path = JoinPath(dir, kShardSetManifestName);
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path, kMaxMetadataFileBytes));
  ASSIGN_OR_RETURN(const nlohmann::json json, ParseJson(text, absl::StrCat("manifest '", path, "'")));
  return ShardSetManifest::FromJson(json, path);
}

absl::Status WriteShardSetManifest(const std::string& dir, const ShardSetManifest& manifest) {
  return WriteStringToFile(JoinPath(dir, kShardSetManifestName), manifest.ToJson().dump(2) + "\n");
}

absl::StatusOr<std::vector<std::unique_ptr<TokenShard>>> OpenSplit(const std::string& dir,
                                                                    const ShardSetManifest& manifest,
                                                                    const std::string& split) {
  auto it = manifest.splits.find(split);
  if (it == manifest.splits.end()) {
    return absl::NotFoundError(absl::StrCat("shard set '", dir, "' has no split '", split, "'"));
  }
  TokenShardOpenOptions options;
  options.expected_vocab_size = manifest.vocab_size;
  options.expected_eos_id = manifest.eos_id;
  std::vector<std::unique_ptr<TokenShard>> shards;
  for (const ShardEntry& entry : it->second.shards) {
    const std::string path = JoinPath(dir, entry.file);
    ASSIGN_OR_RETURN(std::unique_ptr<TokenShard> shard, TokenShard::Open(path, options));
    const TokenShardHeader& h = shard->header();
    if (shard->has_loss_mask() != manifest.loss_mask) {
      return absl::DataLossError(absl::StrCat("token shard '", path, "' ", shard->has_loss_mask() ? "has" : "lacks",
                                              " a loss mask but manifest.json says loss_mask: ",
                                              manifest.loss_mask ? "true" : "false"));
    }
    if (h.num_tokens != entry.num_tokens || h.num_documents != entry.num_documents ||
        h.payload_hash != entry.payload_hash) {
      return absl::DataLossError(absl::StrCat(
          "token shard '", path, "' does not match manifest.json: file has ", h.num_tokens, " tokens, ",
          h.num_documents, " documents, hash ", HashToHex(h.payload_hash), "; manifest says ", entry.num_tokens,
          ", ", entry.num_documents, ", ", HashToHex(entry.payload_hash)));
    }
    shards.push_back(std::move(shard));
  }
  return shards;
}

}  // namespace llama_moe
