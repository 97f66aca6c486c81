// //eval:logits: the model's logits for a token sequence, as a safetensors file with one tensor
// "logits" [T,V] float32, for comparison against other implementations (e.g. HF transformers).
//
//   bazel run //eval:logits -- --model models/tiny --tokens 128000,791,6864 --output /tmp/l.safetensors
//   bazel run //eval:logits -- --model DIR --tokens_file ids.txt --output l.safetensors --dtype float32
#include <ATen/ATen.h>

#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "eval/token_args.h"
#include "model/file_util.h"
#include "model/heap_policy.h"
#include "model/llama_model.h"
#include "model/main_util.h"
#include "model/safetensors_header.h"
#include "model/status_macros.h"
#include "moe/moe_model.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, tokens, "", "token ids, e.g. 128000,9906");
ABSL_FLAG(std::string, tokens_file, "", "file of token ids separated by commas or whitespace");
ABSL_FLAG(std::string, output, "", "output .safetensors file");
ABSL_FLAG(std::string, dtype, "", "compute dtype: float32 or bfloat16 (default: the checkpoint's)");
ABSL_FLAG(std::string, device, "cpu", "device, e.g. cpu, cuda");
ABSL_FLAG(std::string, routing, "routed", "MoE models: identity, learned_only or routed (ignored for dense models)");

namespace llama_moe {
namespace {

absl::Status Run() {
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  if (absl::GetFlag(FLAGS_output).empty()) return MissingFlag("output");
  const std::string tokens_flag = absl::GetFlag(FLAGS_tokens);
  const std::string tokens_file = absl::GetFlag(FLAGS_tokens_file);
  if (tokens_flag.empty() == tokens_file.empty()) {
    return absl::InvalidArgumentError("give exactly one of --tokens and --tokens_file");
  }
  std::vector<int64_t> ids;
  if (!tokens_flag.empty()) {
    ASSIGN_OR_RETURN(ids, ParseTokenIds(tokens_flag, "--tokens"));
  } else {
    const std::string path = ResolveUserPath(tokens_file);
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    ASSIGN_OR_RETURN(ids, ParseTokenIds(text, path));
  }
  LlamaLoadOptions load;
  if (!absl::GetFlag(FLAGS_dtype).empty()) {
    ASSIGN_OR_RETURN(load.dtype, ParseFloatDTypeFlag(absl::GetFlag(FLAGS_dtype)), "--dtype");
  }
  ASSIGN_OR_RETURN(load.device, ParseDevice(absl::GetFlag(FLAGS_device)));
  ModelLoadOptions mo;
  mo.dtype = load.dtype;
  mo.device = load.device;
  mo.map_weights = true;  // inference: parameters stored in the compute dtype are mapped, not copied
  ASSIGN_OR_RETURN(mo.moe.mode, ParseRoutingMode(absl::GetFlag(FLAGS_routing)), "--routing");
  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(ResolveUserPath(absl::GetFlag(FLAGS_model)), mo));
  std::shared_ptr<LlamaForCausalLM> model = loaded.model;
  ASSIGN_OR_RETURN(at::Tensor logits, model->Forward(at::tensor(ids, at::TensorOptions().dtype(at::kLong))));
  const at::Tensor host = logits.to(at::kCPU, at::kFloat).contiguous();  // [T,V]

  std::vector<TensorEntry> entries(1);
  entries[0].name = "logits";
  entries[0].dtype = DType::kF32;
  entries[0].shape = {host.size(0), host.size(1)};
  std::string bytes = BuildSafetensorsHeader(&entries, {{"format", "pt"}});
  bytes.append(static_cast<const char*>(host.data_ptr()), host.nbytes());
  const std::string output = ResolveUserPath(absl::GetFlag(FLAGS_output));
  RETURN_IF_ERROR(WriteStringToFile(output, bytes));
  std::cerr << "wrote logits [" << host.size(0) << "," << host.size(1) << "] float32 (compute "
            << c10::toString(model->dtype()) << ") to " << output << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  llama_moe::ApplyInferenceHeapPolicy();
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("logits", llama_moe::Run);
}
