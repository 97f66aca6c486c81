// The checkpoint formats a model can be written in, and the one place that maps a format to
// its writer (model/model_writer.h).
//
// Example:
//   ASSIGN_OR_RETURN(ModelFormat f, ParseModelFormat("hf_safetensors"));
//   ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w,
//                    CreateModelWriter(f, "/tmp/example_format", {{"w", DType::kF32, {4}}}, {}));
#ifndef LLAMA_MOE_MODEL_MODEL_FORMAT_H_
#define LLAMA_MOE_MODEL_MODEL_FORMAT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/model_writer.h"
#include "model/tensor_spec.h"

namespace llama_moe {

enum class ModelFormat {
  kHfSafetensors,  // a Hugging Face model directory: config.json, (sharded) safetensors, index
};
// "hf_safetensors".
const char* ModelFormatName(ModelFormat format);
absl::StatusOr<ModelFormat> ParseModelFormat(absl::string_view name);

// A writer of `format` into `dir` for the tensors `specs`.
absl::StatusOr<std::unique_ptr<ModelWriter>> CreateModelWriter(ModelFormat format, const std::string& dir,
                                                               std::vector<TensorSpec> specs,
                                                               const ModelWriterOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_MODEL_FORMAT_H_
