#include "moe/expert_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's AVX-512 intrinsics initialise their "undefined" operands from themselves, which
// -Wuninitialized and -Wmaybe-uninitialized report (at the header's lines) wherever they are
// inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

// Masks of the first `left` of 16 or 32 lanes (all when left is larger, none when it is not
// positive), for tails.
inline __mmask16 Mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << std::max<int64_t>(left, 0)) - 1);
}
inline __mmask32 Mask32(int64_t left) {
  return left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << std::max<int64_t>(left, 0)) - 1);
}

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
    const __mmask32 mask = Mask32(len - i);
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

// ---- The panel form: a GEMM micro-kernel for segments of 16 tokens and more (AVX-512) ----
//
// From a few dozen tokens the dot-product tiles above lose to the GEMM libraries (each loaded
// token piece serves only two weight rows, and every (row, token) pair ends in a horizontal
// sum). The panel form is the GEMM libraries' own scheme with the roles that suit experts: the
// *tokens* are copied (packed) into k-major panels, [len][block width] per block of tokens, and
// the weights are read in place, each weight broadcast from memory and multiplied into up to
// four 16-token vectors. A tile (6 rows x 64 tokens in float32, 12 x 32 in bfloat16, see
// PanelShape) keeps 24 accumulators in registers, so it runs near the FMA units' rate: measured
// on one core of an AMD EPYC (AVX-512, AVX512-BF16) at 110-120 GFLOP/s in float32 and 220-240 in
// bfloat16 from 32 tokens up, against the CPU's 117 and 234 peaks, where OpenBLAS's sgemm
// reaches 53-96 and oneDNN's bfloat16 GEMM 168-213 on the same expert shapes (they pack the
// weights, which for an expert used by a few dozen tokens costs a large share of the
// multiply). Packing the tokens instead costs n*len copies against the tile's n*len*rows FMAs.
//
// Panel layout: tokens padded to a multiple of 16 (zeros) and split into blocks of the tile's
// width (the last one narrower, a multiple of 16); block b (first token t0, width bw) starts at
// element t0*kp, where kp is len rounded up to the element pairs VDPBF16PS takes (1 for
// float32, 2 for bfloat16), and holds element k of token t0+t at (k/pair)*bw*pair + t*pair +
// k%pair. The tile output uses the same layout with pair 1 ([rows][bw] per block), so the
// float32 gate/up output is already the down projection's panel.
#define LLAMA_MOE_AVX512 __attribute__((target("avx2,fma,avx512f")))

// Tile shapes (weight rows x tokens per full block), measured on the AMD EPYC: float32 6 x 64,
// 10 loads per 24 FMAs (12 x 32, 14 loads, ran 10-20% slower: broadcasting float32 from memory
// is the limit there); bfloat16 12 x 32, each broadcast pair feeding two 32-product VDPBF16PS.
template <typename W>
struct PanelShape;
template <>
struct PanelShape<float> {
  static constexpr int kRows = 6, kBlock = 64;
};
template <>
struct PanelShape<uint16_t> {
  static constexpr int kRows = 12, kBlock = 32;
};

// The accumulators of an R x 16*NV tile: zeroed, and stored to rows of c (row stride ldc).
template <int R, int NV>
LLAMA_MOE_AVX512 inline void ZeroTile(__m512 (&acc)[R][NV]) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
}

template <int R, int NV>
LLAMA_MOE_AVX512 inline void StoreTile(const __m512 (&acc)[R][NV], float* c, int64_t ldc) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
  }
}

// c[r*ldc + t] = rows r of w (row stride ldw) . panel column t, for R rows and 16*NV tokens.
template <int R, int NV>
LLAMA_MOE_AVX512 void PanelTileF32(const float* w, int64_t ldw, const float* p, int64_t len, float* c,
                                   int64_t ldc) {
  __m512 acc[R][NV];
  ZeroTile(acc);
  for (int64_t k = 0; k < len; ++k) {
    __m512 pv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) pv[v] = _mm512_loadu_ps(p + (k * NV + v) * 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 b = _mm512_set1_ps(w[r * ldw + k]);  // an embedded broadcast of the FMA
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(b, pv[v], acc[r][v]);
    }
  }
  StoreTile(acc, c, ldc);
}

