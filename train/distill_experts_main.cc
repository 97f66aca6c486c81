// Distills each MoE layer toward the dense FFN it replaced, on calibration text, before
// continued pretraining (train/expert_distill.h). Prints one line per layer and writes the
// distilled model directory.
//
// Example:
//   bazel run //train:distill_experts -- --model /tmp/moe --output /tmp/moe_distilled
//       --calibration_text calibration.txt --steps 200      (one command line)
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "model/file_util.h"
#include "model/llama_model.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "train/expert_distill.h"

ABSL_FLAG(std::string, model, "", "converted MoE model directory");
ABSL_FLAG(std::string, output, "", "output model directory (must not exist unless --overwrite)");
ABSL_FLAG(std::string, calibration_text, "", "UTF-8 text whose activations the layers learn on");
ABSL_FLAG(int64_t, calibration_tokens, 4096, "tokens of the text used at most");
ABSL_FLAG(int64_t, steps, 200, "Adam steps per layer");
ABSL_FLAG(int64_t, batch_tokens, 512, "activation rows per step");
ABSL_FLAG(double, lr, 1e-3, "Adam learning rate of the learned experts");
ABSL_FLAG(double, router_lr_scale, 0.1, "the router weights' learning-rate factor");
ABSL_FLAG(uint64_t, seed, 0, "batch order");
ABSL_FLAG(std::string, device, "cpu", "device, e.g. cpu, cuda, cuda:1");
ABSL_FLAG(bool, overwrite, false, "replace an existing --output");

namespace llama_moe {
namespace {

absl::Status Run() {
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  if (absl::GetFlag(FLAGS_output).empty()) return MissingFlag("output");
  if (absl::GetFlag(FLAGS_calibration_text).empty()) return MissingFlag("calibration_text");
  ExpertDistillOptions o;
  o.model_dir = ResolveUserPath(absl::GetFlag(FLAGS_model));
  o.output_dir = ResolveUserPath(absl::GetFlag(FLAGS_output));
  o.calibration_text = ResolveUserPath(absl::GetFlag(FLAGS_calibration_text));
  o.calibration_tokens = absl::GetFlag(FLAGS_calibration_tokens);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.batch_tokens = absl::GetFlag(FLAGS_batch_tokens);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.router_lr_scale = absl::GetFlag(FLAGS_router_lr_scale);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  ASSIGN_OR_RETURN(o.device, ParseDevice(absl::GetFlag(FLAGS_device)));
  o.log = [](const std::string& line) { std::printf("%s\n", line.c_str()); std::fflush(stdout); };
  ASSIGN_OR_RETURN(const std::vector<LayerDistillResult> layers, DistillExperts(o));
  std::printf("wrote %s (%zu layers distilled)\n", o.output_dir.c_str(), layers.size());
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Fits each MoE layer to the dense FFN it replaced, on calibration text.\n"
      "  distill_experts --model DIR --output DIR --calibration_text FILE [--steps 200] [--lr 1e-3]\n"
      "                  [--batch_tokens 512] [--calibration_tokens 4096] [--seed 0] [--device cpu] [--overwrite]");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("distill_experts", llama_moe::Run);
}
