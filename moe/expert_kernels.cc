#include "moe/expert_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LLAMA_MOE_HAVE_AVX2_KERNELS 1
#endif

namespace llama_moe {
namespace {

inline float ToFloat(float v) { return v; }
inline float ToFloat(uint16_t bits) {  // bfloat16 is the top half of a float32
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Dot products of a weight row with one (Dot) or, sharing the loads of v, two rows (DotPair).
// Four partial sums, as the vector forms keep several accumulators.
template <typename W>
float DotPortable(const W* w, const float* v, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) s[k] += ToFloat(w[i + k]) * v[i + k];
  }
  for (; i < n; ++i) s[0] += ToFloat(w[i]) * v[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

template <typename W>
void DotPairPortable(const W* a, const W* b, const float* v, int64_t n, float* da, float* db) {
  *da = DotPortable(a, v, n);
  *db = DotPortable(b, v, n);
}

#ifdef LLAMA_MOE_HAVE_AVX2_KERNELS
// Compiled for AVX2+FMA by attribute (the rest of the build stays baseline x86-64) and called
// only after BestKernelIsa/CpuSupports checked the CPU.
#define LLAMA_MOE_AVX2 __attribute__((target("avx2,fma")))

LLAMA_MOE_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
LLAMA_MOE_AVX2 inline __m256 Load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
LLAMA_MOE_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <typename W>
LLAMA_MOE_AVX2 float DotAvx2(const W* w, const float* v, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(Load8(w + i), _mm256_loadu_ps(v + i), a0);
    a1 = _mm256_fmadd_ps(Load8(w + i + 8), _mm256_loadu_ps(v + i + 8), a1);
    a2 = _mm256_fmadd_ps(Load8(w + i + 16), _mm256_loadu_ps(v + i + 16), a2);
    a3 = _mm256_fmadd_ps(Load8(w + i + 24), _mm256_loadu_ps(v + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(Load8(w + i), _mm256_loadu_ps(v + i), a0);
  float s = HorizontalSum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += ToFloat(w[i]) * v[i];
  return s;
}

template <typename W>
LLAMA_MOE_AVX2 void DotPairAvx2(const W* a, const W* b, const float* v, int64_t n, float* da, float* db) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(v + i), v1 = _mm256_loadu_ps(v + i + 8);
    a0 = _mm256_fmadd_ps(Load8(a + i), v0, a0);
    b0 = _mm256_fmadd_ps(Load8(b + i), v0, b0);
    a1 = _mm256_fmadd_ps(Load8(a + i + 8), v1, a1);
    b1 = _mm256_fmadd_ps(Load8(b + i + 8), v1, b1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 v0 = _mm256_loadu_ps(v + i);
    a0 = _mm256_fmadd_ps(Load8(a + i), v0, a0);
    b0 = _mm256_fmadd_ps(Load8(b + i), v0, b0);
  }
  float sa = HorizontalSum(_mm256_add_ps(a0, a1)), sb = HorizontalSum(_mm256_add_ps(b0, b1));
  for (; i < n; ++i) {
    sa += ToFloat(a[i]) * v[i];
    sb += ToFloat(b[i]) * v[i];
  }
  *da = sa;
  *db = sb;
}
#endif  // LLAMA_MOE_HAVE_AVX2_KERNELS

// Rows per parallel chunk: at least ~32K weights, so that a chunk's reads dwarf the cost of
// handing it to a thread.
int64_t Grain(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length)); }

template <typename W>
void OneToken(const W* gate, const W* up, const W* down, int64_t H, int64_t Ie, const float* x, float w,
              float* scratch, float* y, KernelIsa isa) {
  using DotFn = float (*)(const W*, const float*, int64_t);
  using DotPairFn = void (*)(const W*, const W*, const float*, int64_t, float*, float*);
  DotFn dot = &DotPortable<W>;
  DotPairFn dot_pair = &DotPairPortable<W>;
#ifdef LLAMA_MOE_HAVE_AVX2_KERNELS
  if (isa == KernelIsa::kAvx2Fma && BestKernelIsa() == KernelIsa::kAvx2Fma) {  // never on a CPU without it
    dot = &DotAvx2<W>;
    dot_pair = &DotPairAvx2<W>;
  }
#endif
  float* g = scratch;
  float* u = scratch + Ie;
  at::parallel_for(0, Ie, Grain(2 * H), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) dot_pair(gate + r * H, up + r * H, x, H, g + r, u + r);
  });
  // a = w * silu(g) * u, the routing weight folded in before the down projection.
  for (int64_t r = 0; r < Ie; ++r) g[r] = w * (g[r] / (1.0f + std::exp(-g[r]))) * u[r];
  at::parallel_for(0, H, Grain(Ie), [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) y[h] += dot(down + h * Ie, g, Ie);
  });
}

}  // namespace

bool CpuSupports(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kPortable:
      return true;
    case KernelIsa::kAvx2Fma:
#ifdef LLAMA_MOE_HAVE_AVX2_KERNELS
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
  }
  return false;
}

KernelIsa BestKernelIsa() {
  static const KernelIsa best = CpuSupports(KernelIsa::kAvx2Fma) ? KernelIsa::kAvx2Fma : KernelIsa::kPortable;
  return best;
}

void OneTokenSwiGluAccumulate(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie,
                              const float* x, float w, float* scratch, float* y, KernelIsa isa) {
  OneToken(gate, up, down, H, Ie, x, w, scratch, y, isa);
}

void OneTokenSwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H,
                              int64_t Ie, const float* x, float w, float* scratch, float* y, KernelIsa isa) {
  OneToken(gate, up, down, H, Ie, x, w, scratch, y, isa);
}

}  // namespace llama_moe