// bfloat16: each step broadcasts a pair of adjacent weights (one 32-bit word) and VDPBF16PS
// multiplies it into 16 tokens' pairs; an odd last element pairs with zero (its panel partner
// is a zero pad).
template <int R, int NV, bool kLastOdd>
LLAMA_MOE_AVX512BF16 inline void PanelStepBf16(__m512 (&acc)[R][NV], const uint16_t* w, int64_t ldw,
                                               const uint16_t* p, int64_t k) {
  __m512i pv[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) pv[v] = _mm512_loadu_si512(p + (k * NV + 2 * v) * 16);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    int32_t pair;
    if (kLastOdd) {
      pair = w[r * ldw + k];
    } else {
      std::memcpy(&pair, w + r * ldw + k, sizeof pair);
    }
    const __m512i b = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)b, (__m512bh)pv[v]);
  }
}

template <int R, int NV>
LLAMA_MOE_AVX512BF16 void PanelTileBf16(const uint16_t* w, int64_t ldw, const uint16_t* p, int64_t len, float* c,
                                        int64_t ldc) {
  __m512 acc[R][NV];
  ZeroTile(acc);
  int64_t k = 0;
  for (; k + 2 <= len; k += 2) PanelStepBf16<R, NV, false>(acc, w, ldw, p, k);
  if (k < len) PanelStepBf16<R, NV, true>(acc, w, ldw, p, k);
  StoreTile(acc, c, ldc);
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

// The dot-product forms' scratch: float32 g and u, then bfloat16 copies of the tokens and
// activations (the AVX512-BF16 form).
int64_t DotScratchFloats(int64_t H, int64_t Ie, int64_t n) { return 2 * n * Ie + (n * (H + Ie) + 1) / 2; }

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
template <typename X>
void SwiGluTokensDpBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                        int64_t n, const X* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  static constexpr Tiles<uint16_t, uint16_t> kTiles = {
      {nullptr, &DotTileDpBf16<1, 1>, &DotTileDpBf16<1, 2>, &DotTileDpBf16<1, 3>, &DotTileDpBf16<1, 4>},
      {nullptr, &DotTileDpBf16<2, 1>, &DotTileDpBf16<2, 2>, &DotTileDpBf16<2, 3>, &DotTileDpBf16<2, 4>}};
  float* g = scratch;
  float* u = scratch + n * Ie;
  uint16_t* xb = reinterpret_cast<uint16_t*>(scratch + 2 * n * Ie);
  uint16_t* ab = xb + n * H;
  const uint16_t* x[kMaxTileTokens * 8];  // token rows: the dispatch sends fewer than 16 tokens; more use the heap
  std::vector<const uint16_t*> x_heap;
  const uint16_t** xp = x;
  if (n > kMaxTileTokens * 8) {
    x_heap.resize(static_cast<size_t>(n));
    xp = x_heap.data();
  }
  for (int64_t t = 0; t < n; ++t) {
    if constexpr (std::is_same<X, uint16_t>::value) {
      xp[t] = x_rows[t];  // already bfloat16
    } else {
      for (int64_t i = 0; i < H; ++i) StoreAs(x_rows[t][i], xb + t * H + i);
      xp[t] = xb + t * H;
    }
  }
  SwiGluPhases<uint16_t, uint16_t>(gate, up, down, H, Ie, n, xp, kTiles, w, g, u, ab, y_rows);
}

// The panel form's driver (see PanelTileF32). P is the panel element: float, or bfloat16 bits.
template <typename P>
constexpr int64_t kPair = sizeof(P) == 2 ? 2 : 1;

inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Tile functions by block width (16, 32, ... tokens) and row count (1..kRows).
template <typename W>
using PanelFn = void (*)(const W*, int64_t, const W*, int64_t, float*, int64_t);
template <typename W>
using PanelTable = std::array<std::array<PanelFn<W>, PanelShape<W>::kRows>, PanelShape<W>::kBlock / 16>;

template <int NV, size_t... I>
constexpr std::array<PanelFn<float>, sizeof...(I)> F32Tiles(std::index_sequence<I...>) {
  return {{&PanelTileF32<int(I) + 1, NV>...}};
}
template <int NV, size_t... I>
constexpr std::array<PanelFn<uint16_t>, sizeof...(I)> Bf16Tiles(std::index_sequence<I...>) {
  return {{&PanelTileBf16<int(I) + 1, NV>...}};
}
constexpr auto kF32Rows = std::make_index_sequence<PanelShape<float>::kRows>();
constexpr auto kBf16Rows = std::make_index_sequence<PanelShape<uint16_t>::kRows>();
constexpr PanelTable<float> kF32Panel = {
    {F32Tiles<1>(kF32Rows), F32Tiles<2>(kF32Rows), F32Tiles<3>(kF32Rows), F32Tiles<4>(kF32Rows)}};
