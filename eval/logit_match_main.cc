// logit_match: does an MoE model in a given routing mode reproduce its dense source model?
// Compares the logits of both on a token sequence (max |difference| relative to max |logit|)
// and greedy continuations; exits non-zero when the logits differ by more than --tolerance or
// the greedy tokens differ.
//
//   bazel run //eval:logit_match -- --dense out/dense --moe out/moe --routing identity --tokens 1,2,3
#include <iostream>

#include <ATen/ATen.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "eval/token_args.h"
#include "model/file_util.h"
#include "model/generate.h"
#include "model/heap_policy.h"
#include "model/main_util.h"
#include "model/status_macros.h"
#include "moe/moe_model.h"

ABSL_FLAG(std::string, dense, "", "dense model directory");
ABSL_FLAG(std::string, moe, "", "converted MoE model directory");
ABSL_FLAG(std::string, routing, "identity", "routing mode of the MoE model: identity, learned_only or routed");
ABSL_FLAG(std::string, tokens, "", "token ids, e.g. 128000,9906");
ABSL_FLAG(std::string, tokens_file, "", "or a file of token ids");
ABSL_FLAG(int64_t, greedy_tokens, 32, "greedy continuation length compared");
ABSL_FLAG(double, tolerance, 1e-4, "largest accepted max|dlogit| / max|logit|");
ABSL_FLAG(std::string, dtype, "float32", "compute dtype of both models");
ABSL_FLAG(std::string, device, "cpu", "device, e.g. cpu, cuda, cuda:1");

namespace llama_moe {
namespace {

absl::Status Run() {
  if (absl::GetFlag(FLAGS_dense).empty()) return MissingFlag("dense");
  if (absl::GetFlag(FLAGS_moe).empty()) return MissingFlag("moe");
  std::vector<int64_t> ids;
  if (!absl::GetFlag(FLAGS_tokens).empty()) {
    ASSIGN_OR_RETURN(ids, ParseTokenIds(absl::GetFlag(FLAGS_tokens), "--tokens"));
  } else if (!absl::GetFlag(FLAGS_tokens_file).empty()) {
    const std::string path = ResolveUserPath(absl::GetFlag(FLAGS_tokens_file));
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    ASSIGN_OR_RETURN(ids, ParseTokenIds(text, path));
  } else {
    return absl::InvalidArgumentError("give --tokens or --tokens_file");
  }
  ModelLoadOptions o;
  ASSIGN_OR_RETURN(o.dtype, ParseFloatDTypeFlag(absl::GetFlag(FLAGS_dtype)), "--dtype");
  ASSIGN_OR_RETURN(o.device, ParseDevice(absl::GetFlag(FLAGS_device)));
  o.map_weights = true;
  const at::Tensor tokens = at::tensor(ids, at::TensorOptions().dtype(at::kLong));
  GenerateOptions g;
  g.max_new_tokens = absl::GetFlag(FLAGS_greedy_tokens);
  g.eos_token_ids = {};  // compare the full length
  // One model at a time, so that the pair never has to fit in memory together.
  at::Tensor a;
  GenerateResult gd;
  int64_t dense_vocab = 0;
  {
    ASSIGN_OR_RETURN(LoadedModel dense, LoadModel(ResolveUserPath(absl::GetFlag(FLAGS_dense)), o));
    ASSIGN_OR_RETURN(a, dense.model->Forward(tokens));
    ASSIGN_OR_RETURN(gd, Generate(*dense.model, {ids}, g));
    dense_vocab = dense.config.vocab_size;
  }
  ASSIGN_OR_RETURN(o.moe.mode, ParseRoutingMode(absl::GetFlag(FLAGS_routing)), "--routing");
  ASSIGN_OR_RETURN(LoadedModel moe, LoadModel(ResolveUserPath(absl::GetFlag(FLAGS_moe)), o));
  if (!moe.moe) return absl::InvalidArgumentError("--moe is not an MoE model (no 'moe' block in config.json)");
  if (moe.config.vocab_size != dense_vocab) {
    return absl::InvalidArgumentError(absl::StrCat("--moe has vocabulary ", moe.config.vocab_size, ", --dense ",
                                                   dense_vocab, ": they are not the same model"));
  }
  ASSIGN_OR_RETURN(at::Tensor b, moe.model->Forward(tokens));
  const double max_diff = (a - b).abs().max().item<double>();
  const double rel = max_diff / a.abs().max().item<double>();
  const double argmax_agree = (a.argmax(-1) == b.argmax(-1)).to(at::kFloat).mean().item<double>();
  ASSIGN_OR_RETURN(GenerateResult gm, Generate(*moe.model, {ids}, g));
  const bool greedy_equal = gd.tokens[0] == gm.tokens[0];
  std::cout << absl::StrFormat(
                   "logit match (%s): %d positions, max |dlogit| %.3g, relative %.3g, argmax agreement %.4f; "
                   "greedy %d tokens %s",
                   absl::GetFlag(FLAGS_routing), ids.size(), max_diff, rel, argmax_agree, g.max_new_tokens,
                   greedy_equal ? "identical" : "DIFFERENT")
            << std::endl;
  std::cout << "dense greedy: " << absl::StrJoin(gd.tokens[0], ",") << std::endl;
  std::cout << "moe greedy:   " << absl::StrJoin(gm.tokens[0], ",") << std::endl;
  if (rel > absl::GetFlag(FLAGS_tolerance)) {
    return absl::FailedPreconditionError(absl::StrFormat("relative logit difference %.3g exceeds --tolerance %.3g",
                                                         rel, absl::GetFlag(FLAGS_tolerance)));
  }
  if (!greedy_equal) return absl::FailedPreconditionError("greedy continuations differ");
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  llama_moe::ApplyInferenceHeapPolicy();
  absl::SetProgramUsageMessage("Checks that an MoE model reproduces its dense source model's logits and greedy output.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("logit_match", llama_moe::Run);
}
