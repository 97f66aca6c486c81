#include "model/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "model/json_util.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"
#include "pcre2.h"

namespace llama_moe {

const char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace tokenizer_internal {
namespace {

// kLlama3Pattern spelled so that PCRE2 matches exactly what tiktoken's Rust regex matches:
// - `(?i:'s|...)` is written with ASCII classes: PCRE2's caseless UTF matching folds U+017F (long
//   s) to 's' and U+212A (Kelvin) to 'k', Rust's regex does not ("'ſ" is two pieces in tiktoken).
// - `\s` is the Unicode White_Space property spelled out: PCRE2's \s also matches U+180E, which
//   stopped being a space in Unicode 6.3.
// No capturing groups: the per-thread match data holds one ovector pair.
#define LM_WS "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr char kPcre2Pattern[] =
    "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}{1,3}"
    "| ?[^" LM_WS "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" LM_WS "]*[\\r\\n]+"
    "|[" LM_WS "]+(?![^" LM_WS "])"
    "|[" LM_WS "]+";
#undef LM_WS

// Match data, match context and JIT stack are per thread: PCRE2 forbids sharing them between
// concurrent matches, and allocating them per call would dominate short texts.
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  ThreadMatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    // Long whitespace runs backtrack through `\s+(?!\S)`; 32 KiB is PCRE2's default, grow to 8 MiB.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

class PreTokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create() {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    // MATCH_INVALID_UTF: arbitrary bytes are accepted without a per-call validity scan (which
    // would be quadratic when matching piece by piece); invalid sequences simply never match.
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPcre2Pattern), PCRE2_ZERO_TERMINATED,
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &error_offset,
                      nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InternalError(absl::StrCat("compiling the pre-tokenizer regex failed at offset ",
                                              error_offset, ": ",
                                              reinterpret_cast<const char*>(message)));
    }
    auto pre = std::unique_ptr<PreTokenizer>(new PreTokenizer(code));
    // JIT is optional (not every platform has it); the interpreter gives the same matches.
    pre->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    return pre;
  }

  ~PreTokenizer() { pcre2_code_free(code_); }

