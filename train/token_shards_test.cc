#include "train/token_shards.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/file_util.h"
#include "model/test_util.h"

namespace llama_moe {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr uint32_t kVocab = 1000;
constexpr uint32_t kEos = 999;

// Random documents (ids in [0, kEos)) each followed by kEos.
std::vector<uint32_t> RandomDocuments(int documents, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens;
  for (int d = 0; d < documents; ++d) {
    const int length = 1 + static_cast<int>(rng() % 50);
    for (int i = 0; i < length; ++i) tokens.push_back(rng() % kEos);
    tokens.push_back(kEos);
  }
  return tokens;
}

std::string MakeDir() {
  const std::string dir = TestPath("shards");
  EXPECT_EQ(::mkdir(dir.c_str(), 0755), 0);
  return dir;
}

std::string ReadBytes(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : std::string();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  ASSERT_TRUE(WriteStringToFile(path, bytes).ok());
}

uint64_t PayloadHash(const std::string& file_bytes) {
  return Fnv1a64(absl::string_view(file_bytes).substr(kTokenShardHeaderBytes));
}

void PutU64(std::string* bytes, size_t offset, uint64_t value) { std::memcpy(&(*bytes)[offset], &value, 8); }
void PutU32(std::string* bytes, size_t offset, uint32_t value) { std::memcpy(&(*bytes)[offset], &value, 4); }

TEST(Fnv1a64Test, MatchesPublishedVectors) {
  // Test vectors of the FNV reference (isthe.com/chongo/tech/comp/fnv).
  EXPECT_EQ(Fnv1a64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(Fnv1a64("foobar"), 0x85944171f73967e8ULL);
  EXPECT_EQ(HashToHex(0xaf63dc4c8601ec8cULL), "0xaf63dc4c8601ec8c");
}

TEST(TokenShardTest, RoundTrip) {
  const std::string dir = MakeDir();
  const std::string path = JoinPath(dir, "train-00000.tok");
  const std::vector<uint32_t> tokens = RandomDocuments(37, 1);
  ASSERT_TRUE(WriteTokenShard(path, tokens, kVocab, kEos).ok());
  EXPECT_EQ(ReadBytes(path).size(), kTokenShardHeaderBytes + 4 * tokens.size());

  absl::StatusOr<std::unique_ptr<TokenShard>> shard = TokenShard::Open(path);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_THAT((*shard)->tokens(), ElementsAreArray(tokens));
  const TokenShardHeader& h = (*shard)->header();
  EXPECT_EQ(h.num_tokens, tokens.size());
  EXPECT_EQ(h.num_documents, 37u);
  EXPECT_EQ(h.vocab_size, kVocab);
  EXPECT_EQ(h.eos_id, kEos);
  EXPECT_EQ(h.payload_hash, Fnv1a64(absl::string_view(reinterpret_cast<const char*>(tokens.data()),
                                                      tokens.size() * 4)));
  // No temporary file is left behind by the atomic write.
  EXPECT_FALSE(PathExists(absl::StrCat(path, ".tmp-", ::getpid())));
}

TEST(TokenShardTest, EmptyShardRoundTrips) {
  const std::string path = JoinPath(MakeDir(), "heldout-00000.tok");
  ASSERT_TRUE(WriteTokenShard(path, {}, kVocab, kEos).ok());
  absl::StatusOr<std::unique_ptr<TokenShard>> shard = TokenShard::Open(path);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_TRUE((*shard)->tokens().empty());
  EXPECT_EQ((*shard)->header().num_documents, 0u);
}

TEST(TokenShardTest, WriterRejectsBadTokens) {
  const std::string path = JoinPath(MakeDir(), "bad.tok");
  std::vector<uint32_t> tokens = {1, 2, kVocab, kEos};
  absl::Status s = WriteTokenShard(path, tokens, kVocab, kEos);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("token 2 has id 1000 >= vocab size 1000"));

  s = WriteTokenShard(path, {1, 2, 3}, kVocab, kEos);  // last document not terminated
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("not terminated"));
  EXPECT_FALSE(PathExists(path));
}

