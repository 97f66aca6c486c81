// evaluate: perplexity, KL divergence and top-1 agreement against a reference, and routing
// statistics, as JSON (render it with eval/make_report.py).
//
//   bazel run //eval:evaluate -- --model out/moe --reference out/dense --data out/data \
//       --routing identity,routed --output out/eval.json
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "eval/evaluate_lib.h"
#include "model/file_util.h"
#include "model/heap_policy.h"
#include "model/llama_model.h"
#include "model/main_util.h"
#include "model/status_macros.h"

ABSL_FLAG(std::string, model, "", "model directory to evaluate");
ABSL_FLAG(std::string, reference, "", "reference model directory (KL divergence, top-1 agreement)");
ABSL_FLAG(std::string, data, "", "token shard directory from //train:prepare_data");
ABSL_FLAG(std::string, text, "", "or: a text file, tokenized with the model's tokenizer.json");
ABSL_FLAG(std::string, split, "heldout", "split of --data");
ABSL_FLAG(std::string, routing, "routed", "comma-separated routing modes for MoE models: identity,learned_only,routed");
ABSL_FLAG(int64_t, seq_len, 256, "window length");
ABSL_FLAG(int64_t, batch, 8, "windows per forward pass");
ABSL_FLAG(int64_t, max_windows, 64, "windows at most (0: all)");
ABSL_FLAG(std::string, dtype, "", "compute dtype: float32 or bfloat16 (default: the checkpoint's)");
ABSL_FLAG(std::string, device, "cpu", "device, e.g. cpu, cuda, cuda:1");
ABSL_FLAG(std::string, output, "", "write the JSON report here (default: stdout)");

namespace llama_moe {
namespace {

absl::Status Run() {
  EvalOptions o;
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  o.model_dir = ResolveUserPath(absl::GetFlag(FLAGS_model));
  if (!absl::GetFlag(FLAGS_reference).empty()) o.reference_dir = ResolveUserPath(absl::GetFlag(FLAGS_reference));
  if (!absl::GetFlag(FLAGS_data).empty()) o.data_dir = ResolveUserPath(absl::GetFlag(FLAGS_data));
  if (!absl::GetFlag(FLAGS_text).empty()) o.text_file = ResolveUserPath(absl::GetFlag(FLAGS_text));
  if (o.data_dir.empty() == o.text_file.empty()) return absl::InvalidArgumentError("give exactly one of --data and --text");
  o.split = absl::GetFlag(FLAGS_split);
  o.seq_len = absl::GetFlag(FLAGS_seq_len);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.max_windows = absl::GetFlag(FLAGS_max_windows);
  if (o.seq_len < 1 || o.batch < 1 || o.max_windows < 0) {
    return absl::InvalidArgumentError("--seq_len and --batch must be positive, --max_windows >= 0");
  }
  o.modes.clear();
  for (absl::string_view m : absl::StrSplit(absl::GetFlag(FLAGS_routing), ',')) {
    ASSIGN_OR_RETURN(RoutingMode mode, ParseRoutingMode(std::string(m)), "--routing");
    o.modes.push_back(mode);
  }
  if (!absl::GetFlag(FLAGS_dtype).empty()) {
    ASSIGN_OR_RETURN(o.dtype, ParseFloatDTypeFlag(absl::GetFlag(FLAGS_dtype)), "--dtype");
  }
  ASSIGN_OR_RETURN(o.device, ParseDevice(absl::GetFlag(FLAGS_device)));
  ASSIGN_OR_RETURN(nlohmann::json report, Evaluate(o));
  const std::string text = report.dump(2) + "\n";
  if (absl::GetFlag(FLAGS_output).empty()) {
    std::cout << text;
  } else {
    RETURN_IF_ERROR(WriteStringToFile(ResolveUserPath(absl::GetFlag(FLAGS_output)), text));
  }
  for (const auto& r : report["results"]) {
    std::cerr << "evaluate: " << r["mode"].get<std::string>() << ": perplexity " << r["perplexity"].get<double>();
    if (r.contains("kl_to_reference")) {
      std::cerr << ", KL to reference " << r["kl_to_reference"].get<double>() << ", top-1 agreement "
                << r["top1_agreement"].get<double>();
    }
    std::cerr << " (" << report["tokens"].get<int64_t>() << " tokens)" << std::endl;
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  llama_moe::ApplyInferenceHeapPolicy();
  absl::SetProgramUsageMessage("Evaluates a model on held-out tokens: perplexity, KL to a reference, routing statistics.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("evaluate", llama_moe::Run);
}
