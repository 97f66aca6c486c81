#include "model/main_util.h"

#include <exception>
#include <iostream>

#include "absl/strings/str_cat.h"

namespace llama_moe {

int RunMain(const std::string& program, const std::function<absl::Status()>& body,
            const std::string& hint) {
  absl::Status status;
  try {
    status = body();
  } catch (const std::exception& e) {
    // LibTorch messages carry a C++ backtrace after the first line; the first line is the news.
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    status = absl::InternalError(absl::StrCat("unexpected exception: ", what));
  }
  if (status.ok()) return 0;
  std::cerr << program << ": error: " << status.message() << std::endl;
  if (!hint.empty()) std::cerr << program << ": hint: " << hint << std::endl;
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::Status MissingFlag(const std::string& flag) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " is required"));
}

}  // namespace llama_moe