constexpr PanelTable<uint16_t> kBf16Panel = {{Bf16Tiles<1>(kBf16Rows), Bf16Tiles<2>(kBf16Rows)}};

// Width of the token block starting at t0 of np (a multiple of 16) padded tokens.
inline int64_t BlockWidth(int64_t t0, int64_t np, int64_t block) { return std::min(block, np - t0); }

// The panel form's data movement, vectorised: at 32 tokens a tile does len/16 FMAs per output
// element, so scalar packing, activation and transposition (each a few cycles per element)
// would cost 20% and more of a forward; with 16x16 register transposes they cost a few percent.
LLAMA_MOE_AVX512 inline void Transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
  }
}

// 16 floats of p from element k, zeros beyond len and for a pad token (p null).
LLAMA_MOE_AVX512 inline __m512 LoadRow(const float* p, int64_t k, int64_t len) {
  if (p == nullptr || k >= len) return _mm512_setzero_ps();
  return _mm512_maskz_loadu_ps(Mask16(len - k), p + k);
}

// silu(g) = g / (1 + exp(-g)), exp by Cody-Waite reduction and a degree-6 polynomial (measured
// against float64 over [-87, 87]: exp within 2.7 ulp, silu within 3.9). Large |g| saturate as
// silu does: g for g >> 0, -0 for g << 0; NaN stays NaN.
LLAMA_MOE_AVX512 inline __m512 Silu(__m512 g) {
  const __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), g), _mm512_set1_ps(-100.0f)),
                                 _mm512_set1_ps(100.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2, high and low parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(p, n)));
}

// Packs rows x_rows[0..n) of length len into the float32 panel of np tokens.
LLAMA_MOE_AVX512 void PackTokensF32(const float* const* x_rows, int64_t n, int64_t np, int64_t len, float* panel) {
  constexpr int64_t kBlock = PanelShape<float>::kBlock;
  at::parallel_for(0, (len + 15) / 16, 1, [&](int64_t c0, int64_t c1) LLAMA_MOE_AVX512 {
    for (int64_t t0 = 0; t0 < np; t0 += kBlock) {
      const int64_t bw = BlockWidth(t0, np, kBlock);
      for (int64_t tg = 0; tg < bw; tg += 16) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t k = c * 16;
          __m512 r[16];
          for (int i = 0; i < 16; ++i) r[i] = LoadRow(t0 + tg + i < n ? x_rows[t0 + tg + i] : nullptr, k, len);
          Transpose16(r);
          for (int64_t j = 0; j < std::min<int64_t>(16, len - k); ++j) {
            _mm512_storeu_ps(panel + t0 * len + (k + j) * bw + tg, r[j]);
          }
        }
      }
    }
  });
}

// 16 pairs (32 elements) of row p from element k as bfloat16, zeros beyond len and for a pad
// token (p null): float32 rows rounded to nearest even (VCVTNE2PS2BF16, which also flushes
// float32 subnormals to zero, as oneDNN's conversions do), bfloat16 rows as they are.
LLAMA_MOE_AVX512BF16 inline __m512 LoadPairs(const float* p, int64_t k, int64_t len) {
  return (__m512)_mm512_cvtne2ps_pbh(LoadRow(p, k + 16, len), LoadRow(p, k, len));
}
LLAMA_MOE_AVX512BF16 inline __m512 LoadPairs(const uint16_t* p, int64_t k, int64_t len) {
  if (p == nullptr || k >= len) return _mm512_setzero_ps();
  return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(Mask32(len - k), p + k));
}

