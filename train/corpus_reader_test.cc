#include "train/corpus_reader.h"

#include <sys/stat.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/file_util.h"
#include "model/test_util.h"

namespace llama_moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(SplitTextDocumentsTest, BlankLinesSeparateDocuments) {
  EXPECT_THAT(SplitTextDocuments("one\ntwo lines\n\n\n  \t\nsecond\r\n\r\nthird\n"),
              ElementsAre("one\ntwo lines", "second\r", "third"));
  EXPECT_THAT(SplitTextDocuments("a whole file\nis one document"), ElementsAre("a whole file\nis one document"));
  EXPECT_THAT(SplitTextDocuments("\n\n \n"), ElementsAre());
}

TEST(BrownToTextTest, StripsTagsAndUndoesQuotes) {
  // The first sentence of ca01, verbatim.
  EXPECT_EQ(BrownToText("\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr "
                        "an/at investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn "
                        "produced/vbd ``/`` no/at evidence/nn ''/'' that/cs any/dti irregularities/nns "
                        "took/vbd place/nn ./.\n"),
            "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
            "produced \"no evidence\" that any irregularities took place .");
}

TEST(BrownToTextTest, KeepsSentenceAndParagraphBreaks) {
  EXPECT_EQ(BrownToText("\n\n\tFirst/od sentence/nn ./.\nSecond/od one/cd ./.\n\n\n\tNew/jj paragraph/nn ./.\n"),
            "First sentence .\nSecond one .\n\nNew paragraph .");
}

TEST(BrownToTextTest, TagIsAfterTheLastSlash) {
  // Real corpus tokens whose words contain '/' or quotes.
  EXPECT_EQ(BrownToText("\t1/2/cd and/or/cc //in 5-3/4''/nns /l//nn"), "1/2 and/or / 5-3/4'' /l/");
  // A quote that opens a line, and one that closes it.
  EXPECT_EQ(BrownToText("\t``/`` Only/rb ,/, ''/''"), "\"Only ,\"");
}

TEST(ListInputFilesTest, DirectoriesAreSortedAndFiltered) {
  const std::string dir = TestPath("corpus");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  for (const char* name : {"cb02", "ca01", "README", "cats.txt", ".hidden", "cb01"}) {
    ASSERT_TRUE(WriteStringToFile(JoinPath(dir, name), "x").ok());
  }
  absl::StatusOr<std::vector<std::string>> brown = ListInputFiles({dir}, CorpusFormat::kBrown);
  ASSERT_TRUE(brown.ok()) << brown.status();
  EXPECT_THAT(*brown, ElementsAre(JoinPath(dir, "ca01"), JoinPath(dir, "cb01"), JoinPath(dir, "cb02")));

  absl::StatusOr<std::vector<std::string>> text = ListInputFiles({JoinPath(dir, "README"), dir}, CorpusFormat::kText);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(*text, ElementsAre(JoinPath(dir, "README"), JoinPath(dir, "README"), JoinPath(dir, "ca01"),
                                 JoinPath(dir, "cats.txt"), JoinPath(dir, "cb01"), JoinPath(dir, "cb02")));

  absl::StatusOr<std::vector<std::string>> missing = ListInputFiles({JoinPath(dir, "nope")}, CorpusFormat::kText);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr(JoinPath(dir, "nope")));
}

TEST(CorpusFormatTest, ParsesNames) {
  EXPECT_EQ(*ParseCorpusFormat("brown"), CorpusFormat::kBrown);
  EXPECT_EQ(*ParseCorpusFormat("text"), CorpusFormat::kText);
  EXPECT_EQ(*ParseCorpusFormat("chat"), CorpusFormat::kChat);
  EXPECT_STREQ(CorpusFormatName(CorpusFormat::kChat), "chat");
  EXPECT_THAT(ParseCorpusFormat("html").status().message(), HasSubstr("html"));
}

TEST(ChatJsonlTest, ReadsConversationsInOrder) {
  absl::StatusOr<std::vector<std::vector<ChatMessage>>> chats = ParseChatJsonl(
      "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
      "{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}], "
      "\"id\": 7}\n"
      "\n   \n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\", \"name\": \"x\"}, "
      "{\"role\": \"assistant\", \"content\": \"4\"}, {\"role\": \"ipython\", \"content\": \"{}\"}]}",
      "chats.jsonl");
  ASSERT_TRUE(chats.ok()) << chats.status();
  ASSERT_EQ(chats->size(), 2u);
  ASSERT_EQ((*chats)[0].size(), 3u);
  EXPECT_EQ((*chats)[0][0].role, "system");
  EXPECT_EQ((*chats)[0][2].content, "Hello");
  EXPECT_EQ((*chats)[1][2].role, "ipython");
  EXPECT_TRUE(ParseChatJsonl("", "empty.jsonl")->empty());
}

TEST(ChatJsonlTest, BadConversationsNameFileLineAndProblem) {
  const std::string good = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                           "{\"role\": \"assistant\", \"content\": \"b\"}]}\n";
  const std::pair<std::string, std::string> cases[] = {
      {"{\"messages\": [{\"role\": \"bot\", \"content\": \"a\"}]}", "message 0 has role 'bot'"},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}", "no assistant turn"},
      {"{\"messages\": []}", "no assistant turn"},
      {"{\"messages\": [{\"role\": \"assistant\", \"content\": 5}]}", "message 0 has no string \"content\""},
      {"{\"messages\": [{\"content\": \"a\"}]}", "message 0 has no string \"role\""},
      {"{\"messages\": [\"hi\"]}", "message 0 is not an object"},
      {"{\"conversation\": []}", "no \"messages\" array"},
      {"[1, 2]", "not a JSON object"},
      {"{\"messages\": [", "not valid JSON"},
  };
  for (const auto& [line, problem] : cases) {
    absl::StatusOr<std::vector<std::vector<ChatMessage>>> chats = ParseChatJsonl(good + line + "\n", "d/c.jsonl");
    ASSERT_FALSE(chats.ok()) << line;
    EXPECT_EQ(chats.status().code(), absl::StatusCode::kInvalidArgument) << line;
    EXPECT_THAT(chats.status().message(), HasSubstr("chat data 'd/c.jsonl' line 2")) << line;
    EXPECT_THAT(chats.status().message(), HasSubstr(problem)) << line;
  }
}

}  // namespace
}  // namespace llama_moe
