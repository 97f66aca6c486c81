// Writing a GGUF file (the single-file format llama.cpp and the tools built on it load): typed
// key-value metadata, then a table of tensors, then the tensors' bytes, each aligned.
//
// The header is written first from the declared tensors, so tensors can then be written one at a
// time, in any order, straight from a mapped checkpoint: an 8B export never holds more than one
// tensor. The file appears under its final name only at Commit(); a writer destroyed before
// Commit() removes its temporary file.
//
// Example:
//   GgufWriter w;
//   w.SetString("general.architecture", "llama");
//   w.SetU32("llama.block_count", 1);
//   w.AddTensor("token_embd.weight", GgufType::kF32, {4, 2});  // PyTorch shape [rows, cols]
//   RETURN_IF_ERROR(w.Open("/tmp/example.gguf", /*overwrite=*/true));
//   RETURN_IF_ERROR(w.WriteTensor("token_embd.weight", at::zeros({4, 2})));
//   RETURN_IF_ERROR(w.Commit());
#ifndef LLAMA_MOE_CONVERT_GGUF_FILE_H_
#define LLAMA_MOE_CONVERT_GGUF_FILE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

// ggml tensor types this project writes (values are ggml's `enum ggml_type`).
enum class GgufType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 30,
};
const char* GgufTypeName(GgufType t);
// The ATen dtype whose bytes a tensor of type `t` holds.
c10::ScalarType GgufScalarType(GgufType t);

// GGUF's alignment of tensor data, unless general.alignment says otherwise.
inline constexpr uint64_t kGgufAlignment = 32;

class GgufWriter {
 public:
  GgufWriter() = default;
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;
  ~GgufWriter();  // removes the temporary file unless committed

  // Metadata, in the order set (a key set twice keeps its first position, last value).
  void SetString(const std::string& key, const std::string& value);
  void SetU32(const std::string& key, uint32_t value);
  void SetI32(const std::string& key, int32_t value);
  void SetF32(const std::string& key, float value);
  void SetBool(const std::string& key, bool value);
  void SetStringArray(const std::string& key, const std::vector<std::string>& values);
  void SetI32Array(const std::string& key, const std::vector<int32_t>& values);
  // Every key of `other`, in its order (metadata prepared once, written into another file).
  void CopyMetadataFrom(const GgufWriter& other);

  // Declares a tensor by its PyTorch shape (outermost first); GGUF stores it innermost first.
  void AddTensor(const std::string& name, GgufType type, const std::vector<int64_t>& shape);

  // Creates `path`'s temporary sibling and writes the header. An existing `path` is an error
  // unless `overwrite`.
  absl::Status Open(const std::string& path, bool overwrite);
  // Writes a declared tensor's bytes; its dtype and shape must match the declaration.
  absl::Status WriteTensor(const std::string& name, const at::Tensor& tensor);
  // Checks every declared tensor was written, syncs and renames the file into place.
  absl::Status Commit();

  uint64_t tensor_bytes() const;  // sum of the declared tensors' sizes

 private:
  struct Tensor {
    std::string name;
    GgufType type;
    std::vector<int64_t> shape;
    uint64_t offset = 0;  // from the start of the data section
    uint64_t bytes = 0;
    bool written = false;
  };
  void SetRaw(const std::string& key, std::string encoded);

  std::vector<std::string> kv_order_;
  std::map<std::string, std::string> kv_;  // key -> encoded type + value
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  bool committed_ = false;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_GGUF_FILE_H_