// Packs rows x_rows[0..n) of length len (float32 or bfloat16) into the bfloat16 pair panel of
// np tokens.
template <typename X>
LLAMA_MOE_AVX512BF16 void PackTokensBf16(const X* const* x_rows, int64_t n, int64_t np, int64_t len,
                                         uint16_t* panel) {
  constexpr int64_t kBlock = PanelShape<uint16_t>::kBlock;
  const int64_t kp = RoundUp(len, 2);
  at::parallel_for(0, (len + 31) / 32, 1, [&](int64_t c0, int64_t c1) LLAMA_MOE_AVX512BF16 {
    for (int64_t t0 = 0; t0 < np; t0 += kBlock) {
      const int64_t bw = BlockWidth(t0, np, kBlock);
      for (int64_t tg = 0; tg < bw; tg += 16) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t k = c * 32;
          __m512 r[16];
          for (int i = 0; i < 16; ++i) r[i] = LoadPairs(t0 + tg + i < n ? x_rows[t0 + tg + i] : nullptr, k, len);
          Transpose16(r);  // 16 tokens' runs of 16 pairs -> 16 pair rows of 16 tokens
          for (int64_t j = 0; j < std::min<int64_t>(16, (kp - k) / 2); ++j) {
            _mm512_storeu_ps(panel + t0 * kp + (k / 2 + j) * bw * 2 + tg * 2, r[j]);
          }
        }
      }
    }
  });
}

// The weighted activation a = w * silu(g) * u of the tile-layout g and u, over row range
// [r0, r1) of token group (t0 + tg, 16 tokens); pads get weight 0.
LLAMA_MOE_AVX512 inline __m512 Activation(const float* g, const float* u, __m512 wv) {
  return _mm512_mul_ps(_mm512_mul_ps(wv, Silu(_mm512_loadu_ps(g))), _mm512_loadu_ps(u));
}

// float32: in place in g, which is then the down projection's panel.
LLAMA_MOE_AVX512 void ActivateF32(float* g, const float* u, const float* w, int64_t n, int64_t np, int64_t Ie) {
  constexpr int64_t kBlock = PanelShape<float>::kBlock;
  at::parallel_for(0, Ie, Grain(np), [&](int64_t r0, int64_t r1) LLAMA_MOE_AVX512 {
    for (int64_t t0 = 0; t0 < np; t0 += kBlock) {
      const int64_t bw = BlockWidth(t0, np, kBlock);
      for (int64_t tg = 0; tg < bw; tg += 16) {
        const __m512 wv = _mm512_maskz_loadu_ps(Mask16(n - t0 - tg), w + t0 + tg);
        for (int64_t r = r0; r < r1; ++r) {
          float* at = g + t0 * Ie + r * bw + tg;
          _mm512_storeu_ps(at, Activation(at, u + (at - g), wv));
        }
      }
    }
  });
}

// bfloat16: rounded into the pair panel ap (an odd last row pairs with zero).
LLAMA_MOE_AVX512BF16 void ActivateBf16(const float* g, const float* u, const float* w, int64_t n, int64_t np,
                                       int64_t Ie, uint16_t* ap) {
  constexpr int64_t kBlock = PanelShape<uint16_t>::kBlock;
  const int64_t kp = RoundUp(Ie, 2);
  // Interleaves [a0 x16, a1 x16] into pairs (a0[t], a1[t]).
  alignas(64) static constexpr uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                           8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  at::parallel_for(0, kp / 2, Grain(2 * np), [&](int64_t p0, int64_t p1) LLAMA_MOE_AVX512BF16 {
    for (int64_t t0 = 0; t0 < np; t0 += kBlock) {
      const int64_t bw = BlockWidth(t0, np, kBlock);
      for (int64_t tg = 0; tg < bw; tg += 16) {
        const __m512 wv = _mm512_maskz_loadu_ps(Mask16(n - t0 - tg), w + t0 + tg);
        for (int64_t pr = p0; pr < p1; ++pr) {
          const int64_t i0 = t0 * Ie + 2 * pr * bw + tg;
          const __m512 a0 = Activation(g + i0, u + i0, wv);
          const __m512 a1 = 2 * pr + 1 < Ie ? Activation(g + i0 + bw, u + i0 + bw, wv) : _mm512_setzero_ps();
          const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(a1, a0);
          _mm512_storeu_si512(ap + t0 * kp + pr * bw * 2 + tg * 2, _mm512_permutexvar_epi16(interleave, both));
        }
      }
    }
  });
}

