#include "model/llama_test_util.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/safetensors.h"
#include "model/status_macros.h"

namespace llama_moe {

LlamaConfig TinyLlamaConfig(int64_t heads, int64_t kv_heads) {
  LlamaConfig cfg;
  cfg.vocab_size = 211;
  cfg.hidden_size = 64;
  cfg.intermediate_size = 96;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = heads;
  cfg.num_key_value_heads = kv_heads;
  cfg.head_dim = 16;
  cfg.max_position_embeddings = 512;
  cfg.rms_norm_eps = 1e-5;
  cfg.rope_theta = 10000.0;
  cfg.rope_scaling.reset();
  cfg.tie_word_embeddings = false;
  cfg.torch_dtype = "float32";
  cfg.bos_token_id = 1;
  cfg.eos_token_ids = {2};
  return cfg;
}

std::vector<TensorSpec> TinyLlamaSpecs(const LlamaConfig& cfg, DType dtype) {
  const int64_t h = cfg.hidden_size, q = cfg.num_attention_heads * cfg.head_dim;
  const int64_t kv = cfg.num_key_value_heads * cfg.head_dim, i = cfg.intermediate_size;
  std::vector<TensorSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    specs.push_back(TensorSpec{std::move(name), dtype, std::move(shape)});
  };
  add("model.embed_tokens.weight", {cfg.vocab_size, h});
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h});
    add(p + "self_attn.q_proj.weight", {q, h});
    add(p + "self_attn.k_proj.weight", {kv, h});
    add(p + "self_attn.v_proj.weight", {kv, h});
    add(p + "self_attn.o_proj.weight", {h, q});
    add(p + "post_attention_layernorm.weight", {h});
    add(p + "mlp.gate_proj.weight", {i, h});
    add(p + "mlp.up_proj.weight", {i, h});
    add(p + "mlp.down_proj.weight", {h, i});
  }
  add("model.norm.weight", {h});
  if (!cfg.tie_word_embeddings) add("lm_head.weight", {cfg.vocab_size, h});
  return specs;
}

absl::Status WriteRandomCheckpoint(const std::string& dir, const LlamaConfig& cfg,
                                   const std::vector<TensorSpec>& specs, uint64_t seed,
                                   uint64_t max_shard_bytes) {
  ModelWriterOptions opts;
  opts.max_shard_bytes = max_shard_bytes;
  ASSIGN_OR_RETURN(auto writer, CheckpointWriter::Create(dir, specs, opts));
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  try {
    for (const TensorSpec& s : specs) {
      at::Tensor t = at::randn(s.shape, gen, at::TensorOptions().dtype(at::kFloat));
      if (s.shape.size() == 1) {
        t = 1.0 + 0.2 * t;  // norm weights near 1, not all equal
      } else if (!absl::StrContains(s.name, "embed_tokens")) {
        double scale = 1.0 / std::sqrt(static_cast<double>(s.shape.back()));
        // Sharper attention and a wider logit spread than plain 1/sqrt(fan_in).
        if (absl::StrContains(s.name, "q_proj") || absl::StrContains(s.name, "k_proj")) scale *= 2.0;
        if (absl::StrContains(s.name, "lm_head")) scale *= 3.0;
        t = t * scale;
      }
      RETURN_IF_ERROR(writer->Write(s.name, t.to(ToScalarType(s.dtype))));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
  RETURN_IF_ERROR(writer->AddFile("config.json", LlamaConfigToJson(cfg)));
  return writer->Commit();
}

absl::Status WriteRandomLlama(const std::string& dir, const LlamaConfig& cfg, DType dtype, uint64_t seed,
                              uint64_t max_shard_bytes) {
  return WriteRandomCheckpoint(dir, cfg, TinyLlamaSpecs(cfg, dtype), seed, max_shard_bytes);
}

std::string NewTestDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("TEST_TMPDIR");
  return absl::StrCat(base != nullptr ? base : "/tmp", "/", name, "-", getpid(), "-", counter++);
}

}  // namespace llama_moe
