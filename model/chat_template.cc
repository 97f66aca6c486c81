#include "model/chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

constexpr char kBeginOfText[] = "<|begin_of_text|>";
constexpr char kStartHeader[] = "<|start_header_id|>";
constexpr char kEndHeader[] = "<|end_header_id|>";
constexpr char kEndOfTurn[] = "<|eot_id|>";

bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Length of the UTF-8 sequence at the front of `s` if it encodes a Python space, else 0.
size_t LeadingSpaceLength(absl::string_view s) {
  const auto c = static_cast<unsigned char>(s[0]);
  if (c < 0x80) return IsPythonSpace(c) ? 1 : 0;
  const size_t len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : 0;  // spaces need <= 3 bytes
  if (len == 0 || s.size() < len) return 0;
  uint32_t cp = len == 2 ? (c & 0x1F) : (c & 0x0F);
  for (size_t k = 1; k < len; ++k) {
    const auto cc = static_cast<unsigned char>(s[k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  return IsPythonSpace(cp) ? len : 0;
}

// Length of the UTF-8 space sequence at the end of `s`, else 0.
size_t TrailingSpaceLength(absl::string_view s) {
  for (size_t len = 1; len <= 3 && len <= s.size(); ++len) {
    const absl::string_view tail = s.substr(s.size() - len);
    const auto c = static_cast<unsigned char>(tail[0]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: the sequence starts further left
    return LeadingSpaceLength(tail) == len ? len : 0;
  }
  return 0;
}

absl::StatusOr<int32_t> SpecialId(const Tokenizer& tokenizer, const char* name) {
  auto id = tokenizer.TokenToId(name);
  if (!id.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the Llama 3 chat format needs the special token ", name,
                     ", which this tokenizer does not have"));
  }
  return *id;
}

}  // namespace

absl::string_view StripPythonWhitespace(absl::string_view text) {
  while (!text.empty()) {
    const size_t n = LeadingSpaceLength(text);
    if (n == 0) break;
    text.remove_prefix(n);
  }
  while (!text.empty()) {
    const size_t n = TrailingSpaceLength(text);
    if (n == 0) break;
    text.remove_suffix(n);
  }
  return text;
}

std::string FormatLlama3Chat(absl::Span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out = kBeginOfText;
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, kStartHeader, m.role, kEndHeader, "\n\n", StripPythonWhitespace(m.content),
                    kEndOfTurn);
  }
  if (add_generation_prompt) absl::StrAppend(&out, kStartHeader, "assistant", kEndHeader, "\n\n");
  return out;
}

namespace {

// Both id forms: `assistant`, when given, receives the per-token marks of EncodedChat.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer, absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt, std::vector<uint8_t>* assistant) {
  ASSIGN_OR_RETURN(const int32_t bos, SpecialId(tokenizer, kBeginOfText));
  ASSIGN_OR_RETURN(const int32_t start_header, SpecialId(tokenizer, kStartHeader));
  ASSIGN_OR_RETURN(const int32_t end_header, SpecialId(tokenizer, kEndHeader));
  ASSIGN_OR_RETURN(const int32_t eot, SpecialId(tokenizer, kEndOfTurn));
  const std::vector<int32_t> blank_line = tokenizer.Encode("\n\n");
  std::vector<int32_t> ids = {bos};
  auto mark = [&](uint8_t value) {
    if (assistant != nullptr) assistant->resize(ids.size(), value);
  };
  mark(0);
  auto append = [&ids](const std::vector<int32_t>& more) {
    ids.insert(ids.end(), more.begin(), more.end());
  };
  // Role, "\n\n" and content are encoded separately, as in Meta's ChatFormat; the pre-tokenizer
  // never joins "\n\n" with the stripped content that follows, so this equals encoding the string.
  auto header = [&](absl::string_view role) {
    ids.push_back(start_header);
    append(tokenizer.Encode(role));
    ids.push_back(end_header);
    append(blank_line);
    mark(0);
  };
  for (const ChatMessage& m : messages) {
    header(m.role);
    append(tokenizer.Encode(StripPythonWhitespace(m.content)));
    ids.push_back(eot);
    mark(m.role == "assistant" ? 1 : 0);
  }
  if (add_generation_prompt) header("assistant");
  return ids;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> EncodeLlama3Chat(const Tokenizer& tokenizer,
                                                      absl::Span<const ChatMessage> messages,
                                                      bool add_generation_prompt) {
  return EncodeChat(tokenizer, messages, add_generation_prompt, nullptr);
}

absl::StatusOr<EncodedChat> EncodeLlama3ChatForTraining(const Tokenizer& tokenizer,
                                                        absl::Span<const ChatMessage> messages) {
  EncodedChat out;
  ASSIGN_OR_RETURN(out.ids, EncodeChat(tokenizer, messages, /*add_generation_prompt=*/false, &out.assistant));
  return out;
}

}  // namespace llama_moe
