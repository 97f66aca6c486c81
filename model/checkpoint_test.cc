#include "model/checkpoint.h"

#include <ATen/ATen.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/test_util.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

// Three tensors in three shards.
std::string WriteSharded() {
  const std::string dir = TestPath("ckpt");
  ModelWriterOptions o;
  o.num_shards = 3;
  auto w = CheckpointWriter::Create(
      dir, {{"a", DType::kF32, {4}}, {"b", DType::kF32, {4}}, {"c", DType::kBF16, {2, 2}}}, o);
  EXPECT_TRUE(w.ok());
  EXPECT_TRUE((*w)->Write("a", at::full({4}, 1.0f)).ok());
  EXPECT_TRUE((*w)->Write("b", at::full({4}, 2.0f)).ok());
  EXPECT_TRUE((*w)->Write("c", at::full({2, 2}, 3.0f).to(at::kBFloat16)).ok());
  EXPECT_TRUE((*w)->Commit().ok());
  return dir;
}

std::string Message(const std::string& dir) {
  auto c = Checkpoint::Open(dir);
  return c.ok() ? "OK" : std::string(c.status().message());
}

TEST(CheckpointTest, OpensShardedDirectoryLazily) {
  const std::string dir = WriteSharded();
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->TensorNames(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ((*c)->shards().size(), 3u);
  EXPECT_TRUE((*c)->Has("b"));
  EXPECT_FALSE((*c)->Has("z"));
  EXPECT_EQ((*c)->total_bytes(), 4u * 4 + 4 * 4 + 4 * 2);
  EXPECT_EQ((*c)->Get("c")->scalar_type(), at::kBFloat16);
  EXPECT_FLOAT_EQ((*c)->Get("b")->sum().item<float>(), 8.0f);
  EXPECT_THAT(std::string((*c)->Get("z").status().message()), HasSubstr("no tensor 'z'"));
}

TEST(CheckpointTest, MissingShardNamesIndexTensorAndShard) {
  const std::string dir = WriteSharded();
  ASSERT_TRUE(RemoveAll(JoinPath(dir, "model-00002-of-00003.safetensors")).ok());
  const std::string m = Message(dir);
  EXPECT_THAT(m, HasSubstr("model.safetensors.index.json"));
  EXPECT_THAT(m, HasSubstr("tensor 'b'"));
  EXPECT_THAT(m, HasSubstr("model-00002-of-00003.safetensors"));
  EXPECT_THAT(m, HasSubstr("does not exist"));
}

TEST(CheckpointTest, IndexNamingTensorAbsentFromShard) {
  const std::string dir = WriteSharded();
  std::string index = *ReadFileToString(JoinPath(dir, kIndexFile));
  index.replace(index.find("\"b\""), 3, "\"q\"");
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kIndexFile), index).ok());
  const std::string m = Message(dir);
  EXPECT_THAT(m, HasSubstr("tensor 'q'"));
  EXPECT_THAT(m, HasSubstr("does not hold it"));
}

TEST(CheckpointTest, BadIndexFiles) {
  const std::string dir = WriteSharded();
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kIndexFile), "{\"weight_map\": [").ok());
  EXPECT_THAT(Message(dir), HasSubstr("not valid JSON"));
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kIndexFile), "{\"metadata\": {}}").ok());
  EXPECT_THAT(Message(dir), HasSubstr("no \"weight_map\""));
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, kIndexFile), R"({"weight_map": {"a": "../x"}})").ok());
  EXPECT_THAT(Message(dir), HasSubstr("invalid shard name '../x'"));
}

TEST(CheckpointTest, EmptyOrMissingDirectory) {
  EXPECT_THAT(Message("/nonexistent/model"), HasSubstr("does not exist"));
  const std::string dir = TestPath("empty");
  ASSERT_EQ(::system(("mkdir -p " + dir).c_str()), 0);
  EXPECT_THAT(Message(dir), HasSubstr("has neither model.safetensors nor model.safetensors.index.json"));
}

}  // namespace
}  // namespace llama_moe