// y_rows[t][h] += yT (tile layout [H][bw] per block of `block` tokens) for the n real tokens.
LLAMA_MOE_AVX512 void AccumulateTransposed(const float* yT, int64_t n, int64_t np, int64_t H, int64_t block,
                                          float* const* y_rows) {
  at::parallel_for(0, (H + 15) / 16, 1, [&](int64_t c0, int64_t c1) LLAMA_MOE_AVX512 {
    for (int64_t t0 = 0; t0 < np; t0 += block) {
      const int64_t bw = BlockWidth(t0, np, block);
      for (int64_t tg = 0; tg < bw && t0 + tg < n; tg += 16) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t h = c * 16;
          __m512 r[16];
          for (int i = 0; i < 16; ++i) {
            r[i] = h + i < H ? _mm512_loadu_ps(yT + t0 * H + (h + i) * bw + tg) : _mm512_setzero_ps();
          }
          Transpose16(r);  // -> token tg + j's outputs h..h+15
          const __mmask16 mask = Mask16(H - h);
          for (int64_t j = 0; j < std::min<int64_t>(16, n - t0 - tg); ++j) {
            float* y = y_rows[t0 + tg + j] + h;
            _mm512_mask_storeu_ps(y, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y), r[j]));
          }
        }
      }
    }
  });
}

// c = w [M][len] times the panel, in the tile output layout ([M][bw] per block, block at
// t0*M). Tokens are taken in spans whose panel fits in half of a 1 MiB L2 cache, and within a
// span every row block of w runs over all its token blocks, so the weight rows of a tile are
// reused from L1/L2 and the span's panel from L2, instead of re-reading a large segment's whole
// panel (8 MB for 2048 float32 tokens at H 1024) from L3 for every row block (2-3% faster at
// that size here; the panels of an 8B model's H 4096 are 4x larger). Row
// blocks are split over ATen's threads; each output element is one tile's, summed in a fixed
// order.
template <typename W>
void PanelProduct(const W* w, int64_t M, int64_t len, const W* panel, int64_t np, const PanelTable<W>& tiles,
                  float* c) {
  constexpr int64_t kRows = PanelShape<W>::kRows, kBlock = PanelShape<W>::kBlock;
  const int64_t kp = RoundUp(len, kPair<W>);
  const int64_t row_blocks = (M + kRows - 1) / kRows;
  constexpr int64_t kSpanBytes = 512 << 10;
  const int64_t span = std::max<int64_t>(kBlock, kSpanBytes / (kp * sizeof(W)) / kBlock * kBlock);
  for (int64_t s0 = 0; s0 < np; s0 += span) {
    const int64_t s1 = std::min(np, s0 + span);
    at::parallel_for(0, row_blocks, Grain(kRows * len * (s1 - s0) / 16), [&](int64_t b0, int64_t b1) {
      for (int64_t rb = b0; rb < b1; ++rb) {
        const int64_t r0 = rb * kRows, rows = std::min<int64_t>(kRows, M - r0);
        for (int64_t t0 = s0; t0 < s1; t0 += kBlock) {
          const int64_t bw = BlockWidth(t0, np, kBlock);
          tiles[bw / 16 - 1][rows - 1](w + r0 * len, len, panel + t0 * kp, len, c + t0 * M + r0 * bw, bw);
        }
      }
    });
  }
}

// n tokens through one expert in the panel form: pack the tokens, gate and up products, the
// weighted activation packed as the down projection's panel (in place for float32), the down
// product, and its transposed accumulation into the token rows. Scratch (PanelScratchFloats):
// g, u [np*Ie], yT [np*H] float32, then the token and activation panels.
template <typename W, typename X>
void SwiGluPanel(const W* gate, const W* up, const W* down, int64_t H, int64_t Ie, int64_t n,
                 const X* const* x_rows, const float* w, float* scratch, float* const* y_rows,
                 const PanelTable<W>& tiles) {
  constexpr bool kF32 = std::is_same<W, float>::value;
  const int64_t np = RoundUp(n, 16);
  float* g = scratch;
  float* u = g + np * Ie;
  float* yT = u + np * Ie;
  W* xp = reinterpret_cast<W*>(yT + np * H);
  W* ap = xp + np * RoundUp(H, kPair<W>);
  if constexpr (kF32) {
    PackTokensF32(x_rows, n, np, H, xp);
  } else {
    PackTokensBf16(x_rows, n, np, H, xp);
  }
  PanelProduct(gate, Ie, H, xp, np, tiles, g);
  PanelProduct(up, Ie, H, xp, np, tiles, u);
  if constexpr (kF32) {
    ActivateF32(g, u, w, n, np, Ie);  // the tile layout is the float32 panel layout
    ap = g;
  } else {
    ActivateBf16(g, u, w, n, np, Ie, ap);
  }
  PanelProduct(down, H, Ie, ap, np, tiles, yT);
  AccumulateTransposed(yT, n, np, H, PanelShape<W>::kBlock, y_rows);
}

