#include "model/safetensors_header.h"

#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

// A file image: 8-byte length, header JSON, `data_bytes` bytes of data.
std::string Image(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(&out[0], &n, 8);
  return out + header + std::string(data_bytes, '\x01');
}

absl::StatusOr<SafetensorsHeader> Parse(const std::string& image) {
  return ParseSafetensorsPrefix(reinterpret_cast<const uint8_t*>(image.data()), image.size(), "f.safetensors");
}

TEST(SafetensorsHeaderTest, ParsesValidHeaderSortedByOffset) {
  const std::string img = Image(
      R"({"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},)"
      R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"__metadata__":{"format":"pt"}})",
      28);
  absl::StatusOr<SafetensorsHeader> h = Parse(img);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[1].name, "b");
  EXPECT_EQ(h->tensors[1].dtype, DType::kBF16);
  EXPECT_EQ(h->tensors[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->data_size, 28u);
  EXPECT_EQ(h->data_start, img.size() - 28);
}

TEST(SafetensorsHeaderTest, AllDTypesRoundTripThroughNames) {
  for (const char* name : {"BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64"}) {
    absl::StatusOr<DType> d = ParseDType(name);
    ASSERT_TRUE(d.ok()) << name;
    EXPECT_EQ(DTypeName(*d), name);
  }
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_FALSE(ParseDType("F8_E4M3").ok());
}

TEST(SafetensorsHeaderTest, EmptyTensorAndEmptyFileAreValid) {
  EXPECT_TRUE(Parse(Image(R"({"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]}})", 0)).ok());
  EXPECT_TRUE(Parse(Image("{}", 0)).ok());
}

struct BadCase {
  const char* label;
  std::string image;
  std::vector<std::string> expected;  // substrings of the error message
};

TEST(SafetensorsHeaderTest, RejectsMalformedHeadersWithFileAndTensorNames) {
  std::string huge(8, '\xff');
  const BadCase cases[] = {
      {"short", "abc", {"f.safetensors", "fewer than the 8-byte"}},
      {"len past end", Image("{}", 0).substr(0, 8) + "{", {"runs past the end of the file"}},
      {"huge len", huge + "{}", {"exceeds the limit"}},
      {"not json", Image("{nope", 0), {"not valid JSON"}},
      {"not object", Image("[1,2]", 0), {"not a JSON object"}},
      {"dup", Image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       {"tensor 'w'", "appears twice"}},
      {"bad dtype", Image(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", 4), {"tensor 'w'", "unsupported dtype 'Q4'"}},
      {"neg dim", Image(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), {"tensor 'w'", "non-negative"}},
      {"float dim", Image(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), {"tensor 'w'"}},
      {"missing shape", Image(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4), {"tensor 'w'", "shape"}},
      {"extra field", Image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4), {"unknown field 'x'"}},
      {"reversed", Image(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), {"tensor 'w'", "reversed"}},
      {"past data", Image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), {"tensor 'w'", "run past the data section"}},
      {"byte count", Image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "holds 8 bytes", "[3]", "needs 12"}},
      {"overflow", Image(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "more than 2^64"}},
      {"overlap", Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       {"tensor 'b'", "overlap tensor 'a'"}},
      {"hole", Image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
       {"tensor 'b'", "hole of 4 bytes"}},
      {"trailing", Image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 9), {"trailing bytes"}},
      {"metadata", Image(R"({"__metadata__":{"k":1}})", 0), {"'__metadata__' value of 'k'"}},
  };
  for (const BadCase& c : cases) {
    absl::StatusOr<SafetensorsHeader> h = Parse(c.image);
    ASSERT_FALSE(h.ok()) << c.label;
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << c.label;
    EXPECT_THAT(std::string(h.status().message()), HasSubstr("f.safetensors")) << c.label;
    for (const std::string& e : c.expected) {
      EXPECT_THAT(std::string(h.status().message()), HasSubstr(e)) << c.label;
    }
  }
}

TEST(SafetensorsHeaderTest, BuiltHeaderParsesBackAndAlignsData) {
  std::vector<TensorEntry> tensors = {{"x", DType::kBF16, {3}}, {"y", DType::kI64, {2, 2}}};
  const std::string prefix = BuildSafetensorsHeader(&tensors, {{"format", "pt"}});
  EXPECT_EQ(prefix.size() % 8, 0u);
  EXPECT_EQ(tensors[1].begin, 6u);
  EXPECT_EQ(tensors[1].end, 38u);
  const std::string img = prefix + std::string(38, '\0');
  absl::StatusOr<SafetensorsHeader> h = Parse(img);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->data_start, prefix.size());
  EXPECT_EQ(h->tensors[1].shape, (std::vector<int64_t>{2, 2}));
}

}  // namespace
}  // namespace llama_moe
