// Reading safetensors files into LibTorch tensors through a memory mapping.
//
// Opening a file maps it and validates its header (model/safetensors_header.h); no tensor data is
// read until a tensor is asked for. A tensor whose bytes are aligned for its dtype is returned
// as a view of the mapping (no copy); the mapping stays alive as long as any such tensor does.
// The mapping is private and writable, so an in-place op on a returned tensor changes only this
// process's pages, never the file.
//
// Example:
//   ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::Open("/models/llama3-8b/model-00001-of-00004.safetensors"));
//   ASSIGN_OR_RETURN(at::Tensor w, f->Get("model.embed_tokens.weight"));
#ifndef LLAMA_MOE_MODEL_SAFETENSORS_H_
#define LLAMA_MOE_MODEL_SAFETENSORS_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/safetensors_header.h"

namespace llama_moe {

c10::ScalarType ToScalarType(DType dtype);
absl::StatusOr<DType> FromScalarType(c10::ScalarType type);

class SafetensorsFile {
 public:
  static absl::StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // nullptr when absent.
  const TensorEntry* Find(absl::string_view name) const;
  // The tensor `name`, zero-copy where alignment allows. NotFound names the file and tensor.
  absl::StatusOr<at::Tensor> Get(absl::string_view name) const;
  at::Tensor Get(const TensorEntry& entry) const;
  // Raw bytes of a tensor, inside the mapping.
  const uint8_t* Data(const TensorEntry& entry) const;
  uint64_t file_size() const { return size_; }
  // Drops this process's resident pages of a tensor (they are re-read from the file if touched
  // again, and tensors viewing them stay valid). Streaming readers call it after each tensor so
  // that resident memory stays at one tensor rather than growing to the checkpoint's size.
  void Release(const TensorEntry& entry) const;
  // Asks the kernel to start reading a tensor's pages in the background (MADV_WILLNEED), so that
  // a streaming reader's next tensor arrives while it works on the current one.
  void Prefetch(const TensorEntry& entry) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in header_.tensors
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  // Shared with every zero-copy tensor so that the mapping outlives the file object if needed.
  std::shared_ptr<void> mapping_;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_SAFETENSORS_H_
