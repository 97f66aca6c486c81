// inspect: lists the tensors of a model directory or a .safetensors file and, with --verify,
// reads every tensor and checks the checkpoint against its config.json: a dense Llama against
// its tensor table, an MoE directory (converted or trained) against its own layout (the "moe"
// block, expert stacks, router weights and biases) and its recipe.textproto.
//
//   bazel run //tools:inspect -- --model /models/llama3-8b --verify
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "convert/recipe.h"
#include "model/checkpoint.h"
#include "model/file_util.h"
#include "model/llama_layout.h"
#include "model/main_util.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "moe/moe_config.h"
#include "moe/moe_layout.h"

ABSL_FLAG(std::string, model, "", "model directory (HF layout) or a single .safetensors file");
ABSL_FLAG(bool, verify, false, "read every tensor and check the checkpoint against config.json");

namespace llama_moe {
namespace {

void PrintTensor(const TensorEntry& t, const std::string& file) {
  std::printf("%-56s %-5s %-16s %12llu  %s\n", t.name.c_str(), std::string(DTypeName(t.dtype)).c_str(),
              ShapeString(t.shape).c_str(), static_cast<unsigned long long>(t.nbytes()), file.c_str());
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::Status InspectFile(const std::string& path, bool verify) {
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  for (const TensorEntry& t : f->header().tensors) {
    PrintTensor(t, BaseName(path));
    if (verify) (void)f->Get(t).sum();  // touches every byte
  }
  std::printf("%zu tensors, %llu bytes\n", f->header().tensors.size(),
              static_cast<unsigned long long>(f->header().data_size));
  return absl::OkStatus();
}

// The recipe recorded beside an MoE model's weights must be the one its "moe" block came from.
absl::Status VerifyRecipe(const std::string& dir, const LlamaConfig& cfg, const MoeConfig& moe) {
  const std::string path = JoinPath(dir, "recipe.textproto");
  if (!PathExists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ConversionRecipe recipe, LoadRecipe(path));
  ASSIGN_OR_RETURN(MoeConfig from_recipe, ResolveRecipe(cfg, &recipe), absl::StrCat("recipe '", path, "'"));
  auto differs = [&](const char* field, auto a, auto b) -> absl::Status {
    if (a == b) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("recipe '", path, "' gives ", field, " ", a,
                                                   ", the 'moe' block of config.json ", b));
  };
  RETURN_IF_ERROR(differs("num_frozen_experts", from_recipe.num_frozen_experts, moe.num_frozen_experts));
  RETURN_IF_ERROR(differs("num_learned_experts", from_recipe.num_learned_experts, moe.num_learned_experts));
  RETURN_IF_ERROR(differs("expert_intermediate_size", from_recipe.expert_intermediate_size, moe.expert_intermediate_size));
  RETURN_IF_ERROR(differs("top_k", from_recipe.top_k, moe.top_k));
  RETURN_IF_ERROR(differs("score_function", std::string(ScoreFunctionName(from_recipe.score_function)),
                          std::string(ScoreFunctionName(moe.score_function))));
  auto yes_no = [](bool b) { return std::string(b ? "true" : "false"); };
  RETURN_IF_ERROR(differs("normalize_gates", yes_no(from_recipe.normalize_gates), yes_no(moe.normalize_gates)));
  return differs("gate_scale", from_recipe.gate_scale, moe.gate_scale);
}

// Every tensor read and checked against the layout config.json describes: dense or MoE.
absl::Status Verify(const std::string& dir, const Checkpoint& ckpt, const LlamaConfig& cfg) {
  ASSIGN_OR_RETURN(std::optional<MoeConfig> moe, MoeConfigFromLlama(cfg), absl::StrCat("config '", dir, "/config.json'"));
  if (!moe) return VerifyLlamaCheckpoint(ckpt, cfg, /*read_data=*/true);
  RETURN_IF_ERROR(VerifyCheckpointTensors(ckpt, MoeTensorSpecs(cfg, *moe, DType::kF32), /*read_data=*/true));
  return VerifyRecipe(dir, cfg, *moe);
}

absl::Status Run() {
  if (absl::GetFlag(FLAGS_model).empty()) return MissingFlag("model");
  const std::string path = ResolveUserPath(absl::GetFlag(FLAGS_model));
  const bool verify = absl::GetFlag(FLAGS_verify);
  if (!IsDirectory(path)) return InspectFile(path, verify);

  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(path));
  absl::StatusOr<LlamaConfig> cfg = ckpt->LoadConfig();
  if (cfg.ok()) {
    std::printf("config: vocab %lld, hidden %lld, intermediate %lld, layers %lld, heads %lld/%lld kv, "
                "head_dim %lld, dtype %s, tied head %s, rope_scaling %s\n",
                (long long)cfg->vocab_size, (long long)cfg->hidden_size, (long long)cfg->intermediate_size,
                (long long)cfg->num_hidden_layers, (long long)cfg->num_attention_heads,
                (long long)cfg->num_key_value_heads, (long long)cfg->head_dim, cfg->torch_dtype.c_str(),
                cfg->tie_word_embeddings ? "yes" : "no", cfg->rope_scaling ? "llama3" : "none");
  } else if (verify) {
    return cfg.status();
  } else {
    std::printf("config: unreadable (%s)\n", std::string(cfg.status().message()).c_str());
  }
  for (const std::string& name : ckpt->TensorNames()) {
    ASSIGN_OR_RETURN(auto found, ckpt->Find(name));
    PrintTensor(*found.first, BaseName(found.second->path()));
  }
  std::printf("%zu tensors in %zu file(s), %llu bytes\n", ckpt->TensorNames().size(), ckpt->shards().size(),
              static_cast<unsigned long long>(ckpt->total_bytes()));
  if (verify) {
    RETURN_IF_ERROR(Verify(path, *ckpt, *cfg));
    std::printf("verify: ok (every tensor read, shapes match config.json, all values finite)\n");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace llama_moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Lists and verifies the tensors of a checkpoint.");
  absl::ParseCommandLine(argc, argv);
  return llama_moe::RunMain("inspect", llama_moe::Run);
}
