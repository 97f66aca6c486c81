#include "model/model_format.h"

#include "absl/strings/str_cat.h"
#include "model/checkpoint_writer.h"

namespace llama_moe {

const char* ModelFormatName(ModelFormat format) {
  switch (format) {
    case ModelFormat::kHfSafetensors: return "hf_safetensors";
  }
  return "?";
}

absl::StatusOr<ModelFormat> ParseModelFormat(absl::string_view name) {
  if (name == "hf_safetensors") return ModelFormat::kHfSafetensors;
  return absl::InvalidArgumentError(absl::StrCat("unknown model format '", name, "' (expected hf_safetensors)"));
}

absl::StatusOr<std::unique_ptr<ModelWriter>> CreateModelWriter(ModelFormat format, const std::string& dir,
                                                               std::vector<TensorSpec> specs,
                                                               const ModelWriterOptions& options) {
  switch (format) {
    case ModelFormat::kHfSafetensors: {
      absl::StatusOr<std::unique_ptr<CheckpointWriter>> w = CheckpointWriter::Create(dir, std::move(specs), options);
      if (!w.ok()) return w.status();
      return std::unique_ptr<ModelWriter>(std::move(*w));
    }
  }
  return absl::InvalidArgumentError("unknown model format");
}

}  // namespace llama_moe
