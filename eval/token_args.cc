#include "eval/token_args.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace llama_moe {

absl::StatusOr<std::vector<int64_t>> ParseTokenIds(absl::string_view text, absl::string_view source) {
  std::vector<int64_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
    int64_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": '", piece, "' is not a token id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no token ids"));
  return ids;
}

std::string JoinTokenIds(const std::vector<int64_t>& ids) { return absl::StrJoin(ids, ","); }

}  // namespace llama_moe
