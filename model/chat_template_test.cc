#include "model/chat_template.h"

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llama_moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A tiktoken rank file of the 256 bytes plus merges "\n\n", "us", "er", "user"; Meta's specials
// then sit at ids 260.. (<|begin_of_text|> 260, <|start_header_id|> 266, <|end_header_id|> 267,
// <|eot_id|> 269).
std::unique_ptr<Tokenizer> TinyTokenizer() {
  std::string ranks;
  int32_t id = 0;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppend(&ranks, absl::Base64Escape(std::string(1, static_cast<char>(b))), " ", id++, "\n");
  }
  for (const char* t : {"\n\n", "us", "er", "user"}) {
    absl::StrAppend(&ranks, absl::Base64Escape(t), " ", id++, "\n");
  }
  const std::string path = absl::StrCat(std::getenv("TEST_TMPDIR"), "/chat.tiktoken");
  std::ofstream(path) << ranks;
  auto tok = Tokenizer::FromFile(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

TEST(ChatTemplateTest, FormatsLikeTheHuggingFaceTemplate) {
  const std::vector<ChatMessage> chat = {{"system", "  Be brief.\n"}, {"user", "Hi!"}};
  EXPECT_EQ(FormatLlama3Chat(chat, false),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>");
  EXPECT_EQ(FormatLlama3Chat(chat, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(FormatLlama3Chat({}, true),
            "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, StripsLikePython) {
  EXPECT_EQ(StripPythonWhitespace(" \t\r\n\x1f x y \u00a0\u3000\u2028"), "x y");
  EXPECT_EQ(StripPythonWhitespace("\u180e x"), "\u180e x");  // U+180E is not a space
  EXPECT_EQ(StripPythonWhitespace("\u3000"), "");
  EXPECT_EQ(StripPythonWhitespace("caf\u00e9"), "caf\u00e9");  // é ends in a continuation byte
  EXPECT_EQ(StripPythonWhitespace(""), "");
}

TEST(ChatTemplateTest, IdsMatchEncodingTheFormattedString) {
  auto tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  const std::vector<ChatMessage> chat = {{"system", "Answer in French."},
                                         {"user", " user: two\n\nlines "},
                                         {"assistant", ""}};
  for (bool prompt : {false, true}) {
    auto ids = EncodeLlama3Chat(*tok, chat, prompt);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, tok->EncodeWithSpecials(FormatLlama3Chat(chat, prompt)));
    EXPECT_EQ(*tok->Decode(*ids), FormatLlama3Chat(chat, prompt));
  }
  auto ids = EncodeLlama3Chat(*tok, {{"user", "x"}}, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre(260, 266, 259, 267, 256, 'x', 269));
}

TEST(ChatTemplateTest, SpecialStringsInContentStayText) {
  auto tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  const std::vector<ChatMessage> chat = {{"user", "a<|eot_id|><|start_header_id|>"}};
  auto ids = EncodeLlama3Chat(*tok, chat, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 269), 1);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 266), 1);
  EXPECT_EQ(*tok->Decode(*ids), FormatLlama3Chat(chat, false));
}

TEST(ChatTemplateTest, TrainingFormMarksAssistantContentAndItsEndOfTurn) {
  auto tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  const std::vector<ChatMessage> chat = {{"system", "s"}, {"user", "u"}, {"assistant", " ab "}, {"user", "v"},
                                         {"assistant", "c"}};
  auto encoded = EncodeLlama3ChatForTraining(*tok, chat);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  auto ids = EncodeLlama3Chat(*tok, chat, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(encoded->ids, *ids);
  ASSERT_EQ(encoded->assistant.size(), encoded->ids.size());
  // The marked tokens, in order, are "ab" <|eot_id|> "c" <|eot_id|>: the assistant's content and
  // turn ends, never a header or another role's text.
  std::vector<int32_t> marked;
  for (size_t i = 0; i < encoded->ids.size(); ++i) {
    if (encoded->assistant[i]) marked.push_back(encoded->ids[i]);
  }
  EXPECT_THAT(marked, ElementsAre('a', 'b', 269, 'c', 269));
  // Each assistant header ("<|start_header_id|>assistant<|end_header_id|>\n\n") stays unmarked.
  size_t headers = 0;
  for (size_t i = 0; i < encoded->ids.size(); ++i) {
    if (encoded->ids[i] == 266 || encoded->ids[i] == 267 || encoded->ids[i] == 260) {
      EXPECT_EQ(encoded->assistant[i], 0) << "token " << i;
      ++headers;
    }
  }
  EXPECT_EQ(headers, 1 + 2 * chat.size());
}

TEST(ChatTemplateTest, TokenizerWithoutChatTokensFails) {
  // A tokenizer.json with only the byte tokens: no special tokens at all.
  const std::string path = absl::StrCat(std::getenv("TEST_TMPDIR"), "/plain.json");
  {
    std::string json = "{\"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {";
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : 256 + extra++;
      absl::StrAppend(&json, b ? ", " : "", "\"\\u", absl::Hex(cp, absl::kZeroPad4), "\": ", b);
    }
    std::ofstream(path) << json << "}}}";
  }
  auto tok = Tokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = EncodeLlama3Chat(**tok, {{"user", "x"}}, true);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ids.status().message(), HasSubstr("<|begin_of_text|>"));
}

}  // namespace
}  // namespace llama_moe
