#include "train/memory_plan.h"

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

TrainConfig Train(int seq_len, int micro_batch, bool checkpointing) {
  TrainConfig t;
  t.set_seq_len(seq_len);
  t.set_micro_batch(micro_batch);
  t.set_activation_checkpointing(checkpointing);
  t.set_dtype("bfloat16");
  return t;
}

TEST(MemoryPlanTest, Llama3_8bMoeOnEightRanks) {
  // Llama 3.1 8B (the config's defaults) as 8 frozen + 8 learned experts of 1792, top-8.
  const LlamaConfig cfg;
  const MoeConfig moe;
  const MemoryPlan p = PlanTrainingMemory(cfg, moe, Train(2048, 1, true), 8, 0);
  // Learned experts and routers: 32 layers x (8 x 3 x 1792 x 4096 + 16 x 4096).
  EXPECT_EQ(p.trainable_elements, int64_t{32} * (8 * 3 * 1792 * 4096 + 16 * 4096));
  // 13.7B parameters in bfloat16, router biases in float32.
  EXPECT_NEAR(p.parameters / 1e9, 27.3, 0.1);
  const int64_t slice = (p.trainable_elements + 7) / 8;
  EXPECT_EQ(p.optimizer, 5 * slice * 4);
  EXPECT_EQ(p.gradients, p.trainable_elements * 2);
  EXPECT_LT(p.activations_checkpointed, p.activations_full);
  EXPECT_EQ(p.activations, p.activations_checkpointed);
  EXPECT_GT(p.peak, p.parameters + p.optimizer);
  EXPECT_NE(p.Report().find("plan: peak per rank " + std::to_string(p.peak) + " bytes"), std::string::npos);
  // More ranks shrink the per-rank optimizer state and gradient slice, nothing else.
  const MemoryPlan one = PlanTrainingMemory(cfg, moe, Train(2048, 1, true), 1, 0);
  EXPECT_EQ(one.parameters, p.parameters);
  EXPECT_GT(one.optimizer, 7 * p.optimizer);
  EXPECT_GT(one.peak, p.peak);
}

TEST(MemoryPlanTest, DenseModelTrainsEverythingWithTrainableAll) {
  LlamaConfig cfg;
  cfg.num_hidden_layers = 2;
  TrainConfig t = Train(512, 2, false);
  t.set_trainable(TrainConfig::ALL);
  const MemoryPlan p = PlanTrainingMemory(cfg, std::nullopt, t, 1, 0);
  EXPECT_EQ(p.trainable_elements * 2, p.parameters);  // every tensor, bfloat16
  // Activations double with the micro-batch (the attention's T x T terms too).
  const MemoryPlan twice = PlanTrainingMemory(cfg, std::nullopt, Train(512, 4, false), 1, 0);
  EXPECT_EQ(twice.activations_full, 2 * p.activations_full);
}

TEST(MemoryPlanTest, ARunThatDoesNotFitNamesTheKnobs) {
  const MemoryPlan p = PlanTrainingMemory(LlamaConfig(), MoeConfig(), Train(2048, 4, false), 1, 0);
  EXPECT_TRUE(CheckPlanFits(p, p.peak, Train(2048, 4, false), 1).ok());
  const absl::Status s = CheckPlanFits(p, p.peak - 1, Train(2048, 4, false), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  const std::string m(s.message());
  for (const char* knob : {"micro_batch", "activation_checkpointing: true", "more ranks", "--plan"}) {
    EXPECT_NE(m.find(knob), std::string::npos) << knob << " in: " << m;
  }
}

#if !defined(LLAMA_MOE_WITH_CUDA)
TEST(MemoryPlanTest, GpuMemoryWithoutACudaBuildIsAClearError) {
  const absl::StatusOr<int64_t> peak = PeakDeviceBytes(0);
  ASSERT_FALSE(peak.ok());
  EXPECT_NE(std::string(peak.status().message()).find("cuda:0: GPU memory needs a CUDA build"), std::string::npos);
  EXPECT_FALSE(AvailableMemory(/*cuda=*/true, 0, 1).ok());
}
#endif

}  // namespace
}  // namespace llama_moe
