#include "moe/moe_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

using ::testing::HasSubstr;

LlamaConfig Dense() {
  LlamaConfig cfg;
  cfg.intermediate_size = 128;
  return cfg;
}

MoeConfig Moe() {
  MoeConfig m;
  m.num_frozen_experts = 4;
  m.num_learned_experts = 2;
  m.expert_intermediate_size = 32;
  m.top_k = 3;
  m.score_function = ScoreFunction::kSigmoid;
  m.normalize_gates = false;
  m.gate_scale = 2.0;
  m.bias_update_rate = 0.01;
  return m;
}

TEST(MoeConfigTest, RoundTripsThroughConfigJsonWithItsOwnLabels) {
  LlamaConfig cfg = Dense();
  SetMoeConfig(Moe(), &cfg);
  // Parsed back from the JSON text the converter writes.
  absl::StatusOr<LlamaConfig> reread = ParseLlamaConfig(LlamaConfigToJson(cfg), "config.json");
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_EQ(reread->model_type, kMoeModelType);
  const nlohmann::json j = nlohmann::json::parse(LlamaConfigToJson(cfg));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({kMoeArchitecture}));
  absl::StatusOr<std::optional<MoeConfig>> m = MoeConfigFromLlama(*reread);
  ASSERT_TRUE(m.ok() && m->has_value()) << m.status();
  const MoeConfig& got = **m;
  EXPECT_EQ(got.num_frozen_experts, 4);
  EXPECT_EQ(got.num_learned_experts, 2);
  EXPECT_EQ(got.expert_intermediate_size, 32);
  EXPECT_EQ(got.top_k, 3);
  EXPECT_EQ(got.score_function, ScoreFunction::kSigmoid);
  EXPECT_FALSE(got.normalize_gates);
  EXPECT_EQ(got.gate_scale, 2.0);
  EXPECT_EQ(got.bias_update_rate, 0.01);
}

TEST(MoeConfigTest, DenseAndOlderDirectoriesStillRead) {
  // A dense config has no block.
  absl::StatusOr<std::optional<MoeConfig>> dense = MoeConfigFromLlama(Dense());
  ASSERT_TRUE(dense.ok());
  EXPECT_FALSE(dense->has_value());
  // A directory converted before the labels existed: model_type "llama" with a "moe" block.
  LlamaConfig old = Dense();
  SetMoeConfig(Moe(), &old);
  old.model_type = "llama";
  absl::StatusOr<std::optional<MoeConfig>> m = MoeConfigFromLlama(old);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->has_value());
}

TEST(MoeConfigTest, BadBlocksAreNamed) {
  LlamaConfig no_block = Dense();
  no_block.model_type = kMoeModelType;
  EXPECT_NE(std::string(MoeConfigFromLlama(no_block).status().message()).find("no 'moe' block"), std::string::npos);

  LlamaConfig bad_fn = Dense();
  SetMoeConfig(Moe(), &bad_fn);
  nlohmann::json extra = nlohmann::json::parse(bad_fn.extra_json);
  extra["moe"]["score_function"] = "relu";
  bad_fn.extra_json = extra.dump();
  EXPECT_NE(std::string(MoeConfigFromLlama(bad_fn).status().message()).find("'relu' is not softmax or sigmoid"),
            std::string::npos);

  LlamaConfig float_count = Dense();
  SetMoeConfig(Moe(), &float_count);
  extra = nlohmann::json::parse(float_count.extra_json);
  extra["moe"]["num_learned_experts"] = 1e300;  // would overflow an int64 conversion
  float_count.extra_json = extra.dump();
  EXPECT_NE(std::string(MoeConfigFromLlama(float_count).status().message())
                .find("'moe.num_learned_experts' must be an integer, got 1e+300"),
            std::string::npos);

  MoeConfig uncovered = Moe();
  uncovered.expert_intermediate_size = 16;  // 4 x 16 != 128
  EXPECT_FALSE(ValidateMoeConfig(uncovered, Dense()).ok());
  MoeConfig too_many = Moe();
  too_many.top_k = 7;  // of 6 experts
  EXPECT_FALSE(ValidateMoeConfig(too_many, Dense()).ok());
}

TEST(MoeConfigTest, HostileSizesAreRefusedBeforeTheyOverflow) {
  MoeConfig overflow = Moe();
  overflow.num_frozen_experts = int64_t{1} << 40;  // x expert_intermediate_size would overflow int64
  overflow.expert_intermediate_size = int64_t{1} << 40;
  EXPECT_THAT(std::string(ValidateMoeConfig(overflow, Dense()).message()),
              HasSubstr("must each be at most intermediate_size 128"));
  MoeConfig huge = Moe();
  huge.num_learned_experts = kMaxLearnedExperts + 1;
  EXPECT_THAT(std::string(ValidateMoeConfig(huge, Dense()).message()),
              HasSubstr("num_learned_experts 4097 is above the limit of 4096"));
}

TEST(MoeConfigTest, MixtralReadsAsAnAllFrozenMoe) {
  LlamaConfig cfg = Dense();
  cfg.model_type = kMixtralModelType;
  cfg.intermediate_size = 32;  // one expert's width
  cfg.extra_json = R"({"num_local_experts": 4, "num_experts_per_tok": 2})";
  absl::StatusOr<MoeConfig> m = MoeConfigFromMixtral(&cfg);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->num_frozen_experts, 4);
  EXPECT_EQ(m->num_learned_experts, 0);
  EXPECT_EQ(m->expert_intermediate_size, 32);
  EXPECT_EQ(m->top_k, 2);
  EXPECT_EQ(m->gate_scale, 1.0);
  EXPECT_EQ(cfg.intermediate_size, 128);

  LlamaConfig missing = Dense();
  missing.extra_json = R"({"num_local_experts": 4})";
  EXPECT_THAT(std::string(MoeConfigFromMixtral(&missing).status().message()),
              HasSubstr("needs an integer 'num_experts_per_tok'"));
  LlamaConfig none = Dense();
  none.extra_json = R"({"num_local_experts": 0, "num_experts_per_tok": 1})";
  EXPECT_THAT(std::string(MoeConfigFromMixtral(&none).status().message()), HasSubstr("outside [1, 4096]"));
  LlamaConfig floaty = Dense();
  floaty.extra_json = R"({"num_local_experts": 1e300, "num_experts_per_tok": 1})";
  EXPECT_THAT(std::string(MoeConfigFromMixtral(&floaty).status().message()),
              HasSubstr("needs an integer 'num_local_experts'"));
  LlamaConfig too_many = Dense();
  too_many.extra_json = R"({"num_local_experts": 2, "num_experts_per_tok": 3})";
  EXPECT_FALSE(MoeConfigFromMixtral(&too_many).ok());
}

}  // namespace
}  // namespace llama_moe
