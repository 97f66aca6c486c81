#include "train/train_config.h"

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

TrainConfig WithDirs(TrainConfig c) {
  c.set_model_dir("m");
  c.set_data_dir("d");
  c.set_output_dir("o");
  return c;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(TrainConfigTest, SyntaxErrorsNameTheSourceAndLine) {
  const absl::StatusOr<TrainConfig> bad = ParseTrainConfig("steps: 3\nlr: fast", "my.textproto");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(Message(bad.status()).find("my.textproto"), std::string::npos);
  EXPECT_NE(Message(bad.status()).find("line 2"), std::string::npos);
  EXPECT_TRUE(ParseTrainConfig("steps: 3 lr: 1e-3", "t").ok());
}

TEST(TrainConfigTest, OverridesMergeOverTheFile) {
  absl::StatusOr<TrainConfig> c = LoadTrainConfig("train/configs/demo_continued_pretraining.textproto", "steps: 7");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->steps(), 7);
  EXPECT_TRUE(ValidateTrainConfig(WithDirs(*c)).ok()) << ValidateTrainConfig(WithDirs(*c));
}

TEST(TrainConfigTest, EveryOutOfRangeFieldIsNamed) {
  EXPECT_NE(Message(ValidateTrainConfig(TrainConfig())).find("model_dir"), std::string::npos);
  for (const auto& [text, field] : std::vector<std::pair<std::string, std::string>>{
           {"steps: 0", "steps is 0"},
           {"micro_batch: -1", "micro_batch is -1"},
           {"bucket_mb: 0", "bucket_mb is 0"},
           {"warmup_steps: -5", "warmup_steps is -5"},
           {"keep_checkpoints: -1", "keep_checkpoints is -1"},
           {"lr: -0.1", "lr is -0.1"},
           {"lr: nan", "lr is nan"},
           {"beta2: 1.0", "beta2 is 1"},
           {"dtype: \"float16\"", "dtype is 'float16'"},
           {"activation_checkpointing: true z_loss_coef: 0.01", "activation_checkpointing off"}}) {
    const TrainConfig c = WithDirs(*ParseTrainConfig(text, "t"));
    const absl::Status s = ValidateTrainConfig(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(Message(s).find(field), std::string::npos) << text << " -> " << s;
  }
}

}  // namespace
}  // namespace llama_moe