int64_t PanelScratchFloats(int64_t H, int64_t Ie, int64_t n) {
  const int64_t np = RoundUp(n, 16);
  // g, u, yT, then the float32 token panel or the bfloat16 token and activation panels.
  return np * (2 * Ie + H) + std::max(np * H, (np * (RoundUp(H, 2) + RoundUp(Ie, 2)) + 1) / 2);
}
#endif  // LLAMA_MOE_HAVE_X86_KERNELS

// bfloat16 weights, tokens as float32 or bfloat16 rows. The dot-product forms without
// AVX512-BF16 multiply float32 tokens: bfloat16 rows are widened into the scratch's tail.
template <typename X>
void SwiGluBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie, int64_t n,
                const X* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa) {
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (isa == KernelIsa::kAvx512Bf16 && CpuSupports(isa)) {
    if (n >= kPanelMinTokens) {
      SwiGluPanel(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, kBf16Panel);
    } else {
      SwiGluTokensDpBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
    }
    return;
  }
#endif
  if constexpr (std::is_same<X, uint16_t>::value) {
    float* xf = scratch + DotScratchFloats(H, Ie, n);
    std::vector<const float*> rows(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < H; ++i) xf[t * H + i] = ToFloat(x_rows[t][i]);
      rows[t] = xf + t * H;
    }
    SwiGluTokens(gate, up, down, H, Ie, n, rows.data(), w, scratch, y_rows, isa);
  } else {
    SwiGluTokens(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, isa);
  }
}

}  // namespace

bool CpuSupports(KernelIsa isa) {
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  switch (isa) {
    case KernelIsa::kPortable:
      return true;
    case KernelIsa::kAvx2Fma:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KernelIsa::kAvx512:
      return CpuSupports(KernelIsa::kAvx2Fma) && __builtin_cpu_supports("avx512f");
    case KernelIsa::kAvx512Bf16:
      return CpuSupports(KernelIsa::kAvx512) && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512bf16");
  }
  return false;
#else
  return isa == KernelIsa::kPortable;
#endif
}

bool HasPanelForm(KernelIsa isa, bool bfloat16_weights) {
  if (!CpuSupports(isa)) return false;
  return isa == KernelIsa::kAvx512Bf16 || (isa == KernelIsa::kAvx512 && !bfloat16_weights);
}

int64_t SwiGluScratchFloats(int64_t H, int64_t Ie, int64_t n) {
  // The dot-product forms' scratch and room to widen n bfloat16 token rows to float32; the
  // panel form's own layout from kPanelMinTokens tokens.
  const int64_t dot = DotScratchFloats(H, Ie, n) + n * H;
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (n >= kPanelMinTokens) return std::max(dot, PanelScratchFloats(H, Ie, n));
#endif
  return dot;
}

KernelIsa BestKernelIsa() {
  static const KernelIsa best = [] {
    for (KernelIsa isa : {KernelIsa::kAvx512Bf16, KernelIsa::kAvx512, KernelIsa::kAvx2Fma}) {
      if (CpuSupports(isa)) return isa;
    }
    return KernelIsa::kPortable;
  }();
  return best;
}

void SwiGluAccumulate(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie, int64_t n,
                      const float* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa) {
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (n >= kPanelMinTokens && HasPanelForm(isa, /*bfloat16_weights=*/false)) {
    SwiGluPanel(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, kF32Panel);
    return;
  }
#endif
  SwiGluTokens(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, isa);
}

void SwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                      int64_t n, const float* const* x_rows, const float* w, float* scratch, float* const* y_rows,
                      KernelIsa isa) {
  SwiGluBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, isa);
}

void SwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                      int64_t n, const uint16_t* const* x_rows, const float* w, float* scratch, float* const* y_rows,
                      KernelIsa isa) {
  SwiGluBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows, isa);
}

}  // namespace llama_moe
