#include "convert/gguf_file.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/file_util.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

// GGUF metadata value types (gguf.h's `enum gguf_type`).
enum ValueType : uint32_t {
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
};

constexpr uint32_t kGgufVersion = 3;

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void PutString(std::string* out, absl::string_view s) {
  Put<uint64_t>(out, s.size());
  out->append(s.data(), s.size());
}

uint64_t AlignUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

absl::Status PWriteAll(int fd, const char* data, uint64_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, data, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::DataLossError(absl::StrCat("cannot write '", path, "': ", std::strerror(errno)));
    }
    data += w;
    n -= static_cast<uint64_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

uint64_t ElementBytes(GgufType t) { return t == GgufType::kF32 ? 4 : 2; }

}  // namespace

const char* GgufTypeName(GgufType t) {
  switch (t) {
    case GgufType::kF32: return "f32";
    case GgufType::kF16: return "f16";
    case GgufType::kBF16: return "bf16";
  }
  return "?";
}

c10::ScalarType GgufScalarType(GgufType t) {
  switch (t) {
    case GgufType::kF32: return at::kFloat;
    case GgufType::kF16: return at::kHalf;
    case GgufType::kBF16: return at::kBFloat16;
  }
  return at::kFloat;
}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_path_.empty()) std::remove(tmp_path_.c_str());
}

void GgufWriter::SetRaw(const std::string& key, std::string encoded) {
  if (kv_.find(key) == kv_.end()) kv_order_.push_back(key);
  kv_[key] = std::move(encoded);
}

void GgufWriter::SetString(const std::string& key, const std::string& value) {
  std::string e;
  Put<uint32_t>(&e, kString);
  PutString(&e, value);
  SetRaw(key, std::move(e));
}

void GgufWriter::SetU32(const std::string& key, uint32_t value) {
  std::string e;
  Put<uint32_t>(&e, kU32);
  Put<uint32_t>(&e, value);
  SetRaw(key, std::move(e));
}

void GgufWriter::SetI32(const std::string& key, int32_t value) {
  std::string e;
  Put<uint32_t>(&e, kI32);
  Put<int32_t>(&e, value);
  SetRaw(key, std::move(e));
}

void GgufWriter::SetF32(const std::string& key, float value) {
  std::string e;
  Put<uint32_t>(&e, kF32);
  Put<float>(&e, value);
  SetRaw(key, std::move(e));
}

void GgufWriter::SetBool(const std::string& key, bool value) {
  std::string e;
  Put<uint32_t>(&e, kBool);
  Put<uint8_t>(&e, value ? 1 : 0);
  SetRaw(key, std::move(e));
}

void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& values) {
  std::string e;
  Put<uint32_t>(&e, kArray);
  Put<uint32_t>(&e, kString);
  Put<uint64_t>(&e, values.size());
  for (const std::string& v : values) PutString(&e, v);
  SetRaw(key, std::move(e));
}

void GgufWriter::SetI32Array(const std::string& key, const std::vector<int32_t>& values) {
  std::string e;
  Put<uint32_t>(&e, kArray);
  Put<uint32_t>(&e, kI32);
  Put<uint64_t>(&e, values.size());
  for (int32_t v : values) Put<int32_t>(&e, v);
  SetRaw(key, std::move(e));
}

void GgufWriter::CopyMetadataFrom(const GgufWriter& other) {
  for (const std::string& key : other.kv_order_) SetRaw(key, other.kv_.at(key));
}

void GgufWriter::AddTensor(const std::string& name, GgufType type, const std::vector<int64_t>& shape) {
  Tensor t;
  t.name = name;
  t.type = type;
  t.shape = shape;
  t.bytes = ElementBytes(type);
  for (int64_t d : shape) t.bytes *= static_cast<uint64_t>(d);
  tensor_index_[name] = tensors_.size();
  tensors_.push_back(std::move(t));
}

uint64_t GgufWriter::tensor_bytes() const {
  uint64_t n = 0;
  for (const Tensor& t : tensors_) n += t.bytes;
  return n;
}

