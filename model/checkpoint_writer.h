// Streaming, atomic writer of a Hugging Face model directory.
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
//   ASSIGN_OR_RETURN(auto w, CheckpointWriter::Create(out_dir, specs, {}));
//   for (const TensorSpec& s : specs) RETURN_IF_ERROR(w->Write(s.name, MakeTensor(s)));
//   RETURN_IF_ERROR(w->AddFile("config.json", LlamaConfigToJson(cfg)));
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
#include "model/safetensors_header.h"

namespace llama_moe {

struct TensorSpec {
  std::string name;            // e.g. "model.layers.0.mlp.up_proj.weight"
  DType dtype = DType::kF32;   // stored element type
  std::vector<int64_t> shape;  // e.g. {14336, 4096}

  uint64_t nbytes() const;
};

struct CheckpointWriterOptions {
  // Shard size bound, e.g. 5 GB as HF uses; a single tensor larger than this gets its own shard.
  uint64_t max_shard_bytes = 5'000'000'000ull;
  // When positive, replaces max_shard_bytes: the tensors are cut into at most this many shards of
  // about equal size (fewer when a single tensor outweighs a share), e.g. 4.
  int num_shards = 0;
  // Written into each shard's "__metadata__" ({"format": "pt"} is always added, as HF expects).
  std::map<std::string, std::string> metadata;
  // Replace an existing `dir` at Commit() (the old one is removed only after the new one is in
  // place under a temporary name). Otherwise an existing `dir` is an error at Create().
  bool overwrite = false;
};

class CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(
      const std::string& dir, std::vector<TensorSpec> specs, const CheckpointWriterOptions& options);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Writes a declared tensor; converts nothing: dtype and shape must match the declaration.
  // Any device and layout is accepted (the data is copied to contiguous CPU memory first).
  absl::Status Write(absl::string_view name, const at::Tensor& tensor);
  // Writes an extra file (config.json, tokenizer.json, ...) into the output directory.
  absl::Status AddFile(absl::string_view file_name, absl::string_view contents);
  absl::Status CopyFile(const std::string& source_path, absl::string_view file_name);
  // Copies the files of a model directory that travel with its weights (tokenizer files,
  // generation_config.json, a conversion recipe) from `source_dir`, those that exist.
  absl::Status CopySideFiles(const std::string& source_dir);
  // Checks completeness, syncs, writes the index (when sharded) and renames into place.
  absl::Status Commit();

  const std::string& temp_dir() const { return temp_dir_; }
  int num_shards() const { return static_cast<int>(shards_.size()); }

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
  CheckpointWriterOptions options_;
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
