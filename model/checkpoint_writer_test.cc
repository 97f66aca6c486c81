#include "model/checkpoint_writer.h"

#include <ATen/ATen.h>
#include <dirent.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/test_util.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

std::vector<TensorSpec> Specs(int n, int64_t rows) {
  std::vector<TensorSpec> specs;
  for (int i = 0; i < n; ++i) specs.push_back({"t" + std::to_string(i), DType::kF32, {rows, 4}});
  return specs;
}

// Names in the parent directory of `dir` that start with its base name (temp leftovers).
std::vector<std::string> Siblings(const std::string& dir) {
  const std::string parent = dir.substr(0, dir.find_last_of('/'));
  const std::string base = dir.substr(dir.find_last_of('/') + 1);
  std::vector<std::string> out;
  DIR* d = ::opendir(parent.c_str());
  while (dirent* e = ::readdir(d)) {
    if (std::string(e->d_name).rfind(base, 0) == 0) out.push_back(e->d_name);
  }
  ::closedir(d);
  return out;
}

TEST(CheckpointWriterTest, ShardsBySizeAndTensorsReadBackInAnyWriteOrder) {
  const std::string dir = TestPath("sharded");
  ModelWriterOptions o;
  o.max_shard_bytes = 2 * 10 * 4 * 4;  // two tensors per shard
  const auto specs = Specs(5, 10);
  auto w = CheckpointWriter::Create(dir, specs, o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->num_weight_files(), 3);
  std::vector<at::Tensor> values;
  for (int i = 0; i < 5; ++i) values.push_back(at::randn({10, 4}));
  for (int i = 4; i >= 0; --i) ASSERT_TRUE((*w)->Write("t" + std::to_string(i), values[i]).ok());
  EXPECT_FALSE(PathExists(dir)) << "nothing is published before Commit";
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE(PathExists(JoinPath(dir, "model-00003-of-00003.safetensors")));
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->shards().size(), 3u);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(at::equal(*(*ckpt)->Get("t" + std::to_string(i)), values[i]));
  EXPECT_EQ(Siblings(dir), std::vector<std::string>{dir.substr(dir.find_last_of('/') + 1)});
}

TEST(CheckpointWriterTest, NumShardsSplitsEvenly) {
  const std::string dir = TestPath("even");
  ModelWriterOptions o;
  o.num_shards = 4;
  auto w = CheckpointWriter::Create(dir, Specs(8, 3), o);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ((*w)->num_weight_files(), 4);
}

TEST(CheckpointWriterTest, RejectsWrongDtypeShapeUndeclaredAndDuplicate) {
  const std::string dir = TestPath("reject");
  auto w = CheckpointWriter::Create(dir, Specs(1, 2), {});
  ASSERT_TRUE(w.ok());
  absl::Status s = (*w)->Write("t0", at::randn({3, 4}));
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 't0' is F32 [3,4], declared as F32 [2,4]"));
  s = (*w)->Write("t0", at::randn({2, 4}).to(at::kBFloat16));
  EXPECT_THAT(std::string(s.message()), HasSubstr("BF16"));
  EXPECT_THAT(std::string((*w)->Write("nope", at::randn({2, 4})).message()), HasSubstr("not declared"));
  EXPECT_FALSE(CheckpointWriter::Create(TestPath("dup"), {{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}, {}).ok());
}

TEST(CheckpointWriterTest, NonContiguousInputIsWrittenByValue) {
  const std::string dir = TestPath("noncontig");
  at::Tensor base = at::randn({4, 6});
  at::Tensor view = base.t();  // [6,4], not contiguous
  auto w = CheckpointWriter::Create(dir, {{"v", DType::kF32, {6, 4}}}, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write("v", view).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  EXPECT_TRUE(at::equal(*(*ckpt)->Get("v"), view));
}

TEST(CheckpointWriterTest, FailedOrAbandonedWriteLeavesNothing) {
  const std::string dir = TestPath("abandoned");
  {
    auto w = CheckpointWriter::Create(dir, Specs(2, 2), {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write("t0", at::randn({2, 4})).ok());
    absl::Status s = (*w)->Commit();  // t1 missing
    EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 't1' was declared but never written"));
  }
  EXPECT_FALSE(PathExists(dir));
  EXPECT_TRUE(Siblings(dir).empty()) << "temporary directory left behind";
}

TEST(CheckpointWriterTest, ExistingDirectoryIsKeptUnlessOverwrite) {
  const std::string dir = TestPath("exists");
  {
    auto w = CheckpointWriter::Create(dir, Specs(1, 2), {});
    ASSERT_TRUE((*w)->Write("t0", at::ones({2, 4})).ok());
    ASSERT_TRUE((*w)->Commit().ok());
  }
  EXPECT_EQ(CheckpointWriter::Create(dir, Specs(1, 2), {}).status().code(), absl::StatusCode::kAlreadyExists);
  ModelWriterOptions o;
  o.overwrite = true;
  {
    // Abandoned overwrite: the old checkpoint survives untouched.
    auto w = CheckpointWriter::Create(dir, Specs(1, 2), o);
    ASSERT_TRUE(w.ok());
  }
  EXPECT_TRUE(at::equal(*(*Checkpoint::Open(dir))->Get("t0"), at::ones({2, 4})));
  auto w = CheckpointWriter::Create(dir, Specs(1, 2), o);
  ASSERT_TRUE((*w)->Write("t0", at::zeros({2, 4})).ok());
  ASSERT_TRUE((*w)->AddFile("note.txt", "hello").ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE(at::equal(*(*Checkpoint::Open(dir))->Get("t0"), at::zeros({2, 4})));
  EXPECT_EQ(*ReadFileToString(JoinPath(dir, "note.txt")), "hello");
  EXPECT_EQ(Siblings(dir).size(), 1u);
}

}  // namespace
}  // namespace llama_moe
