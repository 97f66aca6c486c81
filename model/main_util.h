// The common ending of every binary's main(): a Status becomes one clear line on stderr.
//
// Libraries return absl::Status; binaries call RunMain so that an error, or an exception thrown
// by LibTorch that escaped a library, is reported as a single "<program>: error: ..." line (plus a
// "hint:" line when one is given) and a non-zero exit code, never a crash or a stack dump.
//
// Example:
//   // int main(int argc, char** argv) { absl::ParseCommandLine(argc, argv); return RunMain(...); }
//   const int exit_code = RunMain("inspect", [] { return absl::NotFoundError("no model"); });  // 1, one line
#ifndef LLAMA_MOE_MODEL_MAIN_UTIL_H_
#define LLAMA_MOE_MODEL_MAIN_UTIL_H_

#include <functional>
#include <string>

#include "absl/status/status.h"

namespace llama_moe {

// Runs `body`; returns 0 on success, 1 on a Status error or exception (2 for invalid arguments,
// the conventional "usage" code). `hint`, when non-empty, is printed under the error.
int RunMain(const std::string& program, const std::function<absl::Status()>& body,
            const std::string& hint = "");

// A Status for a missing required flag: "--model is required".
absl::Status MissingFlag(const std::string& flag);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_MAIN_UTIL_H_
