// JSON from files users hand us, parsed with limits that a hostile file cannot get around.
//
// nlohmann::json parses nesting of any depth iteratively, but printing, copying and walking a
// value recurse: a config.json nested a million levels deep would overflow the stack when its
// unknown fields are written back. ParseJson refuses nesting beyond kMaxJsonNesting before
// parsing, and turns parse errors into one Status naming the file.
//
// Example:
//   ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(R"({"vocab_size": 128256})", "config 'config.json'"));
//   const absl::Status deep = CheckJsonNesting(std::string(100, '['), "config 'x.json'");  // refused
#ifndef LLAMA_MOE_MODEL_JSON_UTIL_H_
#define LLAMA_MOE_MODEL_JSON_UTIL_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace llama_moe {

// Deeper than any file this project reads (tokenizer.json: 5 levels) by far.
inline constexpr int kMaxJsonNesting = 64;

// An error naming `what` (e.g. "config 'dir/config.json'") when arrays and objects in `text`
// nest deeper than kMaxJsonNesting; brackets inside strings do not count.
absl::Status CheckJsonNesting(absl::string_view text, absl::string_view what);

// CheckJsonNesting, then the parse: "<what> is not valid JSON: ..." on a syntax error.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_JSON_UTIL_H_
