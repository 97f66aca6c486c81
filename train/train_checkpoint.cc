#include "train/train_checkpoint.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "model/checkpoint.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/model_format.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

constexpr char kTrainerState[] = "trainer_state.json";

absl::Status WriteLatest(const std::string& output_dir, const std::string& name) {
  const std::string tmp = JoinPath(output_dir, ".latest.tmp");
  RETURN_IF_ERROR(WriteStringToFile(tmp, name + "\n"));
  if (std::rename(tmp.c_str(), JoinPath(output_dir, "latest").c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot update '", JoinPath(output_dir, "latest"), "'"));
  }
  return absl::OkStatus();
}

// One value per rank, summed: how many ranks failed a step that each did on its own.
absl::StatusOr<int> FailedRanks(Communicator& comm, const absl::Status& mine) {
  at::Tensor t = at::full({1}, mine.ok() ? 0.0 : 1.0, at::TensorOptions().dtype(at::kDouble));
  RETURN_IF_ERROR(comm.AllReduceSum({t}));
  return static_cast<int>(t.item<double>());
}

// Rank 0's part: the model directory, with every rank's optimizer shard moved in from `staging`.
absl::Status WriteModelDirectory(const CheckpointContext& ctx, const std::string& dir, const std::string& staging,
                                 LlamaForCausalLM& model, int world_size, const nlohmann::json& state) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : model.named_parameters(true)) tensors.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers(true)) tensors.emplace_back(item.key(), item.value());
  std::vector<TensorSpec> specs;
  for (const auto& [n, t] : tensors) {
    auto it = ctx.storage_dtype.find(n);
    if (it == ctx.storage_dtype.end()) return absl::InternalError(absl::StrCat("no storage dtype for '", n, "'"));
    specs.push_back({n, it->second, t.sizes().vec()});
  }
  ModelWriterOptions wo;
  wo.max_shard_bytes = 2'000'000'000ull;
  wo.overwrite = true;
  wo.metadata["llama_moe"] = "trained";
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w, CreateModelWriter(ModelFormat::kHfSafetensors, dir, specs, wo));
  for (size_t i = 0; i < tensors.size(); ++i) {
    RETURN_IF_ERROR(w->Write(specs[i].name, tensors[i].second.detach().to(at::kCPU, ToScalarType(specs[i].dtype))));
  }
  RETURN_IF_ERROR(w->AddFile(kConfigFile, ctx.config_json));
  RETURN_IF_ERROR(w->AddFile(kTrainerState, state.dump(2) + "\n"));
  RETURN_IF_ERROR(w->CopySideFiles(ctx.source_dir));
  for (int r = 0; r < world_size; ++r) {
    const std::string shard = OptimizerShardName(r, world_size);
    RETURN_IF_ERROR(w->MoveFileIn(JoinPath(staging, shard), shard), "moving an optimizer shard into the checkpoint");
  }
  return w->Commit();
}

}  // namespace

std::string StepDirName(int64_t step) { return absl::StrFormat("step-%06d", step); }

std::string OptimizerShardName(int rank, int world_size) {
  return absl::StrFormat("optimizer-rank-%05d-of-%05d.safetensors", rank, world_size);
}

absl::StatusOr<ResumePoint> ReadResumePoint(const std::string& output_dir, int world_size) {
  ASSIGN_OR_RETURN(std::string latest, ReadFileToString(JoinPath(output_dir, "latest")),
                   "--resume needs a previous checkpoint");
  ResumePoint p;
  p.dir = JoinPath(output_dir, std::string(absl::StripAsciiWhitespace(latest)));
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(JoinPath(p.dir, kTrainerState)));
  p.state = nlohmann::json::parse(text, nullptr, false);
  if (!p.state.is_object() || !p.state.contains("step")) {
    return absl::DataLossError(absl::StrCat("'", p.dir, "/", kTrainerState, "' is unreadable"));
  }
  if (p.state.value("world_size", 0) != world_size) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint '", p.dir, "' was written by ",
                                                   p.state.value("world_size", 0),
                                                   " ranks; resume with the same number (", world_size, " now)"));
  }
  return p;
}

absl::StatusOr<CheckpointContext> MakeCheckpointContext(const std::string& output_dir, const std::string& source_dir) {
  CheckpointContext ctx;
  ctx.output_dir = output_dir;
  ctx.source_dir = source_dir;
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> src, Checkpoint::Open(source_dir));
  for (const std::string& n : src->TensorNames()) ctx.storage_dtype[n] = src->Find(n)->first->dtype;
  ASSIGN_OR_RETURN(ctx.config_json, ReadFileToString(JoinPath(source_dir, kConfigFile)));
  return ctx;
}

absl::StatusOr<std::string> SaveCheckpoint(const CheckpointContext& ctx, int64_t step, LlamaForCausalLM& model,
                                           const ShardedAdamW& opt, Communicator& comm, const nlohmann::json& state) {
  const std::string name = StepDirName(step);
  const std::string final_dir = JoinPath(ctx.output_dir, name);
  const std::string staging = JoinPath(ctx.output_dir, ".staging-" + name);
  if (comm.rank() == 0) {
    RETURN_IF_ERROR(RemoveAll(staging));
    if (::mkdir(staging.c_str(), 0755) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot create '", staging, "'"));
    }
  }
  RETURN_IF_ERROR(comm.Barrier());
  std::vector<std::pair<std::string, at::Tensor>> opt_state;
  for (auto& [k, v] : opt.State()) opt_state.emplace_back(k, v);
  const absl::Status mine =
      WriteSafetensorsFile(JoinPath(staging, OptimizerShardName(comm.rank(), comm.world_size())), opt_state);
  ASSIGN_OR_RETURN(int failed_shards, FailedRanks(comm, mine));
  if (!mine.ok()) return mine;
  if (failed_shards > 0) return absl::UnavailableError("another rank failed to write its optimizer shard");

  absl::Status status = absl::OkStatus();
  if (comm.rank() == 0) {
    status = WriteModelDirectory(ctx, final_dir, staging, model, comm.world_size(), state);
    if (status.ok()) status = RemoveAll(staging);
    if (status.ok()) status = WriteLatest(ctx.output_dir, name);
  }
  ASSIGN_OR_RETURN(int failed, FailedRanks(comm, status));
  if (!status.ok()) return status;
  if (failed > 0) return absl::UnavailableError("rank 0 failed to write the checkpoint");
  return final_dir;
}

}  // namespace llama_moe
