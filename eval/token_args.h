// Token-id lists given on the command line ("--tokens 128000,9906,1917") or in a file
// (ids separated by commas and/or whitespace), shared by the eval binaries.
//
// Example:
//   ASSIGN_OR_RETURN(std::vector<int64_t> ids, ParseTokenIds("1, 2,3", "--tokens"));  // {1,2,3}
#ifndef LLAMA_MOE_EVAL_TOKEN_ARGS_H_
#define LLAMA_MOE_EVAL_TOKEN_ARGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llama_moe {

// Parses ids separated by commas and/or whitespace; `source` names the flag or file in errors.
// Range checks against the vocabulary happen in the model, which knows it.
absl::StatusOr<std::vector<int64_t>> ParseTokenIds(absl::string_view text, absl::string_view source);

// "1,2,3"
std::string JoinTokenIds(const std::vector<int64_t>& ids);

}  // namespace llama_moe

#endif  // LLAMA_MOE_EVAL_TOKEN_ARGS_H_
