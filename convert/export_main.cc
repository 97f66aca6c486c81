// export: writes a model directory of this project (dense or MoE) in another engine's format.
//
//   bazel run //convert:export -- --model /models/llama3-8b-moe --format gguf --output moe.gguf
//       [--dtype f32|f16|bf16] [--overwrite] [--allow_approximate] [--calibration_text FILE]
//   bazel run //convert:export -- --model DIR --format hf_mixtral --describe   # keeps / drops, writes nothing
#include <csignal>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "convert/export.h"
#include "model/file_util.h"
#include "model/main_util.h"
#include "model/status_macros.h"

ABSL_FLAG(std::string, model, "", "model directory written by this project, or a dense Hugging Face Llama directory");
ABSL_FLAG(std::string, format, "", "gguf (llama.cpp) or hf_mixtral (Hugging Face MixtralForCausalLM layout)");
ABSL_FLAG(std::string, output, "", "output: a .gguf file, or a directory for hf_mixtral");
ABSL_FLAG(std::string, dtype, "", "f32, f16 or bf16 for the weight matrices (default: the source's)");
ABSL_FLAG(bool, overwrite, false, "replace an existing output");
ABSL_FLAG(bool, allow_approximate, false,
          "write a form that drops something the format cannot carry, after measuring its logit difference");
ABSL_FLAG(std::string, calibration_text, "", "text to measure an approximate form on (default: a built-in passage)");
ABSL_FLAG(bool, describe, false, "print what the format keeps and drops for this model, and write nothing");

namespace llama_moe {
namespace {

absl::Status Run() {
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  if (absl::GetFlag(FLAGS_format).empty()) return MissingFlag("format");
  ExportOptions o;
  o.model_dir = ResolveUserPath(absl::GetFlag(FLAGS_model));
  ASSIGN_OR_RETURN(o.format, ParseExportFormat(absl::GetFlag(FLAGS_format)));
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  o.allow_approximate = absl::GetFlag(FLAGS_allow_approximate);
  if (!absl::GetFlag(FLAGS_calibration_text).empty()) {
    o.calibration_text_file = ResolveUserPath(absl::GetFlag(FLAGS_calibration_text));
  }
  o.log = [](const std::string& s) { std::cerr << s << (!s.empty() && s.back() == '\n' ? "" : "\n") << std::flush; };
  if (absl::GetFlag(FLAGS_describe)) {
    ASSIGN_OR_RETURN(ExportPlan plan, PlanExport(o));
    std::cout << DescribePlan(plan);
    return absl::OkStatus();
  }
  if (absl::GetFlag(FLAGS_output).empty()) return MissingFlag("output");
  o.output = ResolveUserPath(absl::GetFlag(FLAGS_output));
  ASSIGN_OR_RETURN(ExportStats st, Export(o));
  std::cout << absl::StrFormat("wrote %s (%s as %s, %s%s): %.3f GB of tensors in %.2f s", o.output, st.plan.format,
                               st.plan.architecture, st.plan.dtype, st.plan.exact ? "" : ", approximate",
                               st.bytes_written / 1e9, st.seconds)
            << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Exports a model directory as GGUF (llama.cpp) or in the Hugging Face Mixtral layout.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("export", llama_moe::Run);
}