// Each malformed variant of a valid shard fails to open with a message naming the file and the fault.
class MalformedShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = JoinPath(MakeDir(), "train-00000.tok");
    ASSERT_TRUE(WriteTokenShard(path_, RandomDocuments(10, 7), kVocab, kEos).ok());
    good_ = ReadBytes(path_);
  }
  void ExpectOpenFails(const std::string& bytes, const std::string& fault, TokenShardOpenOptions options = {}) {
    WriteBytes(path_, bytes);
    absl::StatusOr<std::unique_ptr<TokenShard>> shard = TokenShard::Open(path_, options);
    ASSERT_FALSE(shard.ok()) << "expected an error containing '" << fault << "'";
    EXPECT_THAT(shard.status().message(), HasSubstr(path_));
    EXPECT_THAT(shard.status().message(), HasSubstr(fault));
  }
  std::string path_;
  std::string good_;
};

TEST_F(MalformedShardTest, GoodFileOpens) {
  WriteBytes(path_, good_);
  EXPECT_TRUE(TokenShard::Open(path_).ok());
}

TEST_F(MalformedShardTest, TruncatedHeader) { ExpectOpenFails(good_.substr(0, 20), "truncated"); }

TEST_F(MalformedShardTest, TruncatedPayload) { ExpectOpenFails(good_.substr(0, good_.size() - 8), "truncated"); }

TEST_F(MalformedShardTest, PartialToken) { ExpectOpenFails(good_.substr(0, good_.size() - 1), "truncated"); }

TEST_F(MalformedShardTest, TrailingBytes) { ExpectOpenFails(good_ + std::string(8, '\0'), "size mismatch"); }

TEST_F(MalformedShardTest, BadMagic) {
  std::string bytes = good_;
  bytes[0] = 'X';
  ExpectOpenFails(bytes, "bad magic");
}

TEST_F(MalformedShardTest, UnsupportedVersion) {
  std::string bytes = good_;
  PutU32(&bytes, 8, 2);
  ExpectOpenFails(bytes, "unsupported version 2");
}

TEST_F(MalformedShardTest, TokenCountMismatch) {
  std::string bytes = good_;
  PutU64(&bytes, 16, (good_.size() - kTokenShardHeaderBytes) / 4 + 1);
  ExpectOpenFails(bytes, "header says");
}

TEST_F(MalformedShardTest, ChecksumMismatch) {
  std::string bytes = good_;
  bytes[kTokenShardHeaderBytes + 5] ^= 0x01;  // a bit flip inside the payload
  ExpectOpenFails(bytes, "checksum mismatch");
}

TEST_F(MalformedShardTest, TokenIdOutOfVocabulary) {
  std::string bytes = good_;
  PutU32(&bytes, kTokenShardHeaderBytes + 4 * 3, kVocab + 5);
  PutU64(&bytes, 32, PayloadHash(bytes));  // a consistent checksum: only the id check can catch it
  ExpectOpenFails(bytes, "token 3 has id 1005 >= vocab size 1000");
}

TEST_F(MalformedShardTest, DocumentCountMismatch) {
  std::string bytes = good_;
  PutU64(&bytes, 24, 11);
  ExpectOpenFails(bytes, "document count mismatch");
}

TEST_F(MalformedShardTest, UnterminatedLastDocument) {
  std::string bytes = good_;
  PutU32(&bytes, bytes.size() - 4, 5);  // the final EOS becomes an ordinary token
  PutU64(&bytes, 24, 9);
  PutU64(&bytes, 32, PayloadHash(bytes));
  ExpectOpenFails(bytes, "not terminated");
}

TEST_F(MalformedShardTest, VocabDiffersFromManifest) {
  TokenShardOpenOptions options;
  options.expected_vocab_size = 128256;
  ExpectOpenFails(good_, "vocab size 1000, expected 128256", options);
}

