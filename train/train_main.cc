// train: continued pretraining of an MoE model's learned experts and routers (or pretraining of
// a dense model), data parallel. Launch as PyTorch jobs are launched:
//
//   bazel run //train:train -- --config train/configs/continued_pretraining.textproto
//   torchrun --no_python --nproc_per_node=2 --redirects 1 --tee 1 bazel-bin/train/train --config ...
#include <unistd.h>

#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/file_util.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "train/trainer.h"

ABSL_FLAG(std::string, config, "", "training config (text proto, train/train_config.proto)");
ABSL_FLAG(std::string, set, "", "config fields in text-proto syntax applied over --config, e.g. 'steps: 50 lr: 3e-4'");
ABSL_FLAG(bool, resume, false, "continue from output_dir/latest");
ABSL_FLAG(std::string, device, "cpu", "cpu (Gloo) or cuda (NCCL; LOCAL_RANK picks the GPU)");
ABSL_FLAG(int64_t, stop_after_steps, 0, "stop after this many steps of this run, with a checkpoint (0: run to the end)");
ABSL_FLAG(bool, plan, false, "print the memory plan per rank for this config and world size, then exit");
ABSL_FLAG(int32_t, plan_world_size, 0, "with --plan: plan for this many ranks without launching them (0: this launch's)");
ABSL_FLAG(bool, ignore_memory_plan, false, "run even when the memory plan exceeds the memory there is");

namespace llama_moe {
namespace {

absl::Status Run() {
  ASSIGN_OR_RETURN(TrainConfig cfg, LoadTrainConfig(absl::GetFlag(FLAGS_config).empty()
                                                        ? std::string()
                                                        : ResolveUserPath(absl::GetFlag(FLAGS_config)),
                                                    absl::GetFlag(FLAGS_set)));
  cfg.set_model_dir(ResolveUserPath(cfg.model_dir()));
  cfg.set_data_dir(ResolveUserPath(cfg.data_dir()));
  cfg.set_output_dir(ResolveUserPath(cfg.output_dir()));
  TrainRunOptions run;
  run.resume = absl::GetFlag(FLAGS_resume);
  run.device = absl::GetFlag(FLAGS_device);
  run.stop_after_steps = absl::GetFlag(FLAGS_stop_after_steps);
  run.tty = ::isatty(2) != 0;
  run.plan_only = absl::GetFlag(FLAGS_plan);
  run.plan_world_size = absl::GetFlag(FLAGS_plan_world_size);
  run.ignore_memory_plan = absl::GetFlag(FLAGS_ignore_memory_plan);
  ASSIGN_OR_RETURN(run.env, DistEnvFromEnvironment());
  if (run.device == "cuda") run.device = absl::StrCat("cuda:", run.env.local_rank);
  ASSIGN_OR_RETURN(TrainResult r, Train(cfg, run));
  if (run.plan_only) {
    if (run.env.rank == 0) {
      std::printf("memory plan per rank (%d ranks):\n%s",
                  run.plan_world_size > 0 ? run.plan_world_size : run.env.world_size, r.plan.c_str());
    }
    return absl::OkStatus();
  }
  if (run.env.rank == 0) std::fprintf(stderr, "memory plan per rank:\n%s", r.plan.c_str());
  if (run.env.rank == 0 || run.env.world_size > 1) {
    const std::string device_peak =
        r.peak_device_bytes > 0 ? absl::StrFormat(", peak device memory %d bytes", r.peak_device_bytes) : "";
    std::printf("rank %d: steps %lld..%lld, %.0f tokens/s, held-out loss %.4f, optimizer state %.1f MB, peak RSS %.1f MB%s, "
                "router bias checksum %.17g, checkpoint %s\n",
                run.env.rank, static_cast<long long>(r.first_step), static_cast<long long>(r.last_step),
                r.tokens_per_second, r.heldout_loss, r.optimizer_state_bytes / 1e6, r.peak_rss_bytes / 1e6,
                device_peak.c_str(), r.router_bias_checksum, r.final_checkpoint.c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Trains an MoE model's learned experts and routers (or a whole model), data parallel.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("train", llama_moe::Run);
}
