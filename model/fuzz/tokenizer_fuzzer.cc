// libFuzzer target over the tokenizer loaders, then encoding and decoding. Input: one byte that
// picks the format (even: tokenizer.json, odd: tiktoken ranks), the file's content up to the
// first 0x00 byte, then a text. Built and run by tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t cut = rest.find('\0');
  const std::string content = rest.substr(0, cut);
  const std::string text = cut == std::string::npos ? std::string() : rest.substr(cut + 1);
  // FromContent picks the format from the first character; force the one the selector asks for.
  const bool json = data[0] % 2 == 0;
  if (json != (!content.empty() && content[0] == '{')) return 0;
  absl::StatusOr<std::unique_ptr<llama_moe::Tokenizer>> tok = llama_moe::Tokenizer::FromContent(content, "fuzz");
  if (!tok.ok()) return 0;
  // Every byte string round-trips, and every id is in the vocabulary.
  for (const bool specials : {false, true}) {
    const std::vector<int32_t> ids = specials ? (*tok)->EncodeWithSpecials(text) : (*tok)->Encode(text);
    for (int32_t id : ids) {
      if (id < 0 || id >= (*tok)->vocab_size()) __builtin_trap();
    }
    absl::StatusOr<std::string> back = (*tok)->Decode(ids);
    if (!back.ok() || *back != text) __builtin_trap();
  }
  return 0;
}
