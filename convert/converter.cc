#include "convert/converter.h"

#include <ATen/ATen.h>
#include <openssl/evp.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "convert/learned_init.h"
#include "convert/calibration.h"
#include "convert/partition.h"
#include "convert/random_streams.h"
#include "convert/recipe.h"
#include "convert/router_init.h"
#include "model/checkpoint.h"
#include "model/llama_layout.h"
#include "model/model_format.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "moe/moe_config.h"
#include "moe/moe_layout.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

std::string HexDigest(const unsigned char* d, unsigned n) {
  std::string s;
  for (unsigned i = 0; i < n; ++i) absl::StrAppendFormat(&s, "%02x", d[i]);
  return s;
}

// The SHA-256 of every source shard (~0.35 GB/s on CPUs without SHA extensions: ~45 s for
// 16 GB), computed on a thread of its own while the layers convert; destroying it stops and
// joins the thread.
class SourceHashes {
 public:
  explicit SourceHashes(std::vector<std::string> paths) : paths_(std::move(paths)) {
    future_ = std::async(std::launch::async, [this]() -> absl::StatusOr<std::vector<std::string>> {
      std::vector<std::string> out;
      for (const std::string& p : paths_) {
        ASSIGN_OR_RETURN(std::string digest, Sha256File(p, &stop_));
        out.push_back(std::move(digest));
      }
      return out;
    });
  }
  ~SourceHashes() {
    if (future_.valid()) {
      stop_ = true;
      future_.wait();
    }
  }
  // {shard file name: hex digest}, once the thread is done.
  absl::StatusOr<nlohmann::json> Get() {
    ASSIGN_OR_RETURN(std::vector<std::string> digests, future_.get(), "hashing the source shards");
    nlohmann::json out;
    for (size_t i = 0; i < paths_.size(); ++i) out[paths_[i].substr(paths_[i].find_last_of('/') + 1)] = digests[i];
    return out;
  }

 private:
  const std::vector<std::string> paths_;
  std::atomic<bool> stop_{false};
  std::future<absl::StatusOr<std::vector<std::string>>> future_;
};

// One conversion in progress: the source, the resolved recipe and the output writer, with the
// byte counts of what went through.
class Conversion {
 public:
  // `activations`: per layer, the calibration statistics a data-driven partition needs (else empty).
  Conversion(const Checkpoint& in, const ConversionRecipe& recipe, const MoeConfig& moe, DType out_dtype,
             ModelWriter& out, ConvertStats& stats, const std::vector<at::Tensor>& activations)
      : in_(in),
        recipe_(recipe),
        moe_(moe),
        out_type_(ToScalarType(out_dtype)),
        out_(out),
        stats_(stats),
        activations_(activations) {}

  // A tensor that the conversion keeps as it is (embeddings, attention, norms, head).
  absl::Status Copy(const std::string& name) {
    ASSIGN_OR_RETURN(at::Tensor t, Read(name));
    RETURN_IF_ERROR(Write(name, t));
    in_.Release(name);
    return absl::OkStatus();
  }

