#include "train/train_checkpoint.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "model/checkpoint.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/json_util.h"
#include "model/model_format.h"
#include "model/safetensors.h"
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

// A status as a signal value, and back: "ok", or the error's message.
std::string SignalOf(const absl::Status& s) { return s.ok() ? "ok" : std::string(s.message()); }

absl::Status StatusOfSignal(const absl::StatusOr<std::string>& v, const std::string& who) {
  if (!v.ok()) return absl::DeadlineExceededError(absl::StrCat("waiting for ", who, ": ", v.status().message()));
  if (*v == "ok") return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(who, " failed: ", *v));
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
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(JoinPath(p.dir, kTrainerState), kMaxMetadataFileBytes));
  const std::string path = JoinPath(p.dir, kTrainerState);
  ASSIGN_OR_RETURN(p.state, ParseJson(text, absl::StrCat("'", path, "'")));
  // The fields resume reads, checked here so that a damaged file is one clear error.
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat("'", path, "': ", what));
  };
  if (!p.state.is_object()) return bad("not a JSON object");
  for (const char* f : {"step", "world_size"}) {
    if (!p.state.contains(f) || !p.state[f].is_number_integer() || p.state[f].get<int64_t>() < 0) {
      return bad(absl::StrCat("field '", f, "' is missing or not a non-negative integer"));
    }
  }
  if (!p.state.contains("data_position") || !p.state["data_position"].is_object()) {
    return bad("field 'data_position' is missing or not an object");
  }
  if (p.state["world_size"].get<int64_t>() != world_size) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint '", p.dir, "' was written by ",
                                                   p.state["world_size"].get<int64_t>(),
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
  ASSIGN_OR_RETURN(ctx.config_json, ReadFileToString(JoinPath(source_dir, kConfigFile), kMaxMetadataFileBytes));
  return ctx;
}

absl::StatusOr<std::string> SaveCheckpoint(const CheckpointContext& ctx, int64_t step, LlamaForCausalLM& model,
                                           const ShardedAdamW& opt, Communicator& comm, const nlohmann::json& state) {
  const std::string name = StepDirName(step);
  const std::string final_dir = JoinPath(ctx.output_dir, name);
  const std::string staging = JoinPath(ctx.output_dir, ".staging-" + name);
  const std::string key = absl::StrCat("checkpoint/", ctx.run_id, "/", name, "/");
  if (comm.rank() == 0) {
    RETURN_IF_ERROR(RemoveAll(staging));
    if (::mkdir(staging.c_str(), 0755) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot create '", staging, "'"));
    }
  }
  RETURN_IF_ERROR(comm.Barrier());
  // Every rank writes its optimizer shard and says how it went.
  std::vector<std::pair<std::string, at::Tensor>> opt_state;
  for (auto& [k, v] : opt.State()) opt_state.emplace_back(k, v);
  const absl::Status mine =
      WriteSafetensorsFile(JoinPath(staging, OptimizerShardName(comm.rank(), comm.world_size())), opt_state);
  RETURN_IF_ERROR(comm.SetSignal(absl::StrCat(key, "shard-", comm.rank()), SignalOf(mine)));
  if (comm.rank() != 0) {
    if (!mine.ok()) return mine;
    RETURN_IF_ERROR(StatusOfSignal(comm.WaitForSignal(key + "done", ctx.write_timeout), "rank 0 writing " + name));
    return final_dir;
  }
  // Rank 0: every shard, then the model directory, `latest` and the pruning.
  absl::Status status = mine;
  for (int r = 1; r < comm.world_size() && status.ok(); ++r) {
    status = StatusOfSignal(comm.WaitForSignal(absl::StrCat(key, "shard-", r), ctx.write_timeout),
                            absl::StrCat("rank ", r, " writing its optimizer shard"));
  }
  if (status.ok()) status = WriteModelDirectory(ctx, final_dir, staging, model, comm.world_size(), state);
  if (status.ok()) status = RemoveAll(staging);
  if (status.ok()) status = WriteLatest(ctx.output_dir, name);
  if (status.ok()) status = PruneCheckpoints(ctx.output_dir, ctx.keep);
  RETURN_IF_ERROR(comm.SetSignal(key + "done", SignalOf(status)));
  RETURN_IF_ERROR(status);
  return final_dir;
}

absl::StatusOr<std::map<std::string, at::Tensor>> MapOptimizerShard(const std::string& path) {
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const TensorEntry& e : f->header().tensors) out[e.name] = f->Get(e);
  return out;
}

absl::Status PruneCheckpoints(const std::string& output_dir, int keep) {
  if (keep <= 0) return absl::OkStatus();
  std::string latest;
  if (absl::StatusOr<std::string> l = ReadFileToString(JoinPath(output_dir, "latest")); l.ok()) {
    latest = std::string(absl::StripAsciiWhitespace(*l));
  }
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(output_dir, ec)) {
    const std::string n = entry.path().filename().string();
    int64_t step = 0;
    if (entry.is_directory() && n.size() == 11 && n.rfind("step-", 0) == 0 && absl::SimpleAtoi(n.substr(5), &step)) {
      steps.push_back(n);
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list '", output_dir, "': ", ec.message()));
  std::sort(steps.begin(), steps.end());  // zero-padded: oldest first
  for (size_t i = 0; i + keep < steps.size(); ++i) {
    if (steps[i] == latest) continue;
    RETURN_IF_ERROR(RemoveAll(JoinPath(output_dir, steps[i])), "removing an old checkpoint");
  }
  return absl::OkStatus();
}

}  // namespace llama_moe
