#include "convert/converter.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <openssl/evp.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "convert/moe_config.h"
#include "convert/moe_layout.h"
#include "convert/recipe.h"
#include "model/checkpoint.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/llama_layout.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

// Independent random streams per (seed, layer, purpose), so that outputs do not depend on the
// order in which tensors are produced.
at::Generator Stream(uint64_t seed, int64_t layer, int purpose, int64_t chunk = 0) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(layer) * 0x100000001B3ull +
               static_cast<uint64_t>(purpose) * 0xC2B2AE3D27D4EB4Full + static_cast<uint64_t>(chunk) * 0x165667B19E3779F9ull;
  x ^= x >> 33;
  return at::make_generator<at::CPUGeneratorImpl>(x);
}
enum Purpose { kPermutation = 1, kNoiseGate, kNoiseUp, kNoiseDown, kDropNeurons, kRouter };

// t += N(0, std^2) elementwise, t contiguous float32. Drawing normals is the converter's most
// expensive step (one generator fills ~55M floats/s: minutes for Llama 3 8B), so fixed chunks of
// 2^20 elements each get their own stream (seed, layer, purpose, chunk) and run on the intra-op
// threads: the values depend on the seed only, not on the thread count.
void AddGaussianNoise(at::Tensor& t, double std, uint64_t seed, int64_t layer, int purpose) {
  at::Tensor flat = t.view({-1});
  constexpr int64_t kChunk = int64_t{1} << 20;
  const int64_t n = flat.numel(), chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      at::Tensor part = flat.narrow(0, c * kChunk, std::min(kChunk, n - c * kChunk));
      at::Tensor z = at::empty_like(part);
      z.normal_(0.0, std, Stream(seed, layer, purpose, c));
      part.add_(z);
    }
  });
}

// Learned experts [Nl, ...] from the frozen stack [Nf, ...] (float32): expert j copies slice
// j mod Nf, then the recipe's initialisation. `neuron_dim` is the stacked tensor's dimension that
// indexes intermediate neurons (1 for gate/up [N, Ie, H], 2 for down [N, H, Ie]).
at::Tensor LearnedFromFrozen(const at::Tensor& frozen_f32, int64_t num_learned, const ConversionRecipe& r,
                             double matrix_mean, double matrix_std, int neuron_dim, int64_t layer,
                             int noise_purpose) {
  const int64_t nf = frozen_f32.size(0);
  at::Tensor src = at::arange(num_learned, at::kLong).remainder(nf);
  at::Tensor learned = frozen_f32.index_select(0, src);  // a fresh tensor
  if (r.learned_init() == ConversionRecipe::NOISY_SLICE) {
    if (r.noise_scale() > 0) AddGaussianNoise(learned, r.noise_scale() * matrix_std, r.seed(), layer, noise_purpose);
    return learned;
  }
  at::Generator noise_gen = Stream(r.seed(), layer, noise_purpose);
  at::Generator drop_gen = Stream(r.seed(), layer, kDropNeurons);
  // Drop-Upcycling: re-draw a fraction of each expert's neurons from the matrix's statistics.
  const int64_t ie = learned.size(neuron_dim);
  const int64_t drop = static_cast<int64_t>(std::llround(r.reinit_fraction() * ie));
  for (int64_t j = 0; j < num_learned && drop > 0; ++j) {
    at::Tensor idx = at::randperm(ie, drop_gen, at::kLong).slice(0, 0, drop);
    at::Tensor expert = learned[j];  // [Ie, H] or [H, Ie]
    const int dim = neuron_dim - 1;
    at::Tensor fresh = at::randn(expert.index_select(dim, idx).sizes(), noise_gen, at::kFloat) * matrix_std + matrix_mean;
    expert.index_copy_(dim, idx, fresh);
  }
  return learned;
}

