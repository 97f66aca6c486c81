#include "model/checkpoint_writer.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

absl::Status PWriteAll(int fd, const uint8_t* data, uint64_t size, uint64_t offset,
                       const std::string& path) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::DataLossError(absl::StrCat("cannot write '", path, "': ", std::strerror(errno)));
    }
    data += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

std::string TempSibling(const std::string& dir, absl::string_view what) {
  static std::atomic<int> counter{0};
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  return absl::StrCat(base, ".", what, "-", ::getpid(), "-", counter++);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(
    const std::string& dir, std::vector<TensorSpec> specs, const ModelWriterOptions& options) {
  if (PathExists(dir) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat("output directory '", dir, "' already exists"));
  }
  auto w = std::unique_ptr<CheckpointWriter>(new CheckpointWriter());
  w->dir_ = dir;
  w->options_ = options;
  for (TensorSpec& s : specs) {
    for (int64_t d : s.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", s.name, "' has negative shape ", ShapeString(s.shape)));
      }
    }
    if (!w->by_name_.emplace(s.name, w->placements_.size()).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", s.name, "' is declared twice"));
    }
    w->placements_.push_back(Placement{std::move(s)});
  }

  // Assign shards in declaration order so that related tensors (a layer) stay together.
  int shard = 0;
  if (options.num_shards > 0) {
    // Each tensor goes to the shard its midpoint falls in; empty shards are dropped below.
    uint64_t total = 0, before = 0;
    for (const Placement& p : w->placements_) total += p.spec.nbytes();
    int last = -1;
    for (Placement& p : w->placements_) {
      const uint64_t n = p.spec.nbytes();
      const long double mid = static_cast<long double>(before) + n / 2.0L;
      int s = total == 0 ? 0 : static_cast<int>(mid * options.num_shards / total);
      s = std::min(s, options.num_shards - 1);
      if (s != last) {
        if (last >= 0) ++shard;
        last = s;
      }
      p.shard = shard;
      before += n;
    }
  } else {
    uint64_t used = 0;
    for (Placement& p : w->placements_) {
      const uint64_t n = p.spec.nbytes();
      if (used > 0 && used + n > options.max_shard_bytes) {
        ++shard;
        used = 0;
      }
      p.shard = shard;
      used += n;
    }
  }
  const int num_shards = w->placements_.empty() ? 1 : shard + 1;

  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(dir).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  w->temp_dir_ = TempSibling(dir, "tmp");
  if (::mkdir(w->temp_dir_.c_str(), 0755) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create directory '", w->temp_dir_, "': ", std::strerror(errno)));
  }
  std::map<std::string, std::string> metadata = options.metadata;
  metadata["format"] = "pt";
  for (int s = 0; s < num_shards; ++s) {
    Shard sh;
    sh.file_name = num_shards == 1 ? std::string(kSingleFile)
                                   : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, num_shards);
    std::vector<TensorEntry> entries;
    std::vector<size_t> which;
    for (size_t i = 0; i < w->placements_.size(); ++i) {
      const Placement& p = w->placements_[i];
      if (p.shard != s) continue;
      which.push_back(i);
    }
    // Wider element types first (as the reference serializer does): every tensor then starts at
    // a multiple of its element size, so readers can map it without copying.
    std::stable_sort(which.begin(), which.end(), [&](size_t a, size_t b) {
      return DTypeSize(w->placements_[a].spec.dtype) > DTypeSize(w->placements_[b].spec.dtype);
    });
    for (size_t i : which) {
      const Placement& p = w->placements_[i];
      entries.push_back(TensorEntry{p.spec.name, p.spec.dtype, p.spec.shape});
    }
    const std::string header = BuildSafetensorsHeader(&entries, metadata);
    for (size_t j = 0; j < entries.size(); ++j) {
      w->placements_[which[j]].offset = header.size() + entries[j].begin;
    }
    sh.size = header.size() + (entries.empty() ? 0 : entries.back().end);
    const std::string path = JoinPath(w->temp_dir_, sh.file_name);
    sh.fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sh.fd < 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot create '", path, "': ", std::strerror(errno)));
    }
    w->shards_.push_back(sh);
    RETURN_IF_ERROR(PWriteAll(sh.fd, reinterpret_cast<const uint8_t*>(header.data()), header.size(), 0, path));
    // Reserve the full size now: running out of disk fails here, before any tensor is computed.
    if (::ftruncate(sh.fd, static_cast<off_t>(sh.size)) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot size '", path, "' to ", sh.size, " bytes: ", std::strerror(errno)));
    }
  }
  return w;
}

CheckpointWriter::~CheckpointWriter() {
  for (Shard& s : shards_) {
    if (s.fd >= 0) ::close(s.fd);
  }
  if (!committed_ && !temp_dir_.empty()) RemoveAll(temp_dir_).IgnoreError();
}

