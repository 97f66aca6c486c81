#include "moe/expert_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's AVX-512 intrinsics initialise their "undefined" operands from themselves, which
// -Wuninitialized reports (at the header's lines) wherever they are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define LLAMA_MOE_HAVE_X86_KERNELS 1
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

// Dot products of R weight rows with NT token vectors, out[r*NT + t] = rows[r] · v[t]. Each
// loaded piece of a weight row is used for all NT tokens. U independent accumulators per
// (row, token) pair keep the FMA pipeline busy when the tile is small (a decode step's single
// token): with R*NT*U >= 8 chains, FMA latency is hidden.
template <int R, int NT>
constexpr int Unroll() {
  return R * NT >= 8 ? 1 : 8 / (R * NT);
}

template <typename W, int R, int NT>
void DotTilePortable(const W* const* rows, const float* const* v, int64_t len, float* out) {
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NT; ++t) {
      float s[4] = {0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 4 <= len; i += 4) {
        for (int k = 0; k < 4; ++k) s[k] += ToFloat(rows[r][i + k]) * v[t][i + k];
      }
      for (; i < len; ++i) s[0] += ToFloat(rows[r][i]) * v[t][i];
      out[r * NT + t] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  }
}

#ifdef LLAMA_MOE_HAVE_X86_KERNELS
// Compiled for AVX2+FMA by attribute (the rest of the build stays baseline x86-64) and called
// only after BestKernelIsa checked the CPU.
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
      for (int64_t j = i; j < len; ++j) s += ToFloat(rows[r][j]) * v[t][j];
      out[r * NT + t] = s;
    }
  }
}

// bfloat16 weights times bfloat16 token vectors with AVX512-BF16's VDPBF16PS (32 products per
// instruction, float32 accumulation), as oneDNN's bfloat16 GEMMs do: twice the products per
// instruction of converting the weights to float32, at the price of token vectors rounded to
// bfloat16 (the GEMM path rounds them too). Tails use masked loads.
#define LLAMA_MOE_AVX512BF16 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512bf16")))

template <int R, int NT>
LLAMA_MOE_AVX512BF16 void DotTileDpBf16(const uint16_t* const* rows, const uint16_t* const* v, int64_t len,
                                        float* out) {
  constexpr int U = Unroll<R, NT>();
  __m512 acc[U][R][NT];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) acc[u][r][t] = _mm512_setzero_ps();
    }
  }
  int64_t i = 0;
  for (; i + 32 * U <= len; i += 32 * U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      __m512i wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(rows[r] + i + 32 * u);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const __m512i xv = _mm512_loadu_si512(v[t] + i + 32 * u);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[u][r][t] = _mm512_dpbf16_ps(acc[u][r][t], (__m512bh)wv[r], (__m512bh)xv);
      }
    }
  }
  for (; i < len; i += 32) {
    const int64_t left = len - i;
    const __mmask32 mask = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << left) - 1);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mask, rows[r] + i);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        acc[0][r][t] = _mm512_dpbf16_ps(acc[0][r][t], (__m512bh)wv, (__m512bh)_mm512_maskz_loadu_epi16(mask, v[t] + i));
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      __m512 a = acc[0][r][t];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) a = _mm512_add_ps(a, acc[u][r][t]);
      out[r * NT + t] = _mm512_reduce_add_ps(a);
    }
  }
}
#endif  // LLAMA_MOE_HAVE_X86_KERNELS

// Tokens per register tile: 2 weight rows x 4 tokens is 8 accumulators, plus the loaded rows
// and token pieces, within AVX2's 16 registers.
constexpr int kMaxTileTokens = 4;

// A tile function for weights W and token vectors V (float32, or bfloat16 bits for VDPBF16PS).
template <typename W, typename V>
using TileFn = void (*)(const W* const*, const V* const*, int64_t, float*);