TEST(TokenShardTest, MissingFileIsNotFound) {
  const std::string path = JoinPath(MakeDir(), "absent.tok");
  absl::StatusOr<std::unique_ptr<TokenShard>> shard = TokenShard::Open(path);
  ASSERT_FALSE(shard.ok());
  EXPECT_EQ(shard.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(shard.status().message(), HasSubstr(path));
}

ShardSetManifest WriteShardSet(const std::string& dir, const std::vector<std::vector<uint32_t>>& train_shards) {
  ShardSetManifest m;
  m.tokenizer_path = "/models/tokenizer.json";
  m.tokenizer_hash = 0x0123456789abcdefULL;
  m.vocab_size = kVocab;
  m.eos_id = kEos;
  m.source_files = {"a.txt", "b.txt"};
  m.input_format = "text";
  m.heldout_fraction = 0.25;
  m.seed = 42;
  m.split_rule = "test rule";
  SplitInfo& split = m.splits["train"];
  for (size_t i = 0; i < train_shards.size(); ++i) {
    ShardEntry e;
    e.file = absl::StrCat("train-0000", i, ".tok");
    EXPECT_TRUE(WriteTokenShard(JoinPath(dir, e.file), train_shards[i], kVocab, kEos).ok());
    e.num_tokens = train_shards[i].size();
    for (uint32_t t : train_shards[i]) e.num_documents += t == kEos;
    e.payload_hash = Fnv1a64(absl::string_view(reinterpret_cast<const char*>(train_shards[i].data()),
                                               train_shards[i].size() * 4));
    split.num_tokens += e.num_tokens;
    split.num_documents += e.num_documents;
    split.shards.push_back(e);
  }
  m.splits["heldout"];  // an empty split
  EXPECT_TRUE(WriteShardSetManifest(dir, m).ok());
  return m;
}

TEST(ShardSetTest, ManifestRoundTripAndOpenSplit) {
  const std::string dir = MakeDir();
  const std::vector<std::vector<uint32_t>> shards = {RandomDocuments(5, 1), RandomDocuments(3, 2)};
  const ShardSetManifest written = WriteShardSet(dir, shards);

  absl::StatusOr<ShardSetManifest> read = ReadShardSetManifest(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->ToJson(), written.ToJson());
  EXPECT_EQ(read->tokenizer_hash, 0x0123456789abcdefULL);
  EXPECT_EQ(read->seed, 42u);
  EXPECT_EQ(read->splits.at("train").num_documents, 8u);

  absl::StatusOr<std::vector<std::unique_ptr<TokenShard>>> train = OpenSplit(dir, *read, "train");
  ASSERT_TRUE(train.ok()) << train.status();
  ASSERT_EQ(train->size(), 2u);
  EXPECT_THAT((*train)[1]->tokens(), ElementsAreArray(shards[1]));
  EXPECT_EQ(OpenSplit(dir, *read, "validation").status().code(), absl::StatusCode::kNotFound);
}

TEST(ShardSetTest, ShardThatDisagreesWithManifestFails) {
  const std::string dir = MakeDir();
  const ShardSetManifest m = WriteShardSet(dir, {RandomDocuments(5, 1), RandomDocuments(3, 2)});
  // Replace shard 1 with another valid shard: only the manifest can tell.
  ASSERT_TRUE(WriteTokenShard(JoinPath(dir, "train-00001.tok"), RandomDocuments(3, 3), kVocab, kEos).ok());
  absl::StatusOr<std::vector<std::unique_ptr<TokenShard>>> train = OpenSplit(dir, m, "train");
  ASSERT_FALSE(train.ok());
  EXPECT_THAT(train.status().message(), HasSubstr(JoinPath(dir, "train-00001.tok")));
  EXPECT_THAT(train.status().message(), HasSubstr("does not match manifest.json"));
}

TEST(ShardSetTest, BadManifestNamesFileAndField) {
  const std::string dir = MakeDir();
  const ShardSetManifest m = WriteShardSet(dir, {RandomDocuments(5, 1)});
  nlohmann::json json = m.ToJson();
  json.erase("eos_id");
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kShardSetManifestName), json.dump()).ok());
  absl::StatusOr<ShardSetManifest> read = ReadShardSetManifest(dir);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr(JoinPath(dir, "manifest.json")));
  EXPECT_THAT(read.status().message(), HasSubstr("eos_id"));

  json = m.ToJson();
  json["splits"]["train"]["num_tokens"] = 1;  // disagrees with the sum over shards
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kShardSetManifestName), json.dump()).ok());
  read = ReadShardSetManifest(dir);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("shards sum to"));

  // Counts that would wrap the sums around: refused by the per-split bound, naming the shard.
  json = m.ToJson();
  json["splits"]["train"]["shards"][0]["num_tokens"] = uint64_t{1} << 63;
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kShardSetManifestName), json.dump()).ok());
  EXPECT_THAT(ReadShardSetManifest(dir).status().message(), HasSubstr("splits.train.shards[0] claims 9223372036854775808"));

  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kShardSetManifestName), "{not json").ok());
  EXPECT_THAT(ReadShardSetManifest(dir).status().message(), HasSubstr("not valid JSON"));
}

