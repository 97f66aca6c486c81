#include "model/llama_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

// config.json of Meta-Llama-3.1-8B-Instruct as published on the Hugging Face hub.
constexpr char kLlama31_8B[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
})";

TEST(LlamaConfigTest, ParsesLlama31_8B) {
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(kLlama31_8B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 128);  // derived
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_THAT(c->extra_json, HasSubstr("transformers_version"));
}

TEST(LlamaConfigTest, RoundTripKeepsEveryField) {
  absl::StatusOr<LlamaConfig> a = ParseLlamaConfig(kLlama31_8B, "a");
  ASSERT_TRUE(a.ok());
  const std::string text = LlamaConfigToJson(*a);
  EXPECT_THAT(text, HasSubstr("\"pretraining_tp\": 1"));
  absl::StatusOr<LlamaConfig> b = ParseLlamaConfig(text, "b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(LlamaConfigToJson(*b), text);
  EXPECT_EQ(b->eos_token_ids, a->eos_token_ids);
  EXPECT_EQ(b->extra_json, a->extra_json);
}

TEST(LlamaConfigTest, DefaultsAndAlternativeSpellings) {
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(
      R"({"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 4, "eos_token_id": 7, "bos_token_id": 6, "dtype": "float32",
          "rope_scaling": null, "tie_word_embeddings": true})",
      "c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 4);  // MHA when absent
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{7});
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_FALSE(c->rope_scaling.has_value());
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
}

TEST(LlamaConfigTest, RejectsImpossibleOrUnsupportedConfigs) {
  const std::string base =
      R"("vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "bos_token_id": 1, "eos_token_id": 2)";
  const std::pair<std::string, std::string> cases[] = {
      {"{" + base + R"(, "num_attention_heads": 4, "num_key_value_heads": 3})", "not a multiple of num_key_value_heads 3"},
      {"{" + base + R"(, "num_attention_heads": 0})", "num_attention_heads must be positive"},
      {"{" + base + R"(, "num_attention_heads": 4, "head_dim": 7})", "head_dim 7 must be even"},
      {"{" + base + R"(, "num_attention_heads": 4, "torch_dtype": "int8"})", "torch_dtype 'int8'"},
      {"{" + base + R"(, "num_attention_heads": 4, "hidden_act": "gelu"})", "hidden_act 'gelu'"},
      {"{" + base + R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 2}})", "only 'llama3'"},
      {"{" + base + R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8}})", "rope_scaling.low_freq_factor"},
      {"{" + base + R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1, "original_max_position_embeddings": 8192}})", "low_freq_factor < high_freq_factor"},
      {"{" + base + R"(, "num_attention_heads": "4"})", "field 'num_attention_heads' must be an integer"},
      {R"({"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4})", "field 'intermediate_size' is missing"},
      {R"({"vocab_size": 10, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "bos_token_id": 1, "eos_token_id": [2, 99]})", "eos_token_id 99 is outside"},
      {"{" + base + R"(, "num_attention_heads": 4, "head_dim": 8, "max_position_embeddings": 1e15})", "field 'max_position_embeddings' must be an integer"},
      {"{" + base + R"(, "num_attention_heads": 4, "max_position_embeddings": 1000000000000})", "max_position_embeddings 1000000000000 is above the limit of 67108864"},
      {R"({"vocab_size": 4611686018427387904, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "bos_token_id": 1, "eos_token_id": 2})", "vocab_size 4611686018427387904 is above the limit of 16777216"},
      {"[1]", "not a JSON object"},
      {"{", "not valid JSON"},
  };
  for (const auto& [text, expected] : cases) {
    absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(text, "bad/config.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("bad/config.json")) << text;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(expected)) << text;
  }
}

TEST(LlamaConfigTest, MissingFileNamesPath) {
  absl::StatusOr<LlamaConfig> c = LoadLlamaConfig("/nonexistent/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("/nonexistent/config.json"));
}

}  // namespace
}  // namespace llama_moe
