// The declarative tensor table of a dense Llama checkpoint in Hugging Face naming.
//
// One place lists every tensor a Llama 3 model of a given config has, with its shape; the model
// loader, `make_tiny_llama`, `inspect --verify` and the converter all use it, so a name or shape
// is never spelled twice.
//
// Example:
//   LlamaConfig cfg;
//   for (const TensorSpec& s : LlamaTensorSpecs(cfg, DType::kBF16)) {
//     if (s.name == DenseFfnName(0, kFfnProjections[1])) return absl::OkStatus();  // [14336, 4096]
//   }
#ifndef LLAMA_MOE_MODEL_LLAMA_LAYOUT_H_
#define LLAMA_MOE_MODEL_LLAMA_LAYOUT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/llama_config.h"
#include "model/tensor_spec.h"

namespace llama_moe {

// "model.layers.3." for layer 3.
std::string LayerPrefix(int64_t layer);

// The projections of a SwiGLU FFN, in checkpoint order: gate, up, down.
inline constexpr const char* kFfnProjections[3] = {"gate_proj", "up_proj", "down_proj"};

// The dense FFN tensor "model.layers.L.mlp.<proj>.weight".
std::string DenseFfnName(int64_t layer, const std::string& proj);

// The tensors of one layer's FFN slot ("model.layers.L.mlp."): the dense SwiGLU's by default,
// an MoE block's in moe/moe_layout.h.
using FfnTensorSpecs = std::function<std::vector<TensorSpec>(int64_t layer)>;
// gate_proj, up_proj [I,H] and down_proj [H,I] of `layer`.
std::vector<TensorSpec> DenseFfnTensorSpecs(const LlamaConfig& cfg, int64_t layer, DType dtype);

// Tensors of a Llama model in checkpoint order (embeddings, layers, final norm, head), each
// layer's FFN slot from `ffn` (unset: the dense SwiGLU). The head ("lm_head.weight") is omitted
// when `cfg.tie_word_embeddings`.
std::vector<TensorSpec> LlamaTensorSpecs(const LlamaConfig& cfg, DType dtype, const FfnTensorSpecs& ffn = {});

// The storage dtype named by config.json's torch_dtype.
absl::StatusOr<DType> ConfigDType(const LlamaConfig& cfg);

// Checks that `ckpt` holds every tensor of `expected` with the expected shape (any floating
// dtype), and no unexpected tensor, with an error naming the file, tensor and shapes. With
// `read_data`, every tensor's bytes are also read and checked to be finite.
absl::Status VerifyCheckpointTensors(const Checkpoint& ckpt, const std::vector<TensorSpec>& expected,
                                     bool read_data);
// VerifyCheckpointTensors against LlamaTensorSpecs(cfg).
absl::Status VerifyLlamaCheckpoint(const Checkpoint& ckpt, const LlamaConfig& cfg, bool read_data);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_LLAMA_LAYOUT_H_
