#include "model/llama_layout.h"

#include <ATen/ATen.h>

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace llama_moe {

std::string LayerPrefix(int64_t layer) { return absl::StrCat("model.layers.", layer, "."); }

std::string DenseFfnName(int64_t layer, const std::string& proj) {
  return absl::StrCat(LayerPrefix(layer), "mlp.", proj, ".weight");
}

std::vector<TensorSpec> DenseFfnTensorSpecs(const LlamaConfig& c, int64_t layer, DType dtype) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  return {{DenseFfnName(layer, kFfnProjections[0]), dtype, {I, H}},
          {DenseFfnName(layer, kFfnProjections[1]), dtype, {I, H}},
          {DenseFfnName(layer, kFfnProjections[2]), dtype, {H, I}}};
}

std::vector<TensorSpec> LlamaTensorSpecs(const LlamaConfig& c, DType dtype, const FfnTensorSpecs& ffn) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  const int64_t q_rows = c.num_attention_heads * c.head_dim;
  const int64_t kv_rows = c.num_key_value_heads * c.head_dim;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", dtype, {V, H}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = LayerPrefix(l);
    specs.push_back({p + "input_layernorm.weight", dtype, {H}});
    specs.push_back({p + "self_attn.q_proj.weight", dtype, {q_rows, H}});
    specs.push_back({p + "self_attn.k_proj.weight", dtype, {kv_rows, H}});
    specs.push_back({p + "self_attn.v_proj.weight", dtype, {kv_rows, H}});
    specs.push_back({p + "self_attn.o_proj.weight", dtype, {H, q_rows}});
    specs.push_back({p + "post_attention_layernorm.weight", dtype, {H}});
    for (TensorSpec& s : ffn ? ffn(l) : DenseFfnTensorSpecs(c, l, dtype)) specs.push_back(std::move(s));
  }
  specs.push_back({"model.norm.weight", dtype, {H}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", dtype, {V, H}});
  return specs;
}

absl::StatusOr<DType> ConfigDType(const LlamaConfig& cfg) {
  return ParseFloatDTypeFlag(cfg.torch_dtype);
}

absl::Status VerifyLlamaCheckpoint(const Checkpoint& ckpt, const LlamaConfig& cfg, bool read_data) {
  return VerifyCheckpointTensors(ckpt, LlamaTensorSpecs(cfg, DType::kF32), read_data);
}

absl::Status VerifyCheckpointTensors(const Checkpoint& ckpt, const std::vector<TensorSpec>& specs,
                                     bool read_data) {
  std::set<std::string> expected;
  for (const TensorSpec& s : specs) {
    expected.insert(s.name);
    ASSIGN_OR_RETURN(auto found, ckpt.Find(s.name), "checkpoint does not match its config.json");
    const TensorEntry& e = *found.first;
    if (e.shape != s.shape) {
      return absl::InvalidArgumentError(absl::StrCat("file '", found.second->path(), "': tensor '", s.name,
                                                     "' has shape ", ShapeString(e.shape), ", expected ",
                                                     ShapeString(s.shape), " from config.json"));
    }
    if (e.dtype != DType::kF32 && e.dtype != DType::kBF16 && e.dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("file '", found.second->path(), "': tensor '", s.name,
                                                     "' has dtype ", DTypeName(e.dtype),
                                                     ", expected a floating type"));
    }
    if (read_data) {
      const bool finite = at::isfinite(found.second->Get(e)).all().item<bool>();
      // Read once: its pages need not stay resident (an 8B checkpoint is larger than most RAM).
      found.second->Release(e);
      if (!finite) {
        return absl::DataLossError(absl::StrCat("file '", found.second->path(), "': tensor '", s.name,
                                                "' holds NaN or Inf values"));
      }
    }
  }
  for (const std::string& name : ckpt.TensorNames()) {
    // Old HF exports carry the RoPE table as a buffer; it is recomputed from the config.
    if (absl::EndsWith(name, "rotary_emb.inv_freq")) continue;
    if (!expected.count(name)) {
      ASSIGN_OR_RETURN(auto found, ckpt.Find(name));
      return absl::InvalidArgumentError(absl::StrCat("file '", found.second->path(), "': tensor '", name,
                                                     "' is not part of a model with this config.json"));
    }
  }
  return absl::OkStatus();
}

}  // namespace llama_moe
