// model.safetensors.index.json: which shard file holds each tensor of a sharded checkpoint.
//
// Example:
//   ASSIGN_OR_RETURN(auto weight_map,
//                    ParseSafetensorsIndex(R"({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})",
//                                          "model.safetensors.index.json"));
//   const std::string shard = weight_map["lm_head.weight"];
#ifndef LLAMA_MOE_MODEL_SAFETENSORS_INDEX_H_
#define LLAMA_MOE_MODEL_SAFETENSORS_INDEX_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

// A hostile index could name any number of files for Open() to map; real ones name a few
// hundred at most (405B models: 191).
inline constexpr size_t kMaxIndexShards = 10000;

// Tensor name -> shard file name, from the index's text. Errors name `path`: not JSON, no
// "weight_map" object, a non-string or path-like shard name, more than kMaxIndexShards shards.
absl::StatusOr<std::map<std::string, std::string>> ParseSafetensorsIndex(absl::string_view text,
                                                                         const std::string& path);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_SAFETENSORS_INDEX_H_
