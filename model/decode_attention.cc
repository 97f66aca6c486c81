#include "model/decode_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "model/bfloat16.h"
#include "model/decode_linear.h"
#include "model/x86_intrinsics.h"

namespace llama_moe {
namespace {

// One query row's attention over S cached rows: scores into `p` (S floats), then the float32
// output row `o` (D floats). Keys/values row j at k + j * ld.
template <typename E>
void PortableRow(const float* q, const E* k, const E* v, int64_t ld, int64_t s, int64_t d, const float* bias,
                 float scale, float* p, float* o) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < s; ++j) {
    float acc = 0;
    for (int64_t i = 0; i < d; ++i) acc += q[i] * AsFloat(k[j * ld + i]);
    p[j] = acc * scale + bias[j];
    top = std::max(top, p[j]);
  }
  float sum = 0;
  for (int64_t j = 0; j < s; ++j) {
    p[j] = p[j] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(p[j] - top);
    sum += p[j];
  }
  std::fill(o, o + d, 0.0f);
  for (int64_t j = 0; j < s; ++j) {
    if (p[j] == 0) continue;
    for (int64_t i = 0; i < d; ++i) o[i] += p[j] * AsFloat(v[j * ld + i]);
  }
  for (int64_t i = 0; i < d; ++i) o[i] /= sum;
}

#ifdef LLAMA_MOE_X86_INTRINSICS
#define LLAMA_MOE_DA_AVX512 __attribute__((target("avx2,fma,avx512f")))

LLAMA_MOE_DA_AVX512 inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
LLAMA_MOE_DA_AVX512 inline __m512 Load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// PortableRow for D a multiple of 16, the same operations in vector lanes (the dot products'
// partial sums are added in another order).
template <typename E>
LLAMA_MOE_DA_AVX512 void Avx512Row(const float* q, const E* k, const E* v, int64_t ld, int64_t s, int64_t d,
                                   const float* bias, float scale, float* p, float* o) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < s; ++j) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), Load16(k + j * ld + i), acc);
    p[j] = _mm512_reduce_add_ps(acc) * scale + bias[j];
    top = std::max(top, p[j]);
  }
  float sum = 0;
  for (int64_t j = 0; j < s; ++j) {
    p[j] = p[j] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(p[j] - top);
    sum += p[j];
  }
  for (int64_t i = 0; i < d; i += 16) _mm512_storeu_ps(o + i, _mm512_setzero_ps());
  for (int64_t j = 0; j < s; ++j) {
    if (p[j] == 0) continue;
    const __m512 pj = _mm512_set1_ps(p[j]);
    for (int64_t i = 0; i < d; i += 16) {
      _mm512_storeu_ps(o + i, _mm512_fmadd_ps(pj, Load16(v + j * ld + i), _mm512_loadu_ps(o + i)));
    }
  }
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (int64_t i = 0; i < d; i += 16) _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(o + i), inv));
}
#endif

template <typename E>
using RowFn = void (*)(const float*, const E*, const E*, int64_t, int64_t, int64_t, const float*, float, float*,
                       float*);

template <typename E>
RowFn<E> PickRow(DecodeAttentionForm form) {
#ifdef LLAMA_MOE_X86_INTRINSICS
  if (form == DecodeAttentionForm::kAvx512) return &Avx512Row<E>;
#endif
  (void)form;
  return &PortableRow<E>;
}

template <typename E>
void Attend(DecodeAttentionForm form, const at::Tensor& qf, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& bias, float scale, at::Tensor& out32) {
  const int64_t b = qf.size(0), heads = qf.size(1), t = qf.size(2), d = qf.size(3);
  const int64_t kv = k.size(1), s = k.size(2), group = heads / kv;
  const RowFn<E> row = PickRow<E>(form);
  const float* qp = qf.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out32.data_ptr<float>();
  const E* kp = reinterpret_cast<const E*>(k.data_ptr());
  const E* vp = reinterpret_cast<const E*>(v.data_ptr());
  // One work item per (sequence, query head): its T rows share the kv head's cache rows.
  at::parallel_for(0, b * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(static_cast<size_t>(s));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / heads, h = item % heads, g = h / group;
      const E* kr = kp + bi * k.stride(0) + g * k.stride(1);
      const E* vr = vp + bi * v.stride(0) + g * v.stride(1);
      for (int64_t ti = 0; ti < t; ++ti) {
        row(qp + ((bi * heads + h) * t + ti) * d, kr, vr, k.stride(2), s, d, bp + (bi * t + ti) * s, scale, p.data(),
            op + ((bi * t + ti) * heads + h) * d);
      }
    }
  });
}

DecodeAttentionForm BestForm() {
  static const DecodeAttentionForm best = DecodeAttentionFormSupported(DecodeAttentionForm::kAvx512)
                                              ? DecodeAttentionForm::kAvx512
                                              : DecodeAttentionForm::kPortable;
  return best;
}

}  // namespace

const char* DecodeAttentionFormName(DecodeAttentionForm form) {
  switch (form) {
    case DecodeAttentionForm::kPortable: return "portable";
    case DecodeAttentionForm::kAvx512: return "avx512";
  }
  return "?";
}

bool DecodeAttentionFormSupported(DecodeAttentionForm form) {
  switch (form) {
    case DecodeAttentionForm::kPortable: return true;
#ifdef LLAMA_MOE_X86_INTRINSICS
    case DecodeAttentionForm::kAvx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2");
#endif
    default: return false;
  }
}

namespace {
bool Takes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!q.defined() || !k.defined() || !v.defined() || !q.is_cpu() || !k.is_cpu() || !v.is_cpu()) return false;
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.sizes() != v.sizes() || k.strides() != v.strides()) return false;
  const at::ScalarType dtype = q.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kBFloat16) || k.scalar_type() != dtype || v.scalar_type() != dtype) {
    return false;
  }
  if (q.size(0) != k.size(0) || q.size(3) != k.size(3) || k.size(1) == 0 || q.size(1) % k.size(1) != 0) return false;
  if (q.size(2) < 1 || q.size(2) > kDecodeAttentionMaxRows || k.size(2) < 1) return false;
  if (k.stride(3) != 1 || k.stride(2) < k.size(3)) return false;
  return !(c10::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()));
}
}  // namespace

bool CanDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return DecodeLinearEnabled() && Takes(q, k, v);
}

at::Tensor DecodeAttentionWith(DecodeAttentionForm form, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& bias, double scale) {
  TORCH_CHECK(Takes(q, k, v), "DecodeAttention: unsupported operands q ", q.toString(), q.sizes(), " k ", k.sizes(),
              " v ", v.sizes());
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3), s = k.size(2);
  TORCH_CHECK(bias.numel() == b * t * s, "DecodeAttention: bias ", bias.sizes(), " for B ", b, ", T ", t, ", S ", s);
  if (form == DecodeAttentionForm::kAvx512 && d % 16 != 0) form = DecodeAttentionForm::kPortable;
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  const at::Tensor bf = bias.to(at::kFloat).reshape({b, t, s}).contiguous();
  at::Tensor out32 = at::empty({b, t, heads * d}, q.options().dtype(at::kFloat));
  const float sc = static_cast<float>(scale);
  if (q.scalar_type() == at::kBFloat16) {
    Attend<uint16_t>(form, qf, k, v, bf, sc, out32);
  } else {
    Attend<float>(form, qf, k, v, bf, sc, out32);
  }
  return q.scalar_type() == at::kFloat ? out32 : out32.to(q.scalar_type());
}

at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                           double scale) {
  return DecodeAttentionWith(BestForm(), q, k, v, bias, scale);
}

}  // namespace llama_moe