// The tile functions for 1 and 2 weight rows, indexed by the tile's token count (1..4).
template <typename W, typename V>
struct Tiles {
  TileFn<W, V> single[kMaxTileTokens + 1];
  TileFn<W, V> pair[kMaxTileTokens + 1];
};

template <typename W>
Tiles<W, float> FloatTiles(KernelIsa isa) {
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (isa != KernelIsa::kPortable && CpuSupports(isa)) {  // AVX512-BF16 CPUs have AVX2+FMA too
    return {{nullptr, &DotTileAvx2<W, 1, 1>, &DotTileAvx2<W, 1, 2>, &DotTileAvx2<W, 1, 3>, &DotTileAvx2<W, 1, 4>},
            {nullptr, &DotTileAvx2<W, 2, 1>, &DotTileAvx2<W, 2, 2>, &DotTileAvx2<W, 2, 3>, &DotTileAvx2<W, 2, 4>}};
  }
#endif
  return {{nullptr, &DotTilePortable<W, 1, 1>, &DotTilePortable<W, 1, 2>, &DotTilePortable<W, 1, 3>,
           &DotTilePortable<W, 1, 4>},
          {nullptr, &DotTilePortable<W, 2, 1>, &DotTilePortable<W, 2, 2>, &DotTilePortable<W, 2, 3>,
           &DotTilePortable<W, 2, 4>}};
}

// Rows per parallel chunk: at least ~32K weights, so that a chunk's reads dwarf the cost of
// handing it to a thread.
int64_t Grain(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length)); }

// Round to nearest even, as ATen's float32 -> bfloat16 conversion; NaN stays NaN.
inline uint16_t RoundToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline void StoreAs(float v, float* dst) { *dst = v; }
inline void StoreAs(float v, uint16_t* dst) { *dst = RoundToBf16(v); }

// The three phases for n tokens x (vectors of type V) through one expert: gate and up rows of
// all tokens (the two weight rows read together), the weighted activation a = w * silu(g) * u
// stored as V, and the down projection accumulated into y. g and u are [n][Ie] float32, a is
// [n][Ie] (it may alias g when V is float).
template <typename W, typename V>
void SwiGluPhases(const W* gate, const W* up, const W* down, int64_t H, int64_t Ie, int64_t n, const V* const* x,
                  const Tiles<W, V>& tiles, const float* w, float* g, float* u, V* a, float* const* y_rows) {
  at::parallel_for(0, Ie, Grain(2 * H), [&](int64_t begin, int64_t end) {
    float out[2 * kMaxTileTokens];
    for (int64_t r = begin; r < end; ++r) {
      const W* rows[2] = {gate + r * H, up + r * H};
      for (int64_t t0 = 0; t0 < n; t0 += kMaxTileTokens) {
        const int nt = static_cast<int>(std::min<int64_t>(kMaxTileTokens, n - t0));
        tiles.pair[nt](rows, x + t0, H, out);
        for (int t = 0; t < nt; ++t) {
          g[(t0 + t) * Ie + r] = out[t];
          u[(t0 + t) * Ie + r] = out[nt + t];
        }
      }
    }
  });
  // The routing weight folded in before the down projection.
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < Ie; ++r) {
      const float gr = g[t * Ie + r];
      StoreAs(w[t] * (gr / (1.0f + std::exp(-gr))) * u[t * Ie + r], a + t * Ie + r);
    }
  }
  at::parallel_for(0, H, Grain(Ie), [&](int64_t begin, int64_t end) {
    float out[kMaxTileTokens];
    const V* at[kMaxTileTokens];
    for (int64_t h = begin; h < end; ++h) {
      const W* row = down + h * Ie;
      for (int64_t t0 = 0; t0 < n; t0 += kMaxTileTokens) {
        const int nt = static_cast<int>(std::min<int64_t>(kMaxTileTokens, n - t0));
        for (int t = 0; t < nt; ++t) at[t] = a + (t0 + t) * Ie;
        tiles.single[nt](&row, at, Ie, out);
        for (int t = 0; t < nt; ++t) y_rows[t0 + t][h] += out[t];
      }
    }
  });
}

