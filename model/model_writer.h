// The checkpoint-format seam: what the converter, the trainer and an exporter write a model
// through, whatever the format on disk.
//
// A writer is created (model/model_format.h) for a declared list of tensors (model/tensor_spec.h),
// takes each tensor once, in any order, plus extra files, and publishes everything atomically at
// Commit(): a writer destroyed without Commit() leaves no output behind. The Hugging Face
// safetensors directory (model/checkpoint_writer.h) is the one format; ARCHITECTURE.md says how
// to add another.
//
// Example:
//   std::vector<TensorSpec> specs = {{"w", DType::kF32, {2, 3}}};
//   ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w,
//                    CreateModelWriter(ModelFormat::kHfSafetensors, "/tmp/example_model", specs, {}));
//   RETURN_IF_ERROR(w->Write("w", at::ones({2, 3})));
//   RETURN_IF_ERROR(w->AddFile("config.json", "{}"));
//   RETURN_IF_ERROR(w->Commit());
#ifndef LLAMA_MOE_MODEL_MODEL_WRITER_H_
#define LLAMA_MOE_MODEL_MODEL_WRITER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

struct ModelWriterOptions {
  // Shard size bound, e.g. 5 GB as HF uses; a single tensor larger than this gets its own shard.
  uint64_t max_shard_bytes = 5'000'000'000ull;
  // When positive, replaces max_shard_bytes: the tensors are cut into at most this many shards of
  // about equal size (fewer when a single tensor outweighs a share), e.g. 4.
  int num_shards = 0;
  // Key-value metadata stored with the weights (safetensors: each shard's "__metadata__").
  std::map<std::string, std::string> metadata;
  // Replace an existing output (removed only after the new one is in place under a temporary
  // name). Otherwise an existing output is an error at creation.
  bool overwrite = false;
};

class ModelWriter {
 public:
  virtual ~ModelWriter() = default;
  // Writes a declared tensor; converts nothing: dtype and shape must match the declaration.
  // Any device and layout is accepted.
  virtual absl::Status Write(absl::string_view name, const at::Tensor& tensor) = 0;
  // An extra file of the output (config.json, tokenizer.json, trainer_state.json, ...).
  virtual absl::Status AddFile(absl::string_view file_name, absl::string_view contents) = 0;
  virtual absl::Status CopyFile(const std::string& source_path, absl::string_view file_name) = 0;
  // Moves a finished file (on the same file system) into the output, e.g. a rank's optimizer shard.
  virtual absl::Status MoveFileIn(const std::string& source_path, absl::string_view file_name) = 0;
  // Copies the files of a model directory that travel with its weights (tokenizer files,
  // generation_config.json, a conversion recipe) from `source_dir`, those that exist.
  virtual absl::Status CopySideFiles(const std::string& source_dir) = 0;
  // Checks that every declared tensor was written, syncs and publishes the output.
  virtual absl::Status Commit() = 0;
  // Files the weights are stored in (e.g. safetensors shards).
  virtual int num_weight_files() const = 0;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_MODEL_WRITER_H_
