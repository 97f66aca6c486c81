// libFuzzer target over the raw-corpus readers of //train:prepare_data: the first byte picks the
// format (modulo 3: text, Brown corpus, chat JSON Lines), the rest is a file's content. Built and
// run by tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "train/corpus_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string content(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 3 == 2) {
    // Parsed conversations hold only the four roles and each has an assistant turn.
    absl::StatusOr<std::vector<std::vector<llama_moe::ChatMessage>>> chats =
        llama_moe::ParseChatJsonl(content, "fuzz.jsonl");
    if (!chats.ok()) return 0;
    for (const auto& chat : *chats) {
      bool assistant = false;
      for (const llama_moe::ChatMessage& m : chat) {
        if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "ipython") __builtin_trap();
        assistant |= m.role == "assistant";
      }
      if (!assistant) __builtin_trap();
    }
    return 0;
  }
  if (data[0] % 3 == 0) {
    // Documents are non-empty, hold no blank line, and together are no longer than the file.
    size_t total = 0;
    for (const std::string& doc : llama_moe::SplitTextDocuments(content)) {
      if (doc.empty() || doc.find("\n\n") != std::string::npos) __builtin_trap();
      total += doc.size();
    }
    if (total > content.size()) __builtin_trap();
    return 0;
  }
  // Dropping tags and rejoining words never makes the text longer than the file.
  const std::string text = llama_moe::BrownToText(content);
  if (text.size() > content.size()) __builtin_trap();
  return 0;
}
