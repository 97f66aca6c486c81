#include "model/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/json_util.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

using json = nlohmann::json;

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  uint64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},     {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},   {DType::kI32, "I32", 4},   {DType::kI64, "I64", 8},
    {DType::kF16, "F16", 2},   {DType::kBF16, "BF16", 2}, {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
};

absl::Status Invalid(absl::string_view file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file '", file, "': ", what));
}

absl::Status InvalidTensor(absl::string_view file, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors file '", file, "': tensor '", tensor, "': ", what));
}

// A non-negative integer that fits in 64 bits, or nullopt.
bool AsUnsigned(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const json& v, uint64_t data_size,
                                       absl::string_view file) {
  if (!v.is_object()) return InvalidTensor(file, name, "entry is not a JSON object");
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets") {
      return InvalidTensor(file, name, absl::StrCat("unknown field '", it.key(), "'"));
    }
  }
  TensorEntry t;
  t.name = name;
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) return InvalidTensor(file, name, "missing string 'dtype'");
  absl::StatusOr<DType> dtype = ParseDType(dt->get<std::string>());
  if (!dtype.ok()) return InvalidTensor(file, name, dtype.status().message());
  t.dtype = *dtype;

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) return InvalidTensor(file, name, "missing array 'shape'");
  // numel is bounded by the data section, so overflow can be detected against it.
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : *sh) {
    uint64_t dim;
    if (!AsUnsigned(d, &dim) || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return InvalidTensor(file, name, absl::StrCat("shape ", sh->dump(), " has a dimension that is not a non-negative integer"));
    }
    t.shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim) overflow = true;
    numel *= dim;
  }

  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !AsUnsigned((*off)[0], &t.begin) ||
      !AsUnsigned((*off)[1], &t.end)) {
    return InvalidTensor(file, name, "'data_offsets' must be two non-negative integers");
  }
  if (t.begin > t.end) {
    return InvalidTensor(file, name, absl::StrCat("data_offsets [", t.begin, ",", t.end, "] are reversed"));
  }
  if (t.end > data_size) {
    return InvalidTensor(file, name,
                         absl::StrCat("data_offsets [", t.begin, ",", t.end, "] run past the data section of ",
                                      data_size, " bytes (file truncated?)"));
  }
  const uint64_t esize = DTypeSize(t.dtype);
  if (overflow || numel > std::numeric_limits<uint64_t>::max() / esize ||
      numel * esize != t.nbytes()) {
    return InvalidTensor(
        file, name,
        absl::StrCat("holds ", t.nbytes(), " bytes but shape ", ShapeString(t.shape), " of ",
                     DTypeName(t.dtype), " needs ",
                     overflow ? std::string("more than 2^64") : absl::StrCat(numel * esize)));
  }
  return t;
}

}  // namespace

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", name, "'"));
}

absl::string_view DTypeName(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

uint64_t DTypeSize(DType dtype) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

absl::StatusOr<DType> ParseFloatDTypeFlag(absl::string_view name) {
  if (name == "float32" || name == "f32" || name == "F32" || name == "float") return DType::kF32;
  if (name == "bfloat16" || name == "bf16" || name == "BF16") return DType::kBF16;
  if (name == "float16" || name == "f16" || name == "F16" || name == "half") return DType::kF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown floating dtype '", name, "' (expected float32, bfloat16 or float16)"));
}

absl::string_view TorchDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    case DType::kF64: return "float64";
    default: return DTypeName(dtype);
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view header_json,
                                                         uint64_t data_size,
                                                         absl::string_view file) {
  // nlohmann keeps the last of duplicate keys silently; a parse callback sees every key and
  // catches a tensor listed twice.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json root;
  try {
    if (absl::Status deep = CheckJsonNesting(header_json, "header"); !deep.ok()) return Invalid(file, deep.message());
    root = json::parse(header_json.begin(), header_json.end(), cb);
  } catch (const json::exception& e) {
    return Invalid(file, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) return InvalidTensor(file, duplicate, "name appears twice in the header");
  if (!root.is_object()) return Invalid(file, "header is not a JSON object");

  SafetensorsHeader h;
  h.data_size = data_size;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) return Invalid(file, "'__metadata__' is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return Invalid(file, absl::StrCat("'__metadata__' value of '", m.key(), "' is not a string"));
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    absl::StatusOr<TensorEntry> t = ParseEntry(it.key(), it.value(), data_size, file);
    if (!t.ok()) return t.status();
    h.tensors.push_back(*std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Tensors must tile the data section: no overlap (two names aliasing bytes), no hole, no tail.
  uint64_t expected = 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorEntry& t = h.tensors[i];
    if (t.begin < expected) {
      return InvalidTensor(file, t.name,
                           absl::StrCat("data_offsets [", t.begin, ",", t.end, "] overlap tensor '",
                                        h.tensors[i - 1].name, "' [", h.tensors[i - 1].begin, ",",
                                        h.tensors[i - 1].end, "]"));
    }
    if (t.begin > expected) {
      return InvalidTensor(file, t.name,
                           absl::StrCat("data_offsets [", t.begin, ",", t.end, "] leave a hole of ",
                                        t.begin - expected, " bytes before it"));
    }
    expected = t.end;
  }
  if (expected != data_size) {
    return Invalid(file, absl::StrCat("data section has ", data_size, " bytes but tensors cover ",
                                      expected, " (trailing bytes)"));
  }
  return h;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsPrefix(const uint8_t* bytes, uint64_t file_size,
                                                         absl::string_view file) {
  if (file_size < 8) {
    return Invalid(file, absl::StrCat("file has ", file_size, " bytes, fewer than the 8-byte header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeaderBytes) {
    return Invalid(file, absl::StrCat("header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (n > file_size - 8) {
    return Invalid(file, absl::StrCat("header length ", n, " runs past the end of the file (",
                                      file_size, " bytes; truncated?)"));
  }
  absl::string_view text(reinterpret_cast<const char*>(bytes + 8), n);
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsHeader(text, file_size - 8 - n, file);
  if (h.ok()) h->data_start = 8 + n;
  return h;
}

std::string BuildSafetensorsHeader(std::vector<TensorEntry>* tensors,
                                   const std::map<std::string, std::string>& metadata) {
  json root = json::object();
  if (!metadata.empty()) root["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (TensorEntry& t : *tensors) {
    t.begin = offset;
    t.end = offset + static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype);
    offset = t.end;
    root[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                    {"shape", t.shape},
                    {"data_offsets", {t.begin, t.end}}};
  }
  std::string text = root.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace llama_moe
