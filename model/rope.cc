#include "model/rope.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace llama_moe {

at::Tensor RopeInverseFrequencies(const LlamaConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(cfg.rope_theta, static_cast<double>(2 * i) / cfg.head_dim);
    if (cfg.rope_scaling.has_value()) {
      const RopeScaling& s = *cfg.rope_scaling;
      const double old_len = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / s.low_freq_factor;
      const double high_freq_wavelen = old_len / s.high_freq_factor;
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_freq_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_freq_wavelen) {
        // Medium frequencies: HF's `smoothed_inv_freq`, interpolating between f / factor and f.
        const double smooth = (old_len / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv[i] = static_cast<float>(f);
  }
  return at::tensor(inv, at::TensorOptions().dtype(at::kFloat));
}

RopeTables MakeRopeTables(const at::Tensor& inv_freq, const at::Tensor& positions,
                          c10::ScalarType dtype) {
  const at::Tensor inv = inv_freq.to(positions.device(), at::kDouble);
  // [B,T,1] * [D/2] -> [B,T,D/2]
  const at::Tensor freqs = positions.to(at::kDouble).unsqueeze(-1) * inv;
  const at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);  // [B,1,T,D]
  return RopeTables{emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor ApplyRope(const at::Tensor& x, const RopeTables& rope) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor x1 = x.narrow(-1, 0, half);
  const at::Tensor x2 = x.narrow(-1, half, half);
  const at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * rope.cos + rotated * rope.sin;
}

}  // namespace llama_moe
