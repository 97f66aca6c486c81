#include "model/tiny_llama.h"

#include <ATen/ATen.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/llama_layout.h"
#include "model/test_util.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

TEST(TinyLlamaTest, ShardedBf16CheckpointVerifiesAgainstItsConfig) {
  const std::string dir = TestPath("tiny");
  TinyLlamaOptions o;
  o.dtype = DType::kBF16;
  o.num_shards = 3;
  ASSERT_TRUE(WriteTinyLlama(dir, o).ok());
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->shards().size(), 3u);
  auto cfg = (*c)->LoadConfig();
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->torch_dtype, "bfloat16");
  EXPECT_TRUE(VerifyLlamaCheckpoint(**c, *cfg, /*read_data=*/true).ok());
  EXPECT_EQ((*c)->Get("model.layers.1.mlp.down_proj.weight")->scalar_type(), at::kBFloat16);
  EXPECT_TRUE(PathExists(JoinPath(dir, "generation_config.json")));
}

TEST(TinyLlamaTest, SameSeedSameBytesOtherSeedOtherBytes) {
  TinyLlamaOptions o;
  const std::string a = TestPath("a"), b = TestPath("b"), c = TestPath("c");
  ASSERT_TRUE(WriteTinyLlama(a, o).ok());
  ASSERT_TRUE(WriteTinyLlama(b, o).ok());
  o.seed = 1;
  ASSERT_TRUE(WriteTinyLlama(c, o).ok());
  const auto bytes = [](const std::string& d) { return *ReadFileToString(JoinPath(d, "model.safetensors")); };
  EXPECT_EQ(bytes(a), bytes(b));
  EXPECT_NE(bytes(a), bytes(c));
}

TEST(TinyLlamaTest, TiedHeadHasNoLmHeadAndVerifyCatchesShapeMismatch) {
  const std::string dir = TestPath("tied");
  TinyLlamaOptions o;
  o.config.tie_word_embeddings = true;
  ASSERT_TRUE(WriteTinyLlama(dir, o).ok());
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*c)->Has("lm_head.weight"));
  LlamaConfig wrong = *(*c)->LoadConfig();
  wrong.intermediate_size = 96;
  absl::Status s = VerifyLlamaCheckpoint(**c, wrong, false);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128,64], expected [96,64]"));
  wrong = *(*c)->LoadConfig();
  wrong.tie_word_embeddings = false;
  EXPECT_THAT(std::string(VerifyLlamaCheckpoint(**c, wrong, false).message()), HasSubstr("no tensor 'lm_head.weight'"));
}

TEST(TinyLlamaTest, InvalidShapesAreRejectedBeforeWriting) {
  const std::string dir = TestPath("invalid");
  TinyLlamaOptions o;
  o.config.num_key_value_heads = 3;
  absl::Status s = WriteTinyLlama(dir, o);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a multiple of num_key_value_heads"));
  EXPECT_FALSE(PathExists(dir));
}

}  // namespace
}  // namespace llama_moe