TEST(TokenShardTest, LossMaskRoundTripsInTheHighBit) {
  const std::vector<uint32_t> tokens = RandomDocuments(6, 7);
  std::vector<uint8_t> mask(tokens.size());
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i % 3) != 0;
  const std::string path = TestPath("masked.tok");
  ASSERT_TRUE(WriteTokenShard(path, tokens, mask, kVocab, kEos).ok());
  absl::StatusOr<std::unique_ptr<TokenShard>> shard = TokenShard::Open(path);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_TRUE((*shard)->has_loss_mask());
  EXPECT_EQ((*shard)->header().dtype, kTokenShardDtypeUint32Masked);
  EXPECT_EQ((*shard)->header().num_documents, 6u);
  const absl::Span<const uint32_t> words = (*shard)->tokens();
  ASSERT_EQ(words.size(), tokens.size());
  for (size_t i = 0; i < words.size(); ++i) {
    EXPECT_EQ(words[i] & kTokenIdMask, tokens[i]);
    EXPECT_EQ((words[i] & kTokenNoLossBit) == 0, mask[i] != 0) << "token " << i;
  }
  // An unmasked shard of the same tokens is dtype 1 and has no flagged word.
  const std::string plain = TestPath("plain.tok");
  ASSERT_TRUE(WriteTokenShard(plain, tokens, kVocab, kEos).ok());
  shard = TokenShard::Open(plain);
  ASSERT_TRUE(shard.ok());
  EXPECT_FALSE((*shard)->has_loss_mask());
  EXPECT_THAT((*shard)->tokens(), ElementsAreArray(tokens));

  EXPECT_THAT(WriteTokenShard(path, tokens, absl::MakeConstSpan(mask).subspan(1), kVocab, kEos).message(),
              HasSubstr("loss mask entries"));
}

TEST(TokenShardTest, FlaggedWordInAnUnmaskedShardIsAnOutOfRangeId) {
  // A dtype-1 shard whose payload holds a flagged word (e.g. written by a bad tool) is refused.
  std::vector<uint32_t> words = {5, 6 | kTokenNoLossBit, kEos};
  std::string bytes = std::string(kTokenShardHeaderBytes, '\0') +
                      std::string(reinterpret_cast<const char*>(words.data()), words.size() * 4);
  std::memcpy(&bytes[0], kTokenShardMagic, 8);
  PutU32(&bytes, 8, kTokenShardVersion);
  PutU32(&bytes, 12, kTokenShardDtypeUint32);
  PutU64(&bytes, 16, words.size());
  PutU64(&bytes, 24, 1);
  PutU64(&bytes, 32, PayloadHash(bytes));
  PutU32(&bytes, 40, kVocab);
  PutU32(&bytes, 44, kEos);
  const std::string path = TestPath("flagged.tok");
  WriteBytes(path, bytes);
  EXPECT_THAT(TokenShard::Open(path).status().message(), HasSubstr(">= vocab size"));
  // The same words declared as dtype 2 are a valid masked shard.
  PutU32(&bytes, 12, kTokenShardDtypeUint32Masked);
  WriteBytes(path, bytes);
  EXPECT_TRUE(TokenShard::Open(path).ok());
}

TEST(ShardSetTest, LossMaskFlagMustMatchTheShards) {
  const std::string dir = MakeDir();
  ShardSetManifest m = WriteShardSet(dir, {RandomDocuments(5, 1)});
  EXPECT_FALSE(m.loss_mask);
  m.loss_mask = true;  // the shard has no mask
  ASSERT_TRUE(WriteShardSetManifest(dir, m).ok());
  absl::StatusOr<ShardSetManifest> read = ReadShardSetManifest(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->loss_mask);
  absl::StatusOr<std::vector<std::unique_ptr<TokenShard>>> train = OpenSplit(dir, *read, "train");
  ASSERT_FALSE(train.ok());
  EXPECT_THAT(train.status().message(), HasSubstr("lacks a loss mask but manifest.json says loss_mask: true"));

  // A manifest from before loss masks (no field) reads as unmasked.
  nlohmann::json json = m.ToJson();
  json.erase("loss_mask");
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kShardSetManifestName), json.dump()).ok());
  read = ReadShardSetManifest(dir);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE(read->loss_mask);
  EXPECT_TRUE(OpenSplit(dir, *read, "train").ok());
  json["loss_mask"] = "yes";
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kShardSetManifestName), json.dump()).ok());
  EXPECT_THAT(ReadShardSetManifest(dir).status().message(), HasSubstr("'loss_mask' is not a boolean"));
}

}  // namespace
}  // namespace llama_moe
