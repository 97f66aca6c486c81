// Small file-system helpers with Status errors that name the path.
//
// Example:
//   ASSIGN_OR_RETURN(std::string text, ReadFileToString(JoinPath("/models/llama3-8b", "config.json")));
//   RETURN_IF_ERROR(WriteStringToFile("/tmp/config.json", text));
#ifndef LLAMA_MOE_MODEL_FILE_UTIL_H_
#define LLAMA_MOE_MODEL_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

// Metadata files (config.json, the safetensors index, recipes, training configs, manifests,
// trainer state) are kilobytes to a few megabytes; a larger one is refused before it is read.
inline constexpr uint64_t kMaxMetadataFileBytes = uint64_t{64} << 20;

// Reads the whole file; a file larger than `max_bytes` is refused (naming the path and both
// sizes) before anything is allocated.
absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             uint64_t max_bytes = std::numeric_limits<uint64_t>::max());
// Writes `contents` and fsyncs, so that a later rename publishes complete bytes.
absl::Status WriteStringToFile(const std::string& path, absl::string_view contents);
bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Removes a file or a directory tree; a missing path is not an error.
absl::Status RemoveAll(const std::string& path);
// Faults [data, data + bytes) into memory now (a mapped file's pages are read from the page cache
// or disk): MADV_POPULATE_READ where the kernel has it, else a read of one byte per page. The
// memory must be mapped and readable.
void PrefaultMemory(const void* data, size_t bytes);
// "a/b" + "c" -> "a/b/c".
std::string JoinPath(absl::string_view a, absl::string_view b);
// Resolves a path given on the command line: relative paths are taken from the directory the
// user ran `bazel run` in (BUILD_WORKING_DIRECTORY), or the current directory otherwise.
std::string ResolveUserPath(const std::string& path);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_FILE_UTIL_H_
