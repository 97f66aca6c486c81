// Rotary position embeddings (RoPE) of Llama 3, including the "llama3" rope_scaling of Llama 3.1+.
//
// Hugging Face stores the q/k projection rows so that rotation pairs are (i, i + head_dim/2) (the
// "rotate_half" layout), so ApplyRope rotates halves; no permutation of the checkpoint is needed.
//
// Example:
//   LlamaConfig cfg;
//   const at::Tensor inv_freq = RopeInverseFrequencies(cfg);  // [D/2] float32
//   const at::Tensor positions = at::arange(6, at::kLong).reshape({1, 6});
//   RopeTables rope = MakeRopeTables(inv_freq, positions, at::kBFloat16);  // positions [B,T]
//   at::Tensor q = ApplyRope(at::randn({1, 32, 6, cfg.head_dim}).to(at::kBFloat16), rope);  // q [B,heads,T,D]
#ifndef LLAMA_MOE_MODEL_ROPE_H_
#define LLAMA_MOE_MODEL_ROPE_H_

#include <ATen/core/Tensor.h>

#include "model/llama_config.h"

namespace llama_moe {

// inv_freq[i] = rope_theta^(-2i/D), then rescaled as HF's `_compute_llama3_parameters` when
// cfg.rope_scaling is set: wavelengths longer than original_max_position_embeddings /
// low_freq_factor are divided by `factor`, shorter than .../high_freq_factor kept, and a linear
// ramp in between. Computed in float64 and rounded to float32, which is the dtype of HF's
// `inv_freq` buffer, so positions map to the same frequencies as in HF. Returned on the CPU.
at::Tensor RopeInverseFrequencies(const LlamaConfig& cfg);

// cos/sin of position * inv_freq, duplicated over both halves: [B,1,T,D] in the compute dtype.
struct RopeTables {
  at::Tensor cos;
  at::Tensor sin;
};

// `positions` [B,T] int64 on the compute device. The angles are formed in float64 (HF forms them
// in float32, which loses ~position * 6e-8 radians; float64 is at least as close to the exact
// value) and rounded once to `dtype`.
RopeTables MakeRopeTables(const at::Tensor& inv_freq, const at::Tensor& positions, c10::ScalarType dtype);

// x [B,heads,T,D] -> x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1].
at::Tensor ApplyRope(const at::Tensor& x, const RopeTables& rope);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_ROPE_H_