absl::Status CheckpointWriter::Write(absl::string_view name, const at::Tensor& tensor) {
  if (committed_) return absl::FailedPreconditionError("checkpoint already committed");
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' was not declared for '", dir_, "'"));
  }
  Placement& p = placements_[it->second];
  if (p.written) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' written twice"));
  ASSIGN_OR_RETURN(DType dtype, FromScalarType(tensor.scalar_type()), absl::StrCat("tensor '", name, "'"));
  std::vector<int64_t> shape(tensor.sizes().begin(), tensor.sizes().end());
  if (dtype != p.spec.dtype || shape != p.spec.shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' is ", DTypeName(dtype), " ", ShapeString(shape), ", declared as ",
        DTypeName(p.spec.dtype), " ", ShapeString(p.spec.shape)));
  }
  at::Tensor c;
  try {
    c = tensor.to(at::kCPU).contiguous();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("tensor '", name, "': ", e.what_without_backtrace()));
  }
  const Shard& sh = shards_[p.shard];
  RETURN_IF_ERROR(PWriteAll(sh.fd, static_cast<const uint8_t*>(c.data_ptr()), p.spec.nbytes(), p.offset,
                            JoinPath(temp_dir_, sh.file_name)));
  p.written = true;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::AddFile(absl::string_view file_name, absl::string_view contents) {
  return WriteStringToFile(JoinPath(temp_dir_, file_name), contents);
}

absl::Status CheckpointWriter::CopyFile(const std::string& source_path, absl::string_view file_name) {
  ASSIGN_OR_RETURN(std::string contents, ReadFileToString(source_path));
  return AddFile(file_name, contents);
}

absl::Status CheckpointWriter::MoveFileIn(const std::string& source_path, absl::string_view file_name) {
  const std::string dst = JoinPath(temp_dir_, file_name);
  if (std::rename(source_path.c_str(), dst.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot move '", source_path, "' into '", dst, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::CopySideFiles(const std::string& source_dir) {
  static constexpr const char* kSideFiles[] = {"tokenizer.json",         "tokenizer_config.json",
                                               "special_tokens_map.json", "generation_config.json",
                                               "tokenizer.model",        "recipe.textproto"};
  for (const char* f : kSideFiles) {
    const std::string src = JoinPath(source_dir, f);
    if (PathExists(src)) RETURN_IF_ERROR(CopyFile(src, f));
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Commit() {
  if (committed_) return absl::FailedPreconditionError("checkpoint already committed");
  for (const Placement& p : placements_) {
    if (!p.written) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor '", p.spec.name, "' was declared but never written to '", dir_, "'"));
    }
  }
  for (Shard& s : shards_) {
    const std::string path = JoinPath(temp_dir_, s.file_name);
    if (::fsync(s.fd) != 0 || ::close(s.fd) != 0) {
      s.fd = -1;
      return absl::DataLossError(absl::StrCat("cannot sync '", path, "': ", std::strerror(errno)));
    }
    s.fd = -1;
  }
  if (shards_.size() > 1) {
    nlohmann::json index;
    uint64_t total = 0;
    for (const Placement& p : placements_) {
      index["weight_map"][p.spec.name] = shards_[p.shard].file_name;
      total += p.spec.nbytes();
    }
    index["metadata"]["total_size"] = total;
    RETURN_IF_ERROR(AddFile(kIndexFile, index.dump(2) + "\n"));
  }
  std::string old;
  if (PathExists(dir_)) {
    if (!options_.overwrite) {
      return absl::AlreadyExistsError(absl::StrCat("output directory '", dir_, "' appeared while writing"));
    }
    old = TempSibling(dir_, "old");
    if (std::rename(dir_.c_str(), old.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot move '", dir_, "' aside: ", std::strerror(errno)));
    }
  }
  if (std::rename(temp_dir_.c_str(), dir_.c_str()) != 0) {
    const int err = errno;
    if (!old.empty()) std::rename(old.c_str(), dir_.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename '", temp_dir_, "' to '", dir_, "': ", std::strerror(err)));
  }
  committed_ = true;
  if (!old.empty()) RETURN_IF_ERROR(RemoveAll(old));
  return absl::OkStatus();
}

absl::Status WriteSafetensorsFile(const std::string& path,
                                  const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::vector<TensorEntry> entries;
  // Wider dtypes first, as in CheckpointWriter, so that every tensor is aligned for its type.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return tensors[a].second.element_size() > tensors[b].second.element_size();
  });
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()), absl::StrCat("tensor '", name, "'"));
    entries.push_back(TensorEntry{name, dtype, t.sizes().vec()});
  }
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  std::vector<TensorEntry> laid_out = entries;
  const std::string header = BuildSafetensorsHeader(&laid_out, meta);
  // Streamed tensor by tensor: no in-memory copy of the whole file (an optimizer shard is 12
  // bytes per trainable element of the rank's slice).
  const std::string tmp = TempSibling(path, "tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat("cannot create '", tmp, "': ", std::strerror(errno)));
  absl::Status status = PWriteAll(fd, reinterpret_cast<const uint8_t*>(header.data()), header.size(), 0, tmp);
  for (size_t k = 0; k < order.size() && status.ok(); ++k) {
    try {
      const at::Tensor c = tensors[order[k]].second.to(at::kCPU).contiguous();
      status = PWriteAll(fd, static_cast<const uint8_t*>(c.data_ptr()), laid_out[k].nbytes(),
                         header.size() + laid_out[k].begin, tmp);
    } catch (const c10::Error& e) {
      status = absl::InternalError(absl::StrCat("tensor '", laid_out[k].name, "': ", e.what_without_backtrace()));
    }
  }
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::DataLossError(absl::StrCat("cannot sync '", tmp, "': ", std::strerror(errno)));
  }
  ::close(fd);
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(absl::StrCat("cannot rename '", tmp, "' to '", path, "': ", std::strerror(errno)));
  }
  if (!status.ok()) RemoveAll(tmp).IgnoreError();
  return status;
}

absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensorsFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const TensorEntry& e : f->header().tensors) out[e.name] = f->Get(e).clone();
  return out;
}

}  // namespace llama_moe
