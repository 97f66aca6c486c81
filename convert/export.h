// Exporting a model directory of this project (dense Llama 3 or MoE) to the formats other engines
// load: GGUF for llama.cpp, and the Hugging Face Mixtral layout for transformers-style engines.
//
// Each export first makes a plan: which architecture of the target carries the model, and what
// the format keeps and drops. A plan that keeps everything is exact. A plan that must drop
// something (a trained selection bias together with llama3 RoPE frequency factors, which no
// llama.cpp architecture carries at once) is approximate: its cost is measured on a calibration
// text against this project's own forward (max logit difference and KL), and it is written only
// when the caller accepts it. A model a format cannot represent at all is an error that names what
// is missing.
//
// To add a format: a value of ExportFormat with its name, a planning function beside PlanGguf /
// PlanHfMixtral (what is kept, what is dropped, which architecture), its writer, and a case in
// PlanExport and Export. Test it by reading the output back (tests/gguf_llama_cpp_test.sh,
// convert/export_test.cc).
//
// Example:
//   ExportOptions o;
//   o.model_dir = "/models/llama3-8b-moe";
//   o.format = ExportFormat::kGguf;
//   o.output = "/models/llama3-8b-moe.gguf";
//   ASSIGN_OR_RETURN(ExportPlan plan, PlanExport(o));
//   if (plan.exact) RETURN_IF_ERROR(Export(o).status());
#ifndef LLAMA_MOE_CONVERT_EXPORT_H_
#define LLAMA_MOE_CONVERT_EXPORT_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

enum class ExportFormat {
  kGguf,       // one .gguf file for llama.cpp
  kHfMixtral,  // a Hugging Face directory: MixtralForCausalLM config and tensor names
};
const char* ExportFormatName(ExportFormat f);  // "gguf" / "hf_mixtral"
absl::StatusOr<ExportFormat> ParseExportFormat(absl::string_view name);

struct ExportOptions {
  std::string model_dir;
  ExportFormat format = ExportFormat::kGguf;
  std::string output;      // a file for GGUF, a directory for hf_mixtral
  std::string dtype;       // "f32", "f16" or "bf16"; empty: the source's (bfloat16 -> bf16)
  bool overwrite = false;  // replace an existing output
  // Write a plan that drops something, after measuring it. Without it such a plan is an error that
  // carries the measurement.
  bool allow_approximate = false;
  // Text the cost of an approximate plan is measured on; empty: a built-in English passage.
  std::string calibration_text_file;
  std::function<void(const std::string&)> log;  // progress lines; unset: quiet
};

struct ExportPlan {
  std::string format;        // "gguf" / "hf_mixtral"
  std::string architecture;  // e.g. "llama", "ernie4_5-moe", "MixtralForCausalLM"
  std::string dtype;         // "f32" / "f16" / "bf16"
  bool exact = true;
  std::vector<std::string> kept;     // what the output carries, one line each
  std::vector<std::string> dropped;  // what it does not, the forward's part first
  std::string approximation;         // what is dropped that changes the forward (empty when exact)
  // Measured for approximate plans, against this project's forward on the calibration text.
  double max_abs_logit_diff = 0;
  double mean_kl = 0;
  int64_t calibration_tokens = 0;
};

// Decides how the model maps onto the format and measures an approximate plan. Writes nothing.
absl::StatusOr<ExportPlan> PlanExport(const ExportOptions& options);

// The plan as text: a header line, then "keeps:" and "drops:" lists.
std::string DescribePlan(const ExportPlan& plan);

struct ExportStats {
  ExportPlan plan;
  uint64_t bytes_written = 0;
  double seconds = 0;
};

// Plans, then writes the output atomically: nothing appears under `output` unless it is complete.
absl::StatusOr<ExportStats> Export(const ExportOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_EXPORT_H_
