// Continued pretraining of learned experts and routers (or of a whole dense model), data
// parallel over c10d, with exact resume.
//
// One optimizer step (llm.c's loop, distributed):
//   for each micro-step a:  loss_a = CE(model(batch(step, a, rank))) / tokens_per_step
//                           backward; reduce-scatter the grads, bucket by bucket, into this
//                           rank's float32 slice (ZeRO-2)
//   all-reduce the step's loss and expert loads
//   clip to the global norm; AdamW on this rank's slice; gather the updated weights
//   move each router's selection bias toward balance (the same on every rank)
// Before anything is allocated, a memory plan (train/memory_plan.h) is checked against the memory
// the rank has. Checkpoints (every N steps and at the end) are model directories
// (output_dir/step-NNNNNN) that every tool of the project reads, plus trainer_state.json and one
// optimizer shard per rank; `output_dir/latest` names the newest complete one.
//
// Example:
//   ASSIGN_OR_RETURN(TrainConfig cfg, LoadTrainConfig("train/configs/demo_continued_pretraining.textproto",
//                                                     "model_dir: '/tmp/moe' data_dir: '/tmp/data' output_dir: '/tmp/run'"));
//   TrainRunOptions run;  // resume, device, terminal, rank and world size
//   ASSIGN_OR_RETURN(TrainResult r, Train(cfg, run));
#ifndef LLAMA_MOE_TRAIN_TRAINER_H_
#define LLAMA_MOE_TRAIN_TRAINER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "train/distributed.h"
#include "train/train_config.h"
#include "train/train_config.pb.h"

namespace llama_moe {

struct TrainRunOptions {
  bool resume = false;              // continue from output_dir/latest
  std::string device = "cpu";       // e.g. "cuda" (NCCL) or "cpu" (Gloo)
  bool tty = false;                 // progress bar instead of lines
  DistEnv env;                      // rank and world size
  int64_t stop_after_steps = 0;     // > 0: stop (with a checkpoint) after this many steps of this run
  bool plan_only = false;           // compute the memory plan (TrainResult::plan) and stop
  int plan_world_size = 0;          // with plan_only: plan for this many ranks (0: env.world_size)
  bool ignore_memory_plan = false;  // run even when the plan exceeds the memory there is
};

struct TrainResult {
  int64_t first_step = 0;            // step this run started at
  int64_t last_step = 0;             // steps completed in total
  std::vector<double> losses;        // training loss of each step this run made
  double initial_heldout_loss = 0;   // before the first step of a fresh run (when eval_every > 0)
  double heldout_loss = 0;           // at the end (nats per token)
  // sum_l sum_e (e + 1) * bias[l][e] over router selection biases: equal across ranks when the
  // balancing update is synchronised (printed by //train:train for the distributed test).
  double router_bias_checksum = 0;
  double tokens_per_second = 0;      // training throughput of this run, all ranks
  int64_t optimizer_state_bytes = 0; // this rank
  int64_t peak_rss_bytes = 0;        // this process
  int64_t peak_device_bytes = 0;     // this rank's GPU (tensors held by the caching allocator); 0 on the CPU
  std::string final_checkpoint;      // output_dir/step-NNNNNN
  std::string plan;                  // the memory plan per rank (MemoryPlan::Report)
};

absl::StatusOr<TrainResult> Train(const TrainConfig& config, const TrainRunOptions& run);


}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_TRAINER_H_