absl::Status GgufWriter::Open(const std::string& path, bool overwrite) {
  if (fd_ >= 0) return absl::FailedPreconditionError(absl::StrCat("'", path, "' is already open"));
  if (tensor_index_.size() != tensors_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': a tensor name is declared twice"));
  }
  if (PathExists(path)) {
    if (!overwrite) {
      return absl::AlreadyExistsError(absl::StrCat("output '", path, "' exists (pass --overwrite to replace it)"));
    }
    if (IsDirectory(path)) {
      return absl::FailedPreconditionError(absl::StrCat("output '", path, "' is a directory, not a file"));
    }
  }
  path_ = path;
  tmp_path_ = absl::StrCat(path, ".tmp-", ::getpid());
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const std::string tmp = tmp_path_;
    tmp_path_.clear();
    return absl::PermissionDeniedError(absl::StrCat("cannot create '", tmp, "': ", std::strerror(errno)));
  }

  std::string header;
  header.append("GGUF", 4);
  Put<uint32_t>(&header, kGgufVersion);
  Put<uint64_t>(&header, tensors_.size());
  Put<uint64_t>(&header, kv_order_.size());
  for (const std::string& key : kv_order_) {
    PutString(&header, key);
    header += kv_[key];
  }
  uint64_t offset = 0;
  for (Tensor& t : tensors_) {
    PutString(&header, t.name);
    Put<uint32_t>(&header, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) Put<uint64_t>(&header, static_cast<uint64_t>(*it));
    Put<uint32_t>(&header, static_cast<uint32_t>(t.type));
    t.offset = offset;
    Put<uint64_t>(&header, offset);
    offset = AlignUp(offset + t.bytes, kGgufAlignment);
  }
  data_start_ = AlignUp(header.size(), kGgufAlignment);
  header.resize(data_start_, '\0');
  RETURN_IF_ERROR(PWriteAll(fd_, header.data(), header.size(), 0, tmp_path_));
  // The padding between tensors must read as zeros: size the file now so that holes are zeros.
  if (::ftruncate(fd_, static_cast<off_t>(data_start_ + offset)) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot size '", tmp_path_, "' to ", data_start_ + offset, " bytes: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::WriteTensor(const std::string& name, const at::Tensor& tensor) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("GGUF writer for '", path_, "' is not open"));
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path_, "': tensor '", name, "' was not declared"));
  }
  Tensor& t = tensors_[it->second];
  if (t.written) return absl::InvalidArgumentError(absl::StrCat("'", path_, "': tensor '", name, "' written twice"));
  if (tensor.scalar_type() != GgufScalarType(t.type) || tensor.sizes().vec() != t.shape) {
    return absl::InvalidArgumentError(absl::StrCat("'", path_, "': tensor '", name, "' is ", tensor.toString(), " [",
                                                   absl::StrJoin(tensor.sizes().vec(), ","), "], declared ",
                                                   GgufTypeName(t.type), " [", absl::StrJoin(t.shape, ","), "]"));
  }
  const at::Tensor c = tensor.to(at::kCPU).contiguous();
  RETURN_IF_ERROR(
      PWriteAll(fd_, static_cast<const char*>(c.data_ptr()), t.bytes, data_start_ + t.offset, tmp_path_));
  t.written = true;
  return absl::OkStatus();
}

absl::Status GgufWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("GGUF writer for '", path_, "' is not open"));
  for (const Tensor& t : tensors_) {
    if (!t.written) {
      return absl::FailedPreconditionError(absl::StrCat("'", path_, "': tensor '", t.name, "' was never written"));
    }
  }
  if (::fsync(fd_) != 0) return absl::DataLossError(absl::StrCat("cannot sync '", tmp_path_, "': ", std::strerror(errno)));
  ::close(fd_);
  fd_ = -1;
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename '", tmp_path_, "' to '", path_, "': ", std::strerror(errno)));
  }
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace llama_moe
