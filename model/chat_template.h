// The Llama 3 chat format, as a string and as token ids.
//
// Each message becomes "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>", the
// first one preceded by "<|begin_of_text|>"; content is stripped of surrounding whitespace, as the
// Hugging Face template (`| trim`) and Meta's ChatFormat (`.strip()`) do. With
// `add_generation_prompt` an open assistant header follows, for the model to continue.
//
// The id form encodes role and content as plain text, so a user who types "<|eot_id|>" cannot end
// a turn; the string form is for display and logs.
//
// Example:
//   std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "Hi!"}};
//   std::string prompt = FormatLlama3Chat(chat, /*add_generation_prompt=*/true);
//   // "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>..."
//   ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromFile("/models/llama3-8b/tokenizer.json"));
//   ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeLlama3Chat(*tokenizer, chat, true));
//   chat.push_back({"assistant", "Hello."});
//   ASSIGN_OR_RETURN(EncodedChat train, EncodeLlama3ChatForTraining(*tokenizer, chat));  // ids + marks
#ifndef LLAMA_MOE_MODEL_CHAT_TEMPLATE_H_
#define LLAMA_MOE_MODEL_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/tokenizer.h"

namespace llama_moe {

struct ChatMessage {
  std::string role;     // e.g. "system", "user", "assistant"
  std::string content;  // e.g. "What is the capital of France?"
};

// The chat as the text Llama 3 was trained on.
std::string FormatLlama3Chat(absl::Span<const ChatMessage> messages, bool add_generation_prompt);

// The same chat as token ids: special tokens as ids, role and content as plain text. Fails when
// the tokenizer lacks one of the four special tokens the format needs.
absl::StatusOr<std::vector<int32_t>> EncodeLlama3Chat(const Tokenizer& tokenizer,
                                                      absl::Span<const ChatMessage> messages,
                                                      bool add_generation_prompt);

// The chat as token ids for fine-tuning, with the tokens it learns marked: assistant[i] is 1 for
// the content of an assistant turn and the <|eot_id|> that closes it (so the model learns to end
// its turn), 0 for BOS, every header (the assistant's own header is the prompt at inference) and
// the other roles' turns.
struct EncodedChat {
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant;  // same length as ids
};
absl::StatusOr<EncodedChat> EncodeLlama3ChatForTraining(const Tokenizer& tokenizer,
                                                        absl::Span<const ChatMessage> messages);

// `text` without leading and trailing whitespace as Python's str.strip() defines it (Unicode
// White_Space plus the ASCII separators U+001C..U+001F).
absl::string_view StripPythonWhitespace(absl::string_view text);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_CHAT_TEMPLATE_H_
