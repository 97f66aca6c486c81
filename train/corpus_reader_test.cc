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
  EXPECT_THAT(ParseCorpusFormat("html").status().message(), HasSubstr("html"));
}

}  // namespace
}  // namespace llama_moe
