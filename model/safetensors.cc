#include "model/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace llama_moe {

c10::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kBool: return c10::kBool;
    case DType::kU8: return c10::kByte;
    case DType::kI8: return c10::kChar;
    case DType::kI16: return c10::kShort;
    case DType::kI32: return c10::kInt;
    case DType::kI64: return c10::kLong;
    case DType::kF16: return c10::kHalf;
    case DType::kBF16: return c10::kBFloat16;
    case DType::kF32: return c10::kFloat;
    case DType::kF64: return c10::kDouble;
  }
  return c10::kFloat;
}

absl::StatusOr<DType> FromScalarType(c10::ScalarType type) {
  switch (type) {
    case c10::kBool: return DType::kBool;
    case c10::kByte: return DType::kU8;
    case c10::kChar: return DType::kI8;
    case c10::kShort: return DType::kI16;
    case c10::kInt: return DType::kI32;
    case c10::kLong: return DType::kI64;
    case c10::kHalf: return DType::kF16;
    case c10::kBFloat16: return DType::kBF16;
    case c10::kFloat: return DType::kF32;
    case c10::kDouble: return DType::kF64;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor dtype ", c10::toString(type), " has no safetensors equivalent"));
  }
}

absl::StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("safetensors file '", path, "': cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("safetensors file '", path, "': not a regular file"));
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {
    // MAP_PRIVATE + PROT_WRITE: copy-on-write, so an in-place op on a zero-copy tensor can neither
    // crash on a read-only page nor modify the checkpoint on disk.
    void* p = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("safetensors file '", path, "': mmap failed: ", std::strerror(err)));
    }
    f->base_ = static_cast<uint8_t*>(p);
    const uint64_t size = f->size_;
    f->mapping_ = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
  }
  ::close(fd);  // the mapping keeps the file's pages reachable
  static const uint8_t kEmpty[1] = {0};
  absl::StatusOr<SafetensorsHeader> h =
      ParseSafetensorsPrefix(f->base_ ? f->base_ : kEmpty, f->size_, path);
  if (!h.ok()) return h.status();
  f->header_ = *std::move(h);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) {
    f->index_.emplace(f->header_.tensors[i].name, i);
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

const TensorEntry* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const uint8_t* SafetensorsFile::Data(const TensorEntry& entry) const {
  return base_ + header_.data_start + entry.begin;
}

void SafetensorsFile::Release(const TensorEntry& entry) const {
  if (base_ == nullptr) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(base_ + header_.data_start + entry.begin);
  const uintptr_t end = reinterpret_cast<uintptr_t>(base_ + header_.data_start + entry.end);
  // Only whole pages inside the tensor: neighbours sharing a page keep theirs.
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = end / page * page;
  // A written (copy-on-write) page would lose its changes; the reader's callers only release
  // tensors they did not modify in place.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void SafetensorsFile::Prefetch(const TensorEntry& entry) const {
  if (base_ == nullptr || entry.end <= entry.begin) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(base_ + header_.data_start + entry.begin) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(base_ + header_.data_start + entry.end);
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);  // advice only: failure costs nothing
}

absl::StatusOr<at::Tensor> SafetensorsFile::Get(absl::string_view name) const {
  const TensorEntry* e = Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("safetensors file '", path_, "': no tensor '", name, "'"));
  }
  return Get(*e);
}

at::Tensor SafetensorsFile::Get(const TensorEntry& entry) const {
  const auto options = at::TensorOptions().dtype(ToScalarType(entry.dtype)).device(at::kCPU);
  if (entry.nbytes() == 0) return at::empty(entry.shape, options);
  uint8_t* data = base_ + header_.data_start + entry.begin;
  if (reinterpret_cast<uintptr_t>(data) % DTypeSize(entry.dtype) == 0) {
    std::shared_ptr<void> keep = mapping_;
    return at::from_blob(data, entry.shape, [keep](void*) mutable { keep.reset(); }, options);
  }
  // Misaligned data (another writer's odd header padding): copy into an aligned buffer.
  at::Tensor t = at::empty(entry.shape, options);
  std::memcpy(t.data_ptr(), data, entry.nbytes());
  return t;
}

}  // namespace llama_moe
