// Streaming, atomic writer of a Hugging Face model directory: the safetensors format's
// ModelWriter (model/model_writer.h).
//
// The caller declares every tensor (name, dtype, shape) up front. The writer assigns tensors to
// shards of at most `max_shard_bytes` in the declared order (inside a shard, wider dtypes first so
// every tensor is aligned for zero-copy reads), writes each shard's header at once,
// and then accepts tensors in any order, writing each straight to its final offset; nothing is
// buffered, so peak memory is one tensor. Everything goes into a temporary sibling directory
// (`<dir>.tmp-<pid>-<n>`) that Commit() renames to `dir` after checking that every declared tensor
// was written; a writer destroyed without Commit() removes the temporary directory, so a failed
// run leaves no output directory behind.
//
// Example:
//   const std::vector<TensorSpec> specs = {{"a", DType::kBF16, {4, 2}}, {"b", DType::kF32, {3}}};
//   ASSIGN_OR_RETURN(auto w, CheckpointWriter::Create("/tmp/example_checkpoint", specs, {}));
//   for (const TensorSpec& s : specs) RETURN_IF_ERROR(w->Write(s.name, at::zeros(s.shape, ToScalarType(s.dtype))));
//   RETURN_IF_ERROR(w->AddFile("config.json", "{}"));
//   RETURN_IF_ERROR(w->Commit());
#ifndef LLAMA_MOE_MODEL_CHECKPOINT_WRITER_H_
#define LLAMA_MOE_MODEL_CHECKPOINT_WRITER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/model_writer.h"
#include "model/safetensors_header.h"
#include "model/tensor_spec.h"

namespace llama_moe {

// Each shard's "__metadata__" holds ModelWriterOptions::metadata plus {"format": "pt"}, as HF
// expects; an existing `dir` is replaced at Commit() with `overwrite`, else refused at Create().
class CheckpointWriter : public ModelWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(
      const std::string& dir, std::vector<TensorSpec> specs, const ModelWriterOptions& options);
  ~CheckpointWriter() override;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // The data is copied to contiguous CPU memory first.
  absl::Status Write(absl::string_view name, const at::Tensor& tensor) override;
  absl::Status AddFile(absl::string_view file_name, absl::string_view contents) override;
  absl::Status CopyFile(const std::string& source_path, absl::string_view file_name) override;
  absl::Status MoveFileIn(const std::string& source_path, absl::string_view file_name) override;
  absl::Status CopySideFiles(const std::string& source_dir) override;
  // Checks completeness, syncs, writes the index (when sharded) and renames into place.
  absl::Status Commit() override;

  int num_weight_files() const override { return static_cast<int>(shards_.size()); }

 private:
  struct Placement {
    TensorSpec spec;
    int shard = 0;
    uint64_t offset = 0;  // file offset of the tensor's first byte
    bool written = false;
  };
  struct Shard {
    std::string file_name;
    int fd = -1;
    uint64_t size = 0;
  };

  CheckpointWriter() = default;

  std::string dir_;
  std::string temp_dir_;
  ModelWriterOptions options_;
  std::vector<Placement> placements_;
  std::map<std::string, size_t, std::less<>> by_name_;
  std::vector<Shard> shards_;
  bool committed_ = false;
};

// Writes one safetensors file holding `tensors` (in memory; for small files such as logits or
// optimizer shards), atomically: a temporary sibling renamed over `path`.
absl::Status WriteSafetensorsFile(const std::string& path,
                                  const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

// Reads every tensor of one safetensors file into memory (copies, independent of the file).
absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensorsFile(const std::string& path);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_CHECKPOINT_WRITER_H_
