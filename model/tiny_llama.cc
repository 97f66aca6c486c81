#include "model/tiny_llama.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint_writer.h"
#include "model/llama_layout.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "nlohmann/json.hpp"

namespace llama_moe {

LlamaConfig TinyLlamaOptions::DefaultTinyConfig() {
  LlamaConfig c;
  c.vocab_size = 512;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  // Scaled RoPE with a small original context so that the scaling's three frequency bands all
  // occur at this head_dim and the test covers the ramp.
  c.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 64};
  c.tie_word_embeddings = false;
  c.torch_dtype = "float32";
  c.bos_token_id = 510;
  c.eos_token_ids = {511};
  return c;
}

absl::Status WriteTinyLlama(const std::string& dir, const TinyLlamaOptions& o) {
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16 && o.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", DTypeName(o.dtype), " is not a float type"));
  }
  LlamaConfig cfg = o.config;
  cfg.torch_dtype = std::string(TorchDTypeName(o.dtype));
  RETURN_IF_ERROR(ValidateLlamaConfig(cfg), "tiny Llama config");
  std::vector<TensorSpec> specs = LlamaTensorSpecs(cfg, o.dtype);
  ModelWriterOptions wo;
  wo.num_shards = o.num_shards;
  wo.overwrite = o.overwrite;
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::Create(dir, specs, wo));

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  for (const TensorSpec& s : specs) {
    at::Tensor t;
    if (absl::EndsWith(s.name, "norm.weight")) {
      // Near 1 but not 1, so that a missing norm weight is caught.
      t = 1.0 + 0.1 * at::randn(s.shape, gen, f32);
    } else if (s.name == "model.embed_tokens.weight") {
      t = at::randn(s.shape, gen, f32);
    } else if (s.name == "lm_head.weight") {
      // Normed hidden states have unit RMS: logits then have a std of about 2.
      t = at::randn(s.shape, gen, f32) * (2.0 / std::sqrt(static_cast<double>(s.shape[1])));
    } else {
      t = at::randn(s.shape, gen, f32) * (1.0 / std::sqrt(static_cast<double>(s.shape[1])));
    }
    RETURN_IF_ERROR(w->Write(s.name, t.to(ToScalarType(o.dtype))));
  }
  RETURN_IF_ERROR(w->AddFile("config.json", LlamaConfigToJson(cfg)));
  nlohmann::json gen_cfg = {{"bos_token_id", cfg.bos_token_id},
                            {"eos_token_id", cfg.eos_token_ids},
                            {"do_sample", false}};
  RETURN_IF_ERROR(w->AddFile("generation_config.json", gen_cfg.dump(2) + "\n"));
  if (!o.tokenizer_json.empty()) RETURN_IF_ERROR(w->CopyFile(o.tokenizer_json, "tokenizer.json"));
  return w->Commit();
}

}  // namespace llama_moe
