// Status propagation macros for the project (Debian's Abseil 20220623 has none).
//
// RETURN_IF_ERROR(expr) returns the status of `expr` when it is not OK.
// ASSIGN_OR_RETURN(lhs, expr) evaluates a StatusOr and assigns its value or returns its status.
// Both optionally take a context string that is prepended to the message, so errors read like
// a path from the caller down: "loading model 'dir': shard 'x.safetensors': tensor 'w' ...".
//
// Example:
//   auto load = [](const std::string& path) -> absl::StatusOr<LlamaConfig> {
//     ASSIGN_OR_RETURN(std::string text, ReadFileToString(path), "reading the config");  // adds context
//     ASSIGN_OR_RETURN(LlamaConfig cfg, ParseLlamaConfig(text, path));
//     RETURN_IF_ERROR(ValidateLlamaConfig(cfg));
//     return cfg;
//   };
//   ASSIGN_OR_RETURN(LlamaConfig cfg, load("/models/llama3-8b/config.json"));
#ifndef LLAMA_MOE_MODEL_STATUS_MACROS_H_
#define LLAMA_MOE_MODEL_STATUS_MACROS_H_

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace llama_moe {

// Returns `s` with `context + ": "` prepended to its message; the code is kept.
inline absl::Status WithContext(const absl::Status& s, const std::string& context) {
  if (s.ok() || context.empty()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

namespace status_internal {
inline const absl::Status& AsStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace status_internal

}  // namespace llama_moe

#define LM_STATUS_CONCAT_INNER_(a, b) a##b
#define LM_STATUS_CONCAT_(a, b) LM_STATUS_CONCAT_INNER_(a, b)

#define LM_GET_MACRO_(_1, _2, NAME, ...) NAME
#define LM_GET_MACRO3_(_1, _2, _3, NAME, ...) NAME

#define RETURN_IF_ERROR(...) \
  LM_GET_MACRO_(__VA_ARGS__, LM_RETURN_IF_ERROR_2_, LM_RETURN_IF_ERROR_1_)(__VA_ARGS__)
#define LM_RETURN_IF_ERROR_1_(expr) LM_RETURN_IF_ERROR_2_(expr, std::string())
#define LM_RETURN_IF_ERROR_2_(expr, context)                                      \
  do {                                                                            \
    const ::absl::Status lm_status_ =                                             \
        ::llama_moe::status_internal::AsStatus((expr));                           \
    if (!lm_status_.ok()) return ::llama_moe::WithContext(lm_status_, (context)); \
  } while (0)

#define ASSIGN_OR_RETURN(...)                                                             \
  LM_GET_MACRO3_(__VA_ARGS__, LM_ASSIGN_OR_RETURN_3_, LM_ASSIGN_OR_RETURN_2_, unused_)( \
      __VA_ARGS__)
#define LM_ASSIGN_OR_RETURN_2_(lhs, expr) LM_ASSIGN_OR_RETURN_3_(lhs, expr, std::string())
#define LM_ASSIGN_OR_RETURN_3_(lhs, expr, context) \
  LM_ASSIGN_OR_RETURN_IMPL_(LM_STATUS_CONCAT_(lm_statusor_, __LINE__), lhs, expr, context)
#define LM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr, context)                          \
  auto tmp = (expr);                                                                \
  if (!tmp.ok()) return ::llama_moe::WithContext(tmp.status(), (context)); \
  lhs = std::move(tmp).value()

#endif  // LLAMA_MOE_MODEL_STATUS_MACROS_H_
