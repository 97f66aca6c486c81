#include "model/decode_norm.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <cstdint>

#include "model/bfloat16.h"
#include "model/decode_linear.h"

namespace llama_moe {
namespace {

// One row: normed values rounded to E as the ATen form's normed.to(dtype), then times the
// weight and rounded again, as its weight * normed in dtype.
template <typename E>
void NormRow(const E* x, const E* w, int64_t h, float eps, E* y) {
  float sum = 0;
  for (int64_t i = 0; i < h; ++i) sum += AsFloat(x[i]) * AsFloat(x[i]);
  const float r = 1.0f / std::sqrt(sum / static_cast<float>(h) + eps);
  for (int64_t i = 0; i < h; ++i) {
    E normed;
    StoreAs(AsFloat(x[i]) * r, &normed);
    StoreAs(AsFloat(w[i]) * AsFloat(normed), y + i);
  }
}

// The operands DecodeRmsNorm takes, whether or not the decode kernels are on.
bool Takes(const at::Tensor& x, const at::Tensor& w) {
  if (!x.defined() || !w.defined() || !x.is_cpu() || !w.is_cpu()) return false;
  if (x.dim() < 1 || w.dim() != 1 || x.size(-1) != w.size(0) || !w.is_contiguous()) return false;
  if (x.scalar_type() != w.scalar_type() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16)) {
    return false;
  }
  if (c10::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  const int64_t rows = x.size(-1) == 0 ? 0 : x.numel() / x.size(-1);
  return rows >= 1 && rows <= kDecodeLinearMaxRows;
}

}  // namespace

bool CanDecodeRmsNorm(const at::Tensor& x, const at::Tensor& w) { return DecodeLinearEnabled() && Takes(x, w); }

at::Tensor DecodeRmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(Takes(x, w), "DecodeRmsNorm: unsupported operands x ", x.toString(), x.sizes(), " w ", w.toString(),
              w.sizes());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t h = x.size(-1), rows = x.numel() / h;
  const float e = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    if (x.scalar_type() == at::kFloat) {
      NormRow(xc.data_ptr<float>() + r * h, w.data_ptr<float>(), h, e, y.data_ptr<float>() + r * h);
    } else {
      auto bits = [](const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); };
      NormRow<uint16_t>(bits(xc) + r * h, bits(w), h, e, bits(y) + r * h);
    }
  }
  return y;
}

}  // namespace llama_moe
