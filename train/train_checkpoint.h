// The trainer's checkpoints: output_dir/step-NNNNNN, a model directory every tool reads, plus
// trainer_state.json (step, data position, world size, config) and one optimizer shard per
// rank, published atomically; output_dir/latest names the newest complete one.
//
// Example:
//   ASSIGN_OR_RETURN(ResumePoint from, ReadResumePoint("/runs/demo", /*world_size=*/2));
//   const std::string shard = from.dir + "/" + OptimizerShardName(/*rank=*/0, /*world_size=*/2);
#ifndef LLAMA_MOE_TRAIN_TRAIN_CHECKPOINT_H_
#define LLAMA_MOE_TRAIN_TRAIN_CHECKPOINT_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "model/llama_model.h"
#include "model/safetensors_header.h"
#include "nlohmann/json.hpp"
#include "train/distributed.h"
#include "train/sharded_adamw.h"

namespace llama_moe {

// "step-000120".
std::string StepDirName(int64_t step);
// "optimizer-rank-00000-of-00002.safetensors".
std::string OptimizerShardName(int rank, int world_size);

// Where a resumed run continues: the newest checkpoint of an output directory and its state.
struct ResumePoint {
  std::string dir;     // output_dir/step-NNNNNN
  nlohmann::json state;  // trainer_state.json: an object with "step", "data_position", ...
};
// Errors: no `latest`, an unreadable state, a checkpoint written by another number of ranks.
absl::StatusOr<ResumePoint> ReadResumePoint(const std::string& output_dir, int world_size);

// What every checkpoint of a run shares.
struct CheckpointContext {
  std::string output_dir;
  std::string source_dir;                      // model directory the run started from (side files)
  std::map<std::string, DType> storage_dtype;  // per tensor, as the source stores it
  std::string config_json;                     // the source's config.json
  int keep = 0;                                // checkpoints kept, newest first; 0: all
  std::chrono::seconds write_timeout{3600};    // how long ranks wait for a checkpoint to be written
  std::string run_id;                          // the same on every rank, new for every run
};
// The context of a run that starts from the model directory `source_dir`.
absl::StatusOr<CheckpointContext> MakeCheckpointContext(const std::string& output_dir, const std::string& source_dir);

// Writes output_dir/step-N atomically: every rank contributes its optimizer shard, rank 0 the
// model and `state`; then updates `latest` and removes checkpoints beyond ctx.keep. Ranks wait
// for each other through store signals bounded by ctx.write_timeout, not through collectives
// bounded by the run's collective timeout. Returns the checkpoint's directory.
absl::StatusOr<std::string> SaveCheckpoint(const CheckpointContext& ctx, int64_t step, LlamaForCausalLM& model,
                                           const ShardedAdamW& opt, Communicator& comm, const nlohmann::json& state);

// A rank's optimizer shard as views of the file's mapping (no copy: the state is read once, into
// the optimizer).
absl::StatusOr<std::map<std::string, at::Tensor>> MapOptimizerShard(const std::string& path);

// Removes the oldest step-NNNNNN directories of `output_dir` beyond the newest `keep` (0: none),
// never the one `latest` names.
absl::Status PruneCheckpoints(const std::string& output_dir, int keep);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_TRAIN_CHECKPOINT_H_
