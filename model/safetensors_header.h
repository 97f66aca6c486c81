// Parsing and validation of safetensors headers, without LibTorch.
//
// A safetensors file is: an 8-byte little-endian header length N, N bytes of JSON, then the data
// section. The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) plus an optional "__metadata__" map of strings. This parser is the
// single gate between untrusted bytes and the rest of the project: it checks every field, the
// byte counts against dtype and shape, that offsets neither overlap nor leave holes, and that the
// data section is exactly covered. The fuzzer in model/fuzz targets ParseSafetensorsPrefix.
//
// Example:
//   const std::string file = std::string("\x02\0\0\0\0\0\0\0", 8) + "{}";  // a file with no tensors
//   ASSIGN_OR_RETURN(SafetensorsHeader h, ParseSafetensorsPrefix(reinterpret_cast<const uint8_t*>(file.data()),
//                                                                file.size(), "empty.safetensors"));
//   for (const TensorEntry& t : h.tensors) std::cout << t.name << " " << DTypeName(t.dtype) << "\n";
#ifndef LLAMA_MOE_MODEL_SAFETENSORS_HEADER_H_
#define LLAMA_MOE_MODEL_SAFETENSORS_HEADER_H_

#include <cstdint>
#include <map>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace llama_moe {

// Element types of the safetensors format that the project reads and writes.
enum class DType : uint8_t { kBool, kU8, kI8, kI16, kI32, kI64, kF16, kBF16, kF32, kF64 };

absl::StatusOr<DType> ParseDType(absl::string_view name);  // "F32" -> kF32
absl::string_view DTypeName(DType dtype);                  // kF32 -> "F32"
uint64_t DTypeSize(DType dtype);                          // kBF16 -> 2

// Parses a user-facing dtype spelling: "float32"/"f32"/"F32", "bfloat16"/"bf16", "float16"/"f16".
absl::StatusOr<DType> ParseFloatDTypeFlag(absl::string_view name);
// HF config.json spelling of a floating dtype ("float32", "bfloat16", "float16").
absl::string_view TorchDTypeName(DType dtype);

// "[4096,14336]"
std::string ShapeString(const std::vector<int64_t>& shape);

struct TensorEntry {
  std::string name;            // e.g. "model.layers.0.mlp.up_proj.weight"
  DType dtype = DType::kF32;   // element type
  std::vector<int64_t> shape;  // e.g. {14336, 4096}
  uint64_t begin = 0;          // byte offset of the first element in the data section
  uint64_t end = 0;            // one past the last byte in the data section

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;            // sorted by data offset
  std::map<std::string, std::string> metadata;  // "__metadata__"
  uint64_t data_start = 0;                     // file offset of the data section (8 + N)
  uint64_t data_size = 0;                      // bytes in the data section
};

// Largest header accepted (the reference implementation's limit too): a larger one is an attack or
// corruption, never a real checkpoint.
inline constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Parses the header JSON of a file whose data section has `data_size` bytes. `file_name` only
// appears in error messages.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view header_json,
                                                         uint64_t data_size,
                                                         absl::string_view file_name);

// Parses a whole file image: the 8-byte length, the header and the data section of `file_size`
// bytes in total (only the first 8 + N bytes are read).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsPrefix(const uint8_t* bytes, uint64_t file_size,
                                                         absl::string_view file_name);

// Builds the 8-byte length plus JSON header for tensors laid out back to back in the given order
// (their begin/end are assigned here). The JSON is padded with spaces so that the data section
// starts at a multiple of 8 bytes, which keeps every tensor whose offset is aligned zero-copy.
std::string BuildSafetensorsHeader(std::vector<TensorEntry>* tensors,
                                   const std::map<std::string, std::string>& metadata);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_SAFETENSORS_HEADER_H_