  // Layer `layer`'s dense FFN into the MoE block, as the recipe says: partition the neurons into
  // the frozen slices, initialise the learned experts from them, initialise the router.
  absl::Status ConvertFfn(int64_t layer, int64_t hidden) {
    DenseFfnWeights dense;
    at::Tensor* parts[3] = {&dense.gate, &dense.up, &dense.down};
    for (int k = 0; k < 3; ++k) {
      ASSIGN_OR_RETURN(*parts[k], Read(DenseFfnName(layer, kFfnProjections[k])));
    }
    const ExpertStackWeights frozen =
        PartitionNeurons(dense, moe_.num_frozen_experts, recipe_, layer,
                         activations_.empty() ? at::Tensor() : activations_.at(static_cast<size_t>(layer)));
    const at::Tensor stacks[3] = {frozen.gate, frozen.up, frozen.down};
    for (int k = 0; k < 3; ++k) {
      RETURN_IF_ERROR(Write(ExpertTensorName(layer, kFrozenExperts, kFfnProjections[k]), stacks[k]));
    }
    for (int k = 0; k < 3 && moe_.num_learned_experts > 0; ++k) {
      const at::Tensor learned = InitLearnedExperts(stacks[k].to(at::kFloat), moe_.num_learned_experts, recipe_, k, layer);
      RETURN_IF_ERROR(Write(ExpertTensorName(layer, kLearnedExperts, kFfnProjections[k]), learned));
    }
    const RouterInitWeights router = InitRouter(recipe_, moe_, hidden, layer);
    RETURN_IF_ERROR(Write(RouterWeightName(layer), router.weight));
    RETURN_IF_ERROR(Write(RouterBiasName(layer), router.bias, at::kFloat));  // always float32
    if (moe_.lora_rank > 0) {
      const int64_t nf = moe_.num_frozen_experts, r = moe_.lora_rank, ie = moe_.expert_intermediate_size;
      for (int k = 0; k < 3; ++k) {
        const int64_t in = k < 2 ? hidden : ie, out = k < 2 ? ie : hidden;
        at::Generator gen = ConversionStream(recipe_.seed(), layer, StreamPurpose::kLoraA, k);
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        RETURN_IF_ERROR(Write(LoraTensorName(layer, kFfnProjections[k], "lora_A"),
                              at::empty({nf, r, in}, at::kFloat).uniform_(-bound, bound, gen)));
        RETURN_IF_ERROR(Write(LoraTensorName(layer, kFfnProjections[k], "lora_B"), at::zeros({nf, out, r}, at::kFloat)));
      }
    }
    for (const char* proj : kFfnProjections) in_.Release(DenseFfnName(layer, proj));
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<at::Tensor> Read(const std::string& name) {
    ASSIGN_OR_RETURN(at::Tensor t, in_.Get(name));
    stats_.bytes_read += static_cast<uint64_t>(t.numel()) * t.element_size();
    return t;
  }
  absl::Status Write(const std::string& name, const at::Tensor& t, std::optional<at::ScalarType> type = {}) {
    const at::Tensor stored = t.to(type.value_or(out_type_));
    RETURN_IF_ERROR(out_.Write(name, stored));
    stats_.bytes_written += static_cast<uint64_t>(stored.numel()) * stored.element_size();
    return absl::OkStatus();
  }

  const Checkpoint& in_;
  const ConversionRecipe& recipe_;
  const MoeConfig& moe_;
  const at::ScalarType out_type_;
  ModelWriter& out_;
  ConvertStats& stats_;
  const std::vector<at::Tensor>& activations_;
};

}  // namespace

absl::StatusOr<std::string> Sha256File(const std::string& path, const std::atomic<bool>* stop) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "' for hashing"));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(8 << 20);
  while (in) {
    if (stop != nullptr && stop->load()) return absl::CancelledError(absl::StrCat("hashing '", path, "' stopped"));
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading '", path, "'"));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  return HexDigest(digest, len);
}

