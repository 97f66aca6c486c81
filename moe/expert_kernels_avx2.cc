// The AVX2+FMA form of the expert kernel: dot tiles of 8-float vectors (bfloat16 weights are
// widened to float32 in registers).
#include "moe/expert_kernel_forms.h"

#ifdef LLAMA_MOE_HAVE_X86_KERNELS
#include "moe/expert_kernels_x86.h"

namespace llama_moe {
namespace kernel_internal {
namespace {

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

template <typename W, int R, int NT>
LLAMA_MOE_AVX2 void DotTileAvx2(const W* const* rows, const float* const* v, int64_t len, float* out) {
  constexpr int U = Unroll<R, NT>();
  __m256 acc[U][R][NT];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) acc[u][r][t] = _mm256_setzero_ps();
    }
  }
  int64_t i = 0;
  for (; i + 8 * U <= len; i += 8 * U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      __m256 wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = Load8(rows[r] + i + 8 * u);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m256 xv = _mm256_loadu_ps(v[t] + i + 8 * u);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[u][r][t] = _mm256_fmadd_ps(wv[r], xv, acc[u][r][t]);
      }
    }
  }
  for (; i + 8 <= len; i += 8) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 wv = Load8(rows[r] + i);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) acc[0][r][t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v[t] + i), acc[0][r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      __m256 a = acc[0][r][t];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[u][r][t]);
      float s = HorizontalSum(a);
      for (int64_t j = i; j < len; ++j) s += AsFloat(rows[r][j]) * v[t][j];
      out[r * NT + t] = s;
    }
  }
}

template <typename W>
constexpr Tiles<W, float> kAvx2 = {
    {nullptr, &DotTileAvx2<W, 1, 1>, &DotTileAvx2<W, 1, 2>, &DotTileAvx2<W, 1, 3>, &DotTileAvx2<W, 1, 4>},
    {nullptr, &DotTileAvx2<W, 2, 1>, &DotTileAvx2<W, 2, 2>, &DotTileAvx2<W, 2, 3>, &DotTileAvx2<W, 2, 4>}};

}  // namespace

const Tiles<float, float>& Avx2TilesF32() { return kAvx2<float>; }
const Tiles<uint16_t, float>& Avx2TilesBf16() { return kAvx2<uint16_t>; }

}  // namespace kernel_internal
}  // namespace llama_moe
#endif  // LLAMA_MOE_HAVE_X86_KERNELS
