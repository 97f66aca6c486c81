// A Hugging Face model directory: config.json plus one `model.safetensors` or shards listed by
// `model.safetensors.index.json`.
//
// Open() validates the index against the shards (every listed shard exists and holds every
// tensor the index assigns to it; no tensor in two shards) by reading headers only; tensor data is
// touched lazily by Get().
//
// Example:
//   ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open("/models/llama3-8b"));
//   ASSIGN_OR_RETURN(at::Tensor q, ckpt->Get("model.layers.0.self_attn.q_proj.weight"));
#ifndef LLAMA_MOE_MODEL_CHECKPOINT_H_
#define LLAMA_MOE_MODEL_CHECKPOINT_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/llama_config.h"
#include "model/safetensors.h"

namespace llama_moe {

inline constexpr char kConfigFile[] = "config.json";
inline constexpr char kSingleFile[] = "model.safetensors";
inline constexpr char kIndexFile[] = "model.safetensors.index.json";

class Checkpoint {
 public:
  // Opens the tensors of `dir` (config.json is read separately by `config()`).
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Parsed config.json of the directory.
  absl::StatusOr<LlamaConfig> LoadConfig() const;
  // Sorted names of all tensors.
  std::vector<std::string> TensorNames() const;
  bool Has(absl::string_view name) const;
  // Header entry and the shard holding it; NotFound otherwise.
  absl::StatusOr<std::pair<const TensorEntry*, const SafetensorsFile*>> Find(absl::string_view name) const;
  absl::StatusOr<at::Tensor> Get(absl::string_view name) const;
  // See SafetensorsFile::Release; unknown names are ignored.
  void Release(absl::string_view name) const;
  // See SafetensorsFile::Prefetch; unknown names are ignored.
  void Prefetch(absl::string_view name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& shards() const { return shards_; }
  // Sum of tensor bytes over all shards.
  uint64_t total_bytes() const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor name -> shard position
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_CHECKPOINT_H_