std::string HexDigest(const unsigned char* d, unsigned n) {
  std::string s;
  for (unsigned i = 0; i < n; ++i) absl::StrAppendFormat(&s, "%02x", d[i]);
  return s;
}

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
  const c10::ScalarType out_type = ToScalarType(out_dtype);

  // Provenance: the recipe as resolved and a hash of every source file that carries weights.
  nlohmann::json conversion;
  conversion["recipe"] = RecipeToText(recipe);
  // The source hashes (SHA-256 runs at ~0.35 GB/s on CPUs without SHA extensions: ~45 s for
  // 16 GB) are computed on a thread of their own while the layers convert, and joined before
  // config.json is written. `stop_hashing` ends it early when the conversion fails.
  if (cancelled()) return absl::CancelledError("conversion cancelled; no output written");
  std::vector<std::string> shard_paths;
  for (const auto& shard : in->shards()) shard_paths.push_back(shard->path());
  std::atomic<bool> stop_hashing{false};
  std::future<absl::StatusOr<std::vector<std::string>>> hashes =
      std::async(std::launch::async, [&stop_hashing, shard_paths]() -> absl::StatusOr<std::vector<std::string>> {
        std::vector<std::string> out;
        for (const std::string& p : shard_paths) {
          ASSIGN_OR_RETURN(std::string digest, Sha256File(p, &stop_hashing));
          out.push_back(std::move(digest));
        }
        return out;
      });
  // Every return below this point stops and joins the hashing thread first.
  struct JoinHashes {
    std::atomic<bool>& stop;
    std::future<absl::StatusOr<std::vector<std::string>>>& f;
    ~JoinHashes() {
      if (f.valid()) {
        stop = true;
        f.wait();
      }
    }
  } join_hashes{stop_hashing, hashes};
  LlamaConfig out_cfg = cfg;
  out_cfg.torch_dtype = std::string(TorchDTypeName(out_dtype));
  SetMoeConfig(moe, &out_cfg);

  const std::vector<TensorSpec> specs = MoeTensorSpecs(out_cfg, moe, out_dtype);
  CheckpointWriterOptions wo;
  wo.max_shard_bytes = static_cast<uint64_t>(recipe.max_shard_bytes());
  wo.overwrite = o.overwrite;
  wo.metadata["llama_moe"] = "converted";
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::Create(o.output_dir, specs, wo));
  ConvertStats stats;
  stats.num_shards = w->num_shards();
  log(absl::StrFormat("converting %s -> %s: %d layers, %d frozen + %d learned experts of %d, top-%d, %s",
                      o.input_dir, o.output_dir, cfg.num_hidden_layers, moe.num_frozen_experts,
                      moe.num_learned_experts, moe.expert_intermediate_size, moe.top_k, DTypeName(out_dtype)));

  auto write = [&](const std::string& name, const at::Tensor& t) -> absl::Status {
    RETURN_IF_ERROR(w->Write(name, t.to(out_type)));
    stats.bytes_written += static_cast<uint64_t>(t.numel()) * DTypeSize(out_dtype);
    return absl::OkStatus();
  };
  auto read = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    ASSIGN_OR_RETURN(at::Tensor t, in->Get(name));
    stats.bytes_read += static_cast<uint64_t>(t.numel()) * t.element_size();
    return t;
  };

  const int64_t Nf = moe.num_frozen_experts, Nl = moe.num_learned_experts, Ie = moe.expert_intermediate_size;
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, E = moe.num_experts();
  try {
    for (const TensorSpec& s : specs) {
      if (cancelled()) return absl::CancelledError("conversion cancelled; no output written");
      if (s.name.find(".mlp.") == std::string::npos) {
        ASSIGN_OR_RETURN(at::Tensor t, read(s.name));
        RETURN_IF_ERROR(write(s.name, t));
        in->Release(s.name);
        continue;
      }
      // A layer's MoE tensors are produced together when its first one comes up.
      if (s.name.find(kFrozenExperts) == std::string::npos || s.name.find("gate_proj") == std::string::npos) continue;
      const int64_t layer = std::stoll(s.name.substr(std::string("model.layers.").size()));
      ASSIGN_OR_RETURN(at::Tensor gate, read(DenseFfnName(layer, "gate_proj")));  // [I, H]
      ASSIGN_OR_RETURN(at::Tensor up, read(DenseFfnName(layer, "up_proj")));      // [I, H]
      ASSIGN_OR_RETURN(at::Tensor down, read(DenseFfnName(layer, "down_proj")));  // [H, I]
      if (recipe.partition() == ConversionRecipe::RANDOM_PERMUTATION) {
        at::Tensor perm = at::randperm(I, Stream(recipe.seed(), layer, kPermutation), at::kLong);
        gate = gate.index_select(0, perm);
        up = up.index_select(0, perm);
        down = down.index_select(1, perm);
      }
      // [I, H] -> [Nf, Ie, H]; [H, I] -> [H, Nf, Ie] -> [Nf, H, Ie].
      const at::Tensor fg = gate.reshape({Nf, Ie, H});
      const at::Tensor fu = up.reshape({Nf, Ie, H});
      const at::Tensor fd = down.reshape({H, Nf, Ie}).permute({1, 0, 2});
      RETURN_IF_ERROR(write(ExpertTensorName(layer, kFrozenExperts, "gate_proj"), fg));
      RETURN_IF_ERROR(write(ExpertTensorName(layer, kFrozenExperts, "up_proj"), fu));
      RETURN_IF_ERROR(write(ExpertTensorName(layer, kFrozenExperts, "down_proj"), fd));
      if (Nl > 0) {
        const std::pair<const char*, std::pair<at::Tensor, int>> mats[] = {
            {"gate_proj", {fg, kNoiseGate}}, {"up_proj", {fu, kNoiseUp}}, {"down_proj", {fd, kNoiseDown}}};
        for (const auto& [proj, m] : mats) {
          const at::Tensor f32 = m.first.to(at::kFloat);
          // Statistics of the whole dense matrix (the stack holds exactly its values).
          const double std = f32.std().item<double>();
          const double mean = f32.mean().item<double>();
          const int neuron_dim = std::string(proj) == "down_proj" ? 2 : 1;
          at::Tensor learned = LearnedFromFrozen(f32, Nl, recipe, mean, std, neuron_dim, layer, m.second);
          RETURN_IF_ERROR(write(ExpertTensorName(layer, kLearnedExperts, proj), learned));
        }
      }
      at::Tensor router, bias = at::zeros({E}, at::kFloat);
      if (recipe.router_init() == ConversionRecipe::DENSE_PRESERVING) {
        // Equal scores for every token; the bias alone picks the frozen experts (zero mean kept).
        router = at::zeros({E, H}, at::kFloat);
        bias.slice(0, 0, Nf).fill_(recipe.bias_margin() * static_cast<double>(Nl) / E);
        bias.slice(0, Nf, E).fill_(-recipe.bias_margin() * static_cast<double>(Nf) / E);
      } else if (recipe.router_init() == ConversionRecipe::COMPLEMENTARY) {
        // Frozen rows u, learned rows -u: each token's top-K is one whole group (see recipe.proto).
        const at::Tensor u = at::randn({1, H}, Stream(recipe.seed(), layer, kRouter), at::kFloat) * recipe.router_std();
        router = at::cat({u.expand({Nf, H}), -u.expand({Nl, H})}, 0);
      } else {
        router = at::randn({E, H}, Stream(recipe.seed(), layer, kRouter), at::kFloat) * recipe.router_std();
      }
      RETURN_IF_ERROR(write(RouterWeightName(layer), router));
      RETURN_IF_ERROR(w->Write(RouterBiasName(layer), bias));
      stats.bytes_written += static_cast<uint64_t>(E) * 4;
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) in->Release(DenseFfnName(layer, proj));
      log(absl::StrFormat("layer %d/%d done", layer + 1, cfg.num_hidden_layers));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("conversion failed: ", e.what_without_backtrace()));
  }

  {
    absl::StatusOr<std::vector<std::string>> digests = hashes.get();
    RETURN_IF_ERROR(digests.status(), "hashing the source shards");
    for (size_t i = 0; i < shard_paths.size(); ++i) {
      conversion["source_sha256"][shard_paths[i].substr(shard_paths[i].find_last_of('/') + 1)] = (*digests)[i];
    }
    nlohmann::json extra = nlohmann::json::parse(out_cfg.extra_json);
    extra["conversion"] = conversion;
    out_cfg.extra_json = extra.dump();
  }
  // Side files first, so that this conversion's recipe replaces any the source carried.
  RETURN_IF_ERROR(w->CopySideFiles(o.input_dir));
  RETURN_IF_ERROR(w->AddFile(kConfigFile, LlamaConfigToJson(out_cfg)));
  RETURN_IF_ERROR(w->AddFile("recipe.textproto", RecipeToText(recipe)));
  if (cancelled()) return absl::CancelledError("conversion cancelled; no output written");
  RETURN_IF_ERROR(w->Commit());
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace llama_moe