  // Calls `fn(piece)` for consecutive pieces covering all of `text`.
  template <typename Fn>
  void Split(absl::string_view text, Fn&& fn) const {
    ThreadMatchState& state = MatchState();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const size_t n = text.size();
    size_t offset = 0;
    while (offset < n) {
      int rc = -1;
      if (state.data != nullptr) {
        if (jit_) {
          rc = pcre2_jit_match(code_, subject, n, offset, 0, state.data, state.context);
        }
        if (!jit_ || rc == PCRE2_ERROR_JIT_STACKLIMIT) {
          rc = pcre2_match(code_, subject, n, offset, PCRE2_NO_JIT, state.data, state.context);
        }
      }
      if (rc < 0) {
        // No match from here on: only invalid UTF-8 remains, or PCRE2 hit a resource limit.
        // The rest becomes one piece, so encoding stays lossless.
        fn(text.substr(offset));
        return;
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(state.data);
      const size_t start = ov[0];
      const size_t end = ov[1];
      if (start > offset) fn(text.substr(offset, start - offset));  // invalid UTF-8 bytes
      if (end <= start) {
        // Every alternative consumes a character, so this is unreachable; guard against looping.
        fn(text.substr(start, 1));
        offset = start + 1;
        continue;
      }
      fn(text.substr(start, end - start));
      offset = end;
    }
  }

 private:
  explicit PreTokenizer(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
  bool jit_ = false;
};

}  // namespace tokenizer_internal

namespace {

constexpr int32_t kMaxTokenId = 1 << 24;  // bounds the id table a hostile file can make us allocate
// Llama 3's tokenizer.json is 9 MB; parsing costs ~10x the file in memory, so a file above this is
// refused before it is read.
constexpr uint64_t kMaxTokenizerFileBytes = uint64_t{512} << 20;

// GPT-2's byte-level alphabet: printable bytes stand for themselves, the other 68 bytes for
// U+0100.. in byte order. Returns code point -> byte, -1 for code points outside the alphabet.
std::vector<int> UnicodeToByteTable() {
  std::vector<int> table(256 + 68, -1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    table[printable ? b : 256 + extra++] = b;
  }
  return table;
}

// Decodes one UTF-8 code point at `*i`, advancing it; -1 on malformed input.
int32_t NextCodePoint(absl::string_view s, size_t* i) {
  const auto c = static_cast<unsigned char>(s[*i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || *i + len > s.size()) return -1;
  int32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k) {
    const auto cc = static_cast<unsigned char>(s[*i + k]);
    if ((cc & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (cc & 0x3F);
  }
  *i += len;
  return cp;
}

// "Ġthe" -> " the"; nullopt if a character is outside the byte-level alphabet.
std::optional<std::string> ByteLevelDecode(absl::string_view token, const std::vector<int>& table) {
  std::string out;
  out.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    const int32_t cp = NextCodePoint(token, &i);
    if (cp < 0 || cp >= static_cast<int32_t>(table.size()) || table[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(table[cp]));
  }
  return out;
}

// Meta's Llama 3 tokenizer.py: 256 specials after the base ranks, named in this order.
std::vector<std::string> Llama3SpecialTokens() {
  std::vector<std::string> names = {
      "<|begin_of_text|>",
      "<|end_of_text|>",
      "<|reserved_special_token_0|>",
      "<|reserved_special_token_1|>",
      "<|reserved_special_token_2|>",
      "<|reserved_special_token_3|>",
      "<|start_header_id|>",
      "<|end_header_id|>",
      "<|reserved_special_token_4|>",
      "<|eot_id|>",
  };
  for (int i = 5; i < 256 - 5; ++i) names.push_back(absl::StrCat("<|reserved_special_token_", i, "|>"));
  return names;
}

absl::Status FileError(absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer file '", name, "': ", what));
}

// Quotes a token for messages, escaping bytes that would garble a terminal.
std::string Quote(absl::string_view s) { return absl::StrCat("'", absl::CHexEscape(s), "'"); }

}  // namespace

Tokenizer::Tokenizer() { std::fill(std::begin(byte_to_id_), std::end(byte_to_id_), -1); }
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open tokenizer file '", path, "'"));
  }
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
      static_cast<uint64_t>(st.st_size) > kMaxTokenizerFileBytes) {
    return FileError(path, absl::StrCat("the file is ", st.st_size, " bytes, above the limit of ",
                                        kMaxTokenizerFileBytes, " bytes"));
  }
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading tokenizer file '", path, "'"));
  return FromContent(content.str(), path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromContent(absl::string_view content,
                                                                  absl::string_view name) {
  const absl::string_view head = absl::StripLeadingAsciiWhitespace(content);
  if (head.empty()) return FileError(name, "the file is empty");
  if (head[0] == '{') return FromHfJson(content, name);
  return FromTiktoken(content, name);
}

absl::Status Tokenizer::AddToken(absl::string_view bytes, int32_t id, bool special,
                                 absl::string_view name) {
  if (id < 0 || id >= kMaxTokenId) {
    return FileError(name, absl::StrCat("token ", Quote(bytes), " has id ", id,
                                        ", outside [0, ", kMaxTokenId, ")"));
  }
  if (id >= static_cast<int32_t>(id_to_token_.size())) {
    id_to_token_.resize(id + 1);
    is_special_.resize(id + 1, false);
  }
  if (id_to_token_[id].has_value() && *id_to_token_[id] != bytes) {
    return FileError(name, absl::StrCat("id ", id, " is given to both ", Quote(*id_to_token_[id]),
                                        " and ", Quote(bytes)));
  }
  id_to_token_[id] = std::string(bytes);
  if (special) is_special_[id] = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfJson(absl::string_view content,
                                                                 absl::string_view name) {
  if (absl::Status deep = CheckJsonNesting(content, "the file"); !deep.ok()) return FileError(name, deep.message());
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(content.begin(), content.end());
  } catch (const nlohmann::json::exception& e) {
    return FileError(name, absl::StrCat("not valid JSON: ", e.what()));
  }
  // Accessors such as value("special", false) throw on a field of the wrong type; a malformed
  // file must become a Status, not an exception crossing the API.
  try {
    return FromHfJsonValue(json, name);
  } catch (const nlohmann::json::exception& e) {
    return FileError(name, absl::StrCat("unexpected JSON structure: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfJsonValue(const nlohmann::json& json,
                                                                      absl::string_view name) {
  if (!json.is_object()) return FileError(name, "the top level is not a JSON object");
  auto model_it = json.find("model");
  if (model_it == json.end() || !model_it->is_object()) {
    return FileError(name, "missing object 'model'");
  }
  const nlohmann::json& model = *model_it;
  if (auto type = model.find("type"); type != model.end() && *type != "BPE") {
    return FileError(name, absl::StrCat("model.type is ", type->dump(), ", only \"BPE\" is supported"));
  }
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return FileError(name, "missing object 'model.vocab'");
  }
  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    return FileError(name, "missing array 'model.merges'");
  }
  // Only the Llama 3 pre-tokenizer is implemented; refuse a file that asks for another.
  if (auto pre = json.find("pre_tokenizer"); pre != json.end() && pre->is_object()) {
    std::vector<const nlohmann::json*> stack = {&*pre};
    while (!stack.empty()) {
      const nlohmann::json* node = stack.back();
      stack.pop_back();
      if (node->is_object()) {
        auto regex = node->find("pattern");
        if (node->value("type", "") == "Split" && regex != node->end() && regex->is_object() &&
            regex->contains("Regex") && (*regex)["Regex"] != kLlama3Pattern) {
          return FileError(name, absl::StrCat("pre-tokenizer regex ", (*regex)["Regex"].dump(),
                                              " is not Llama 3's; only Llama 3 is supported"));
        }
      }
      if (node->is_structured()) {
        for (const auto& child : *node) stack.push_back(&child);
      }
    }
  }

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  const std::vector<int> table = UnicodeToByteTable();
  tok->vocab_.reserve(vocab_it->size());
  for (const auto& [key, value] : vocab_it->items()) {
    if (!value.is_number_integer()) {
      return FileError(name, absl::StrCat("model.vocab entry \"", key, "\" has a non-integer id ",
                                          value.dump()));
    }
    std::optional<std::string> bytes = ByteLevelDecode(key, table);
    if (!bytes) {
      return FileError(name, absl::StrCat("model.vocab token \"", key,
                                          "\" is not in the byte-level alphabet"));
    }
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) {
      return FileError(name, absl::StrCat("model.vocab token \"", key, "\" has id ", id,
                                          ", outside [0, ", kMaxTokenId, ")"));
    }
    RETURN_IF_ERROR(tok->AddToken(*bytes, static_cast<int32_t>(id), false, name));
    if (!tok->vocab_.emplace(*bytes, static_cast<int32_t>(id)).second) {
      return FileError(name, absl::StrCat("model.vocab has two entries for the bytes ", Quote(*bytes)));
    }
  }

  if (merges_it->size() > static_cast<size_t>(kMaxTokenId)) {
    return FileError(name, absl::StrCat("model.merges has ", merges_it->size(), " entries, above the limit of ",
                                        kMaxTokenId));
  }
  tok->merges_.reserve(merges_it->size());
  int32_t rank = 0;
  for (const auto& merge : *merges_it) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string& s = merge.get_ref<const std::string&>();
      std::vector<std::string> parts = absl::StrSplit(s, ' ');
      if (parts.size() != 2) {
        return FileError(name, absl::StrCat("model.merges[", rank, "] = \"", s,
                                            "\" is not two tokens separated by one space"));
      }
      left = parts[0];
      right = parts[1];
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return FileError(name, absl::StrCat("model.merges[", rank, "] = ", merge.dump(),
                                          " is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    auto find = [&](const std::string& t) -> std::optional<int32_t> {
      auto it = vocab_it->find(t);
      if (it == vocab_it->end()) return std::nullopt;
      return it->get<int32_t>();
    };
    const std::optional<int32_t> l = find(left), r = find(right), m = find(left + right);
    if (!l || !r || !m) {
      return FileError(name, absl::StrCat("model.merges[", rank, "] = (\"", left, "\", \"", right,
                                          "\"): \"", !l ? left : !r ? right : left + right,
                                          "\" is not in model.vocab"));
    }
    // A repeated pair keeps its first (lowest) rank, as Hugging Face's BPE does.
    tok->merges_.emplace(PairKey(*l, *r), MergeResult{rank, *m});
    ++rank;
  }
  tok->whole_piece_shortcut_ = model.value("ignore_merges", false);

  if (auto added = json.find("added_tokens"); added != json.end()) {
    if (!added->is_array()) return FileError(name, "'added_tokens' is not an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const nlohmann::json& t = (*added)[i];
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string()) {
        return FileError(name, absl::StrCat("added_tokens[", i, "] needs an integer 'id' and a string 'content'"));
      }
      const std::string content_str = t["content"].get<std::string>();
      const int64_t id = t["id"].get<int64_t>();
      if (content_str.empty()) return FileError(name, absl::StrCat("added_tokens[", i, "] has empty content"));
      if (id < 0 || id >= kMaxTokenId) {
        return FileError(name, absl::StrCat("added_tokens[", i, "] has id ", id, ", outside [0, ",
                                            kMaxTokenId, ")"));
      }
      const bool special = t.value("special", false);
      RETURN_IF_ERROR(tok->AddToken(content_str, static_cast<int32_t>(id), special, name));
      tok->added_[content_str] = static_cast<int32_t>(id);
    }
  }
  RETURN_IF_ERROR(tok->Finish(name));
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTiktoken(absl::string_view content,
                                                                   absl::string_view name) {
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  int line_number = 0;
  int32_t num_base = 0;
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
    std::string bytes;
    int32_t rank = 0;
    if (fields.size() != 2) {
      return FileError(name, absl::StrCat("line ", line_number,
                                          ": expected \"<base64 token> <rank>\", got ",
                                          Quote(line.substr(0, 80))));
    }
    if (fields[0].empty() || !absl::Base64Unescape(fields[0], &bytes) || bytes.empty()) {
      return FileError(name, absl::StrCat("line ", line_number, ": invalid base64 token ",
                                          Quote(fields[0].substr(0, 80))));
    }
    if (!absl::SimpleAtoi(fields[1], &rank)) {
      return FileError(name, absl::StrCat("line ", line_number, ": invalid rank ",
                                          Quote(fields[1].substr(0, 40))));
    }
    RETURN_IF_ERROR(tok->AddToken(bytes, rank, false, name), absl::StrCat("line ", line_number));
    if (!tok->vocab_.emplace(bytes, rank).second) {
      return FileError(name, absl::StrCat("line ", line_number, ": token ", Quote(bytes),
                                          " appears twice"));
    }
    ++num_base;
  }
  // tiktoken merges the adjacent pair whose concatenation has the lowest rank; every split of a
  // token into two tokens is such a pair, with the token's own rank.
  for (const auto& [bytes, id] : tok->vocab_) {
    for (size_t split = 1; split < bytes.size(); ++split) {
      auto l = tok->vocab_.find(absl::string_view(bytes).substr(0, split));
      if (l == tok->vocab_.end()) continue;
      auto r = tok->vocab_.find(absl::string_view(bytes).substr(split));
      if (r == tok->vocab_.end()) continue;
      tok->merges_.emplace(PairKey(l->second, r->second), MergeResult{id, id});
    }
  }
  tok->whole_piece_shortcut_ = true;  // tiktoken looks the whole piece up before merging
  const std::vector<std::string> specials = Llama3SpecialTokens();
  for (size_t i = 0; i < specials.size(); ++i) {
    const int32_t id = num_base + static_cast<int32_t>(i);
    RETURN_IF_ERROR(tok->AddToken(specials[i], id, true, name));
    tok->added_[specials[i]] = id;
  }
  RETURN_IF_ERROR(tok->Finish(name));
  return tok;
}

absl::Status Tokenizer::Finish(absl::string_view name) {
  if (vocab_.empty()) return FileError(name, "the vocabulary is empty");
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(std::string(1, static_cast<char>(b)));
    if (it == vocab_.end()) {
      return FileError(name, absl::StrFormat(
                                 "no token for the byte 0x%02X; byte-level BPE needs all 256 bytes", b));
    }
    byte_to_id_[b] = it->second;
  }
  for (const auto& [content, id] : added_) {
    added_by_first_byte_[static_cast<unsigned char>(content[0])].emplace_back(content, id);
  }
  for (auto& group : added_by_first_byte_) {
    std::sort(group.begin(), group.end(), [](const auto& a, const auto& b) {
      return a.first.size() != b.first.size() ? a.first.size() > b.first.size() : a.first < b.first;
    });
  }
  auto find_added = [&](const char* s) -> std::optional<int32_t> {
    auto it = added_.find(s);
    if (it == added_.end()) return std::nullopt;
    return it->second;
  };
  bos_id_ = find_added("<|begin_of_text|>");
  eot_id_ = find_added("<|eot_id|>");
  for (const char* s : {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"}) {
    if (auto id = find_added(s)) eos_ids_.push_back(*id);
  }
  ASSIGN_OR_RETURN(pre_tokenizer_, tokenizer_internal::PreTokenizer::Create());
  return absl::OkStatus();
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(is_special_.size()) && is_special_[id];
}

void Tokenizer::SetWordCacheCapacity(size_t capacity) {
  absl::MutexLock lock(&cache_mu_);
  cache_capacity_ = capacity;
  cache_.clear();
}

std::vector<absl::string_view> Tokenizer::PreTokenize(absl::string_view text) const {
  std::vector<absl::string_view> pieces;
  pre_tokenizer_->Split(text, [&](absl::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

void Tokenizer::BytePairMerge(absl::string_view piece, std::vector<int32_t>* out) const {
  // Symbols form a linked list over the piece's bytes; candidate merges sit in a min-heap ordered
  // by (rank, position), so each merge costs O(log n) and equal ranks merge left to right, as in
  // Hugging Face's BPE and tiktoken. Stale candidates are skipped when popped. Scratch buffers
  // are per thread so that encoding allocates nothing in steady state.
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev;
    int32_t next;  // -1 at the end
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index
    int32_t left_id;
    int32_t right_id;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  const int32_t n = static_cast<int32_t>(piece.size());
  symbols.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_to_id_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.merged});
    std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = symbols[c.left];
    if (left.id != c.left_id || left.next < 0 || symbols[left.next].id != c.right_id) continue;
    Symbol& right = symbols[left.next];
    left.id = c.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    right.id = -1;
    if (left.prev >= 0) consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0 && n > 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

void Tokenizer::EncodePiece(absl::string_view piece, std::vector<int32_t>* out) const {
  if (whole_piece_shortcut_) {
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (piece.size() == 1) {
    out->push_back(byte_to_id_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  {
    absl::MutexLock lock(&cache_mu_);
    if (cache_capacity_ == 0) {
      // Fall through to merging without the cache (the benchmark's baseline).
    } else if (auto it = cache_.find(piece); it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t begin = out->size();
  BytePairMerge(piece, out);
  absl::MutexLock lock(&cache_mu_);
  if (cache_capacity_ == 0) return;
  // Clearing when full keeps the bound simple; a corpus' frequent words refill it within moments.
  if (cache_.size() >= cache_capacity_) cache_.clear();
  cache_.emplace(piece, std::vector<int32_t>(out->begin() + begin, out->end()));
}

void Tokenizer::EncodeOrdinary(absl::string_view text, std::vector<int32_t>* out) const {
  pre_tokenizer_->Split(text, [&](absl::string_view piece) { EncodePiece(piece, out); });
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);  // ~4 bytes per token in English
  EncodeOrdinary(text, &ids);
  return ids;
}

std::vector<int32_t> Tokenizer::EncodeWithSpecials(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  size_t plain_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const auto& group = added_by_first_byte_[static_cast<unsigned char>(text[i])];
    const std::pair<std::string, int32_t>* match = nullptr;
    for (const auto& candidate : group) {  // longest first: leftmost-longest match
      if (absl::string_view(text).substr(i, candidate.first.size()) == candidate.first) {
        match = &candidate;
        break;
      }
    }
    if (match == nullptr) {
      ++i;
      continue;
    }
    EncodeOrdinary(text.substr(plain_start, i - plain_start), &ids);
    ids.push_back(match->second);
    i += match->first.size();
    plain_start = i;
  }
  EncodeOrdinary(text.substr(plain_start), &ids);
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text;
  text.reserve(ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size() || !id_to_token_[id].has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot decode token id ", id, " at position ",
                                                     i, ": no such token (vocabulary size ",
                                                     vocab_size(), ")"));
    }
    text += *id_to_token_[id];
  }
  return text;
}

absl::StatusOr<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto it = added_.find(token); it != added_.end()) return it->second;
  if (auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return absl::NotFoundError(absl::StrCat("token ", Quote(token), " is not in the vocabulary"));
}

absl::StatusOr<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !id_to_token_[id].has_value()) {
    return absl::NotFoundError(absl::StrCat("no token has id ", id, " (vocabulary size ",
                                            vocab_size(), ")"));
  }
  return *id_to_token_[id];
}

}  // namespace llama_moe