absl::StatusOr<ConvertStats> ConvertDenseToMoe(const ConvertOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  auto cancelled = [&]() { return o.cancel != nullptr && o.cancel->load(); };
  const absl::Status kCancelled = absl::CancelledError("conversion cancelled; no output written");

  // The source, the recipe resolved against it, and the output's config.
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> in, Checkpoint::Open(o.input_dir), "reading the dense model");
  ASSIGN_OR_RETURN(LlamaConfig cfg, in->LoadConfig());
  ASSIGN_OR_RETURN(std::optional<MoeConfig> already, MoeConfigFromLlama(cfg));
  if (already) {
    return absl::InvalidArgumentError(absl::StrCat("'", o.input_dir, "' is already an MoE model (config has a 'moe' block)"));
  }
  RETURN_IF_ERROR(VerifyLlamaCheckpoint(*in, cfg, /*read_data=*/false), "the dense model");
  ConversionRecipe recipe = o.recipe;
  ASSIGN_OR_RETURN(MoeConfig moe, ResolveRecipe(cfg, &recipe));
  DType out_dtype;
  if (recipe.dtype().empty()) {
    ASSIGN_OR_RETURN(out_dtype, ConfigDType(cfg));
  } else {
    ASSIGN_OR_RETURN(out_dtype, ParseFloatDTypeFlag(recipe.dtype()));
  }
  LlamaConfig out_cfg = cfg;
  out_cfg.torch_dtype = std::string(TorchDTypeName(out_dtype));
  SetMoeConfig(moe, &out_cfg);
  if (cancelled()) return kCancelled;
  std::vector<at::Tensor> activations;
  if (recipe.partition() == ConversionRecipe::COACTIVATION_CLUSTERS) {
    log(absl::StrFormat("calibration: up to %d tokens of %s through the dense model", recipe.calibration_tokens(),
                        recipe.calibration_text()));
    ASSIGN_OR_RETURN(activations, NeuronActivations(o.input_dir, recipe.calibration_text(), recipe.calibration_tokens()),
                     "partition COACTIVATION_CLUSTERS");
    if (cancelled()) return kCancelled;
  }

  std::vector<std::string> shard_paths;
  for (const auto& shard : in->shards()) shard_paths.push_back(shard->path());
  SourceHashes hashes(shard_paths);
  ModelWriterOptions wo;
  wo.max_shard_bytes = static_cast<uint64_t>(recipe.max_shard_bytes());
  wo.overwrite = o.overwrite;
  wo.metadata["llama_moe"] = "converted";
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w,
                   CreateModelWriter(ModelFormat::kHfSafetensors, o.output_dir, MoeTensorSpecs(out_cfg, moe, out_dtype), wo));
  ConvertStats stats;
  stats.num_shards = w->num_weight_files();
  log(absl::StrFormat("converting %s -> %s: %d layers, %d frozen + %d learned experts of %d, top-%d, %s",
                      o.input_dir, o.output_dir, cfg.num_hidden_layers, moe.num_frozen_experts,
                      moe.num_learned_experts, moe.expert_intermediate_size, moe.top_k, DTypeName(out_dtype)));

  // Every tensor outside the FFNs as it is, then the FFNs layer by layer.
  Conversion conversion(*in, recipe, moe, out_dtype, *w, stats, activations);
  try {
    for (const TensorSpec& s : LlamaTensorSpecs(cfg, out_dtype, /*ffn=*/[](int64_t) { return std::vector<TensorSpec>(); })) {
      if (cancelled()) return kCancelled;
      RETURN_IF_ERROR(conversion.Copy(s.name));
    }
    for (int64_t layer = 0; layer < cfg.num_hidden_layers; ++layer) {
      if (cancelled()) return kCancelled;
      RETURN_IF_ERROR(conversion.ConvertFfn(layer, cfg.hidden_size));
      log(absl::StrFormat("layer %d/%d done", layer + 1, cfg.num_hidden_layers));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("conversion failed: ", e.what_without_backtrace()));
  }

  // Provenance: the recipe as resolved and a hash of every source file that carries weights.
  nlohmann::json extra = nlohmann::json::parse(out_cfg.extra_json);
  extra["conversion"]["recipe"] = RecipeToText(recipe);
  ASSIGN_OR_RETURN(extra["conversion"]["source_sha256"], hashes.Get());
  out_cfg.extra_json = extra.dump();
  // Side files first, so that this conversion's recipe replaces any the source carried.
  RETURN_IF_ERROR(w->CopySideFiles(o.input_dir));
  RETURN_IF_ERROR(w->AddFile(kConfigFile, LlamaConfigToJson(out_cfg)));
  RETURN_IF_ERROR(w->AddFile("recipe.textproto", RecipeToText(recipe)));
  if (cancelled()) return kCancelled;
  RETURN_IF_ERROR(w->Commit());
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace llama_moe