// Scratch layout (SwiGluScratchFloats): g [n][Ie], u [n][Ie] float32, then for the AVX512-BF16
// form the bfloat16 tokens [n][H] and activations [n][Ie].
template <typename W>
void SwiGluTokens(const W* gate, const W* up, const W* down, int64_t H, int64_t Ie, int64_t n,
                  const float* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa) {
  float* g = scratch;
  float* u = scratch + n * Ie;
  SwiGluPhases<W, float>(gate, up, down, H, Ie, n, x_rows, FloatTiles<W>(isa), w, g, u, /*a=*/g, y_rows);
}

#ifdef LLAMA_MOE_HAVE_X86_KERNELS
// bfloat16 weights on AVX512-BF16: the tokens and the activations are rounded to bfloat16 and
// multiplied with VDPBF16PS.
void SwiGluTokensDpBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                        int64_t n, const float* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  static constexpr Tiles<uint16_t, uint16_t> kTiles = {
      {nullptr, &DotTileDpBf16<1, 1>, &DotTileDpBf16<1, 2>, &DotTileDpBf16<1, 3>, &DotTileDpBf16<1, 4>},
      {nullptr, &DotTileDpBf16<2, 1>, &DotTileDpBf16<2, 2>, &DotTileDpBf16<2, 3>, &DotTileDpBf16<2, 4>}};
  float* g = scratch;
  float* u = scratch + n * Ie;
  uint16_t* xb = reinterpret_cast<uint16_t*>(scratch + 2 * n * Ie);
  uint16_t* ab = xb + n * H;
  const uint16_t* x[kMaxTileTokens * 8];  // rows of xb: the dispatch sends at most 31 tokens; more use the heap
  std::vector<const uint16_t*> x_heap;
  const uint16_t** xp = x;
  if (n > kMaxTileTokens * 8) {
    x_heap.resize(static_cast<size_t>(n));
    xp = x_heap.data();
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < H; ++i) StoreAs(x_rows[t][i], xb + t * H + i);
    xp[t] = xb + t * H;
  }
  SwiGluPhases<uint16_t, uint16_t>(gate, up, down, H, Ie, n, xp, kTiles, w, g, u, ab, y_rows);
}
#endif  // LLAMA_MOE_HAVE_X86_KERNELS

}  // namespace

bool CpuSupports(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kPortable:
      return true;
    case KernelIsa::kAvx2Fma:
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
    case KernelIsa::kAvx512Bf16:
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
      return CpuSupports(KernelIsa::kAvx2Fma) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
#else
      return false;
#endif
  }
  return false;
}

int64_t SwiGluScratchFloats(int64_t H, int64_t Ie, int64_t n) {
  // float32 gate and up values, then bfloat16 copies of the tokens and activations (the
  // AVX512-BF16 form).
  return 2 * n * Ie + (n * (H + Ie) + 1) / 2;
}

KernelIsa BestKernelIsa() {
  static const KernelIsa best = CpuSupports(KernelIsa::kAvx512Bf16) ? KernelIsa::kAvx512Bf16
                                : CpuSupports(KernelIsa::kAvx2Fma)  ? KernelIsa::kAvx2Fma
                                                                    : KernelIsa::kPortable;
  return best;
}

void SwiGluAccumulate(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie, int64_t n,
                      const float* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa) {
  SwiGluTokens(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, isa);
}

void SwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                      int64_t n, const float* const* x_rows, const float* w, float* scratch, float* const* y_rows,
                      KernelIsa isa) {
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (isa == KernelIsa::kAvx512Bf16 && CpuSupports(isa)) {
    SwiGluTokensDpBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
    return;
  }
#endif
  SwiGluTokens(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, isa);
}

}  // namespace llama_moe
