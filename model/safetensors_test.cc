#include "model/safetensors.h"

#include <ATen/ATen.h>

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/test_util.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

TEST(SafetensorsTest, ReadsEveryDTypeZeroCopy) {
  const std::string dir = TestPath("dtypes");
  at::manual_seed(1);
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 5})},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"bf16", at::randn({2, 3, 4}).to(at::kBFloat16)},
      {"i32", at::randint(-1000, 1000, {6}, at::kInt)},
      {"i64", at::randint(-100000, 100000, {2, 2}, at::kLong)},
      {"f64", at::randn({3}, at::kDouble)},
      {"u8", at::randint(0, 255, {5}, at::kByte)},
  };
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    specs.push_back({name, *FromScalarType(t.scalar_type()), t.sizes().vec()});
  }
  auto w = CheckpointWriter::Create(dir, specs, {});
  ASSERT_TRUE(w.ok()) << w.status();
  for (const auto& [name, t] : tensors) ASSERT_TRUE((*w)->Write(name, t).ok());
  ASSERT_TRUE((*w)->Commit().ok());

  auto f = SafetensorsFile::Open(JoinPath(dir, "model.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  for (const auto& [name, t] : tensors) {
    absl::StatusOr<at::Tensor> got = (*f)->Get(name);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(*got, t)) << name;
    // Zero-copy: the tensor's storage is the mapped file.
    EXPECT_EQ(got->data_ptr(), static_cast<const void*>((*f)->Data(*(*f)->Find(name)))) << name;
  }
  EXPECT_EQ((*f)->Get("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string((*f)->Get("missing").status().message()), HasSubstr("no tensor 'missing'"));
}

TEST(SafetensorsTest, TensorOutlivesFileAndWritesStayPrivate) {
  const std::string dir = TestPath("private");
  at::Tensor src = at::arange(16, at::kFloat);
  auto w = CheckpointWriter::Create(dir, {{"x", DType::kF32, {16}}}, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write("x", src).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  const std::string path = JoinPath(dir, "model.safetensors");
  const std::string before = *ReadFileToString(path);
  at::Tensor t;
  {
    auto f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok());
    t = *(*f)->Get("x");
  }  // the file object is gone; the tensor keeps the mapping alive
  EXPECT_TRUE(at::equal(t, src));
  t.mul_(2);  // copy-on-write page: the file must not change
  EXPECT_EQ(*ReadFileToString(path), before);
}

TEST(SafetensorsTest, MisalignedDataIsCopied) {
  // A header padded to an odd length puts F32 data at an odd address; the reader must copy.
  const std::string dir = TestPath("misaligned");
  ASSERT_EQ(::system(("mkdir -p " + dir).c_str()), 0);
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while ((8 + header.size()) % 4 != 1) header.push_back(' ');
  std::string img(8, '\0');
  uint64_t n = header.size();
  std::memcpy(&img[0], &n, 8);
  float vals[2] = {1.5f, -2.25f};
  img += header + std::string(reinterpret_cast<const char*>(vals), 8);
  const std::string path = JoinPath(dir, "m.safetensors");
  ASSERT_TRUE(WriteStringToFile(path, img).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  at::Tensor t = *(*f)->Get("x");
  EXPECT_NE(t.data_ptr(), static_cast<const void*>((*f)->Data(*(*f)->Find("x"))));
  EXPECT_FLOAT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(t[1].item<float>(), -2.25f);
}

TEST(SafetensorsTest, OpenErrorsNameTheFile) {
  auto missing = SafetensorsFile::Open("/nonexistent/x.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/x.safetensors"));
  const std::string dir = TestPath("empty");
  ASSERT_EQ(::system(("mkdir -p " + dir).c_str()), 0);
  const std::string path = JoinPath(dir, "empty.safetensors");
  ASSERT_TRUE(WriteStringToFile(path, "").ok());
  auto empty = SafetensorsFile::Open(path);
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("empty.safetensors"));
}

}  // namespace
}  // namespace llama_moe
