#include "model/safetensors_index.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "model/json_util.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {

absl::StatusOr<std::map<std::string, std::string>> ParseSafetensorsIndex(absl::string_view text,
                                                                         const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json root, ParseJson(text, absl::StrCat("index '", path, "'")));
  if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("index '", path, "' has no \"weight_map\" object"));
  }
  std::map<std::string, std::string> map;
  std::set<std::string> shards;
  for (auto it = root["weight_map"].begin(); it != root["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("index '", path, "': tensor '", it.key(),
                                                     "' maps to a non-string shard name"));
    }
    const std::string shard = it.value().get<std::string>();
    // Shards live in the model directory; a path component would escape it.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return absl::InvalidArgumentError(absl::StrCat("index '", path, "': tensor '", it.key(),
                                                     "' maps to invalid shard name '", shard, "'"));
    }
    if (shards.insert(shard).second && shards.size() > kMaxIndexShards) {
      return absl::InvalidArgumentError(
          absl::StrCat("index '", path, "' names more than ", kMaxIndexShards, " shard files"));
    }
    map[it.key()] = shard;
  }
  return map;
}

}  // namespace llama_moe
