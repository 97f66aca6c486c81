// convert: turns a dense Llama 3 model directory into a fine-grained MoE model directory.
//
//   bazel run //convert:convert -- --input /models/llama3-8b --output /models/llama3-8b-moe
//       [--recipe convert/recipes/default.textproto] [--set 'top_k: 4 router_init: COMPLEMENTARY']
//       [--top_k 4] [--seed 1] [--dtype bfloat16] [--overwrite]
#include <csignal>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "convert/converter.h"
#include "convert/recipe.h"
#include "google/protobuf/text_format.h"
#include "model/file_util.h"
#include "model/main_util.h"
#include "model/status_macros.h"

ABSL_FLAG(std::string, input, "", "dense model directory (Hugging Face layout)");
ABSL_FLAG(std::string, output, "", "MoE model directory to create");
ABSL_FLAG(std::string, recipe, "", "conversion recipe (text proto, convert/recipe.proto); default: built-in defaults");
ABSL_FLAG(std::string, set, "", "recipe fields in text-proto syntax applied over the recipe, e.g. 'top_k: 4 seed: 3'");
ABSL_FLAG(int32_t, top_k, 0, "override the recipe's top_k (0: keep)");
ABSL_FLAG(int64_t, seed, -1, "override the recipe's seed (-1: keep)");
ABSL_FLAG(std::string, router_init, "", "override the recipe's router_init: NORMAL, DENSE_PRESERVING or COMPLEMENTARY");
ABSL_FLAG(std::string, dtype, "", "override the output dtype: float32 or bfloat16");
ABSL_FLAG(bool, overwrite, false, "replace an existing output directory");

namespace llama_moe {
namespace {

std::atomic<bool> g_cancel{false};
extern "C" void OnSignal(int) { g_cancel.store(true); }

absl::Status Run() {
  if (absl::GetFlag(FLAGS_input).empty()) return MissingFlag("input");
  if (absl::GetFlag(FLAGS_output).empty()) return MissingFlag("output");
  ConvertOptions o;
  o.input_dir = ResolveUserPath(absl::GetFlag(FLAGS_input));
  o.output_dir = ResolveUserPath(absl::GetFlag(FLAGS_output));
  if (!absl::GetFlag(FLAGS_recipe).empty()) {
    ASSIGN_OR_RETURN(o.recipe, LoadRecipe(ResolveUserPath(absl::GetFlag(FLAGS_recipe))));
  }
  if (!absl::GetFlag(FLAGS_set).empty()) {
    ASSIGN_OR_RETURN(ConversionRecipe over, ParseRecipe(absl::GetFlag(FLAGS_set), "--set"));
    o.recipe.MergeFrom(over);
  }
  if (absl::GetFlag(FLAGS_top_k) != 0) o.recipe.set_top_k(absl::GetFlag(FLAGS_top_k));
  const int64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed < -1) return absl::InvalidArgumentError(absl::StrCat("--seed ", seed, " is negative (-1 keeps the recipe's)"));
  if (seed >= 0) o.recipe.set_seed(static_cast<uint64_t>(seed));
  if (!absl::GetFlag(FLAGS_router_init).empty()) {
    ConversionRecipe::RouterInit ri;
    if (!ConversionRecipe::RouterInit_Parse(absl::GetFlag(FLAGS_router_init), &ri)) {
      return absl::InvalidArgumentError("--router_init must be NORMAL, DENSE_PRESERVING or COMPLEMENTARY");
    }
    o.recipe.set_router_init(ri);
  }
  if (!absl::GetFlag(FLAGS_dtype).empty()) o.recipe.set_dtype(absl::GetFlag(FLAGS_dtype));
  o.overwrite = absl::GetFlag(FLAGS_overwrite);
  o.cancel = &g_cancel;
  o.log = [](const std::string& s) { std::cerr << s << std::endl; };
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  ASSIGN_OR_RETURN(ConvertStats st, ConvertDenseToMoe(o));
  std::cout << absl::StrFormat(
                   "wrote %s: %d shard(s), read %.3f GB, wrote %.3f GB in %.2f s (%.3f GB/s written)",
                   o.output_dir, st.num_shards, st.bytes_read / 1e9, st.bytes_written / 1e9, st.seconds,
                   st.seconds > 0 ? st.bytes_written / 1e9 / st.seconds : 0.0)
            << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Converts a dense Llama 3 model directory into a fine-grained MoE model.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("convert", llama_moe::Run);
}
