#include "train/train_checkpoint.h"

#include <ATen/ATen.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "model/file_util.h"
#include "model/llama_model.h"
#include "model/test_util.h"
#include "model/tiny_llama.h"

namespace llama_moe {
namespace {

std::vector<std::string> StepDirs(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("step-", 0) == 0) out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(TrainCheckpointTest, PruneKeepsTheNewestAndLatest) {
  const std::string dir = TestPath("run");
  for (int s : {1, 2, 3, 4, 5}) std::filesystem::create_directories(JoinPath(dir, StepDirName(s)));
  std::filesystem::create_directories(JoinPath(dir, "step-notastep"));
  ASSERT_TRUE(WriteStringToFile(JoinPath(dir, "latest"), "step-000002\n").ok());
  ASSERT_TRUE(PruneCheckpoints(dir, 2).ok());
  // The two newest stay, and the one `latest` names, whatever its age.
  EXPECT_EQ(StepDirs(dir), (std::vector<std::string>{"step-000002", "step-000004", "step-000005", "step-notastep"}));
  ASSERT_TRUE(PruneCheckpoints(dir, 0).ok());  // 0 keeps all
  EXPECT_EQ(StepDirs(dir).size(), 4u);
}

TEST(TrainCheckpointTest, SavesResumablyAndPrunes) {
  const std::string src = TestPath("tiny"), out = TestPath("out");
  ASSERT_TRUE(WriteTinyLlama(src, TinyLlamaOptions()).ok());
  std::filesystem::create_directories(out);
  absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> model = LoadLlamaFromDir(src, {});
  ASSERT_TRUE(model.ok()) << model.status();
  auto comm = *Communicator::Create(DistEnv(), c10::kCPU, std::chrono::seconds(10));
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (auto& p : (*model)->named_parameters(true)) params.emplace_back(p.key(), p.value());
  ShardedAdamW opt(params, comm.get(), AdamWOptions());
  absl::StatusOr<CheckpointContext> ctx = MakeCheckpointContext(out, src);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  ctx->keep = 1;
  ctx->run_id = "test";
  for (int64_t step : {3, 6}) {
    absl::StatusOr<std::string> dir = SaveCheckpoint(*ctx, step, **model, opt, *comm,
                                                  {{"step", step}, {"world_size", 1}, {"data_position", {{"epoch", 0}}}});
    ASSERT_TRUE(dir.ok()) << dir.status();
    EXPECT_TRUE(PathExists(JoinPath(*dir, OptimizerShardName(0, 1))));
  }
  EXPECT_EQ(StepDirs(out), std::vector<std::string>{"step-000006"});
  absl::StatusOr<ResumePoint> from = ReadResumePoint(out, 1);
  ASSERT_TRUE(from.ok()) << from.status();
  EXPECT_EQ(from->state["step"], 6);
  // Resuming with another world size, or from nothing, is refused with a clear message.
  EXPECT_NE(std::string(ReadResumePoint(out, 2).status().message()).find("written by 1 ranks"), std::string::npos);
  EXPECT_NE(std::string(ReadResumePoint(TestPath("empty"), 1).status().message()).find("needs a previous checkpoint"),
            std::string::npos);
}

TEST(TrainCheckpointTest, DamagedTrainerStateIsNamed) {
  const std::string out = TestPath("damaged");
  std::filesystem::create_directories(JoinPath(out, "step-000001"));
  ASSERT_TRUE(WriteStringToFile(JoinPath(out, "latest"), "step-000001\n").ok());
  const std::string state = JoinPath(out, "step-000001/trainer_state.json");
  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {"{\"step\": 3", "is not valid JSON"},
           {"[1, 2]", "not a JSON object"},
           {"{\"step\": \"three\", \"world_size\": 1, \"data_position\": {}}", "field 'step'"},
           {"{\"step\": 3, \"data_position\": {}}", "field 'world_size'"},
           {"{\"step\": 3, \"world_size\": 1, \"data_position\": 7}", "field 'data_position'"},
           {std::string(100, '[') + std::string(100, ']'), "deeper than 64"}}) {
    ASSERT_TRUE(WriteStringToFile(state, text).ok());
    const absl::Status s = ReadResumePoint(out, 1).status();
    EXPECT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find(want), std::string::npos) << text << " -> " << s;
    EXPECT_NE(std::string(s.message()).find("trainer_state.json"), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace llama_moe
