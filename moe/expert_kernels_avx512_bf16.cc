// The AVX512-BF16 form of the expert kernel: bfloat16 weights times bfloat16-rounded tokens and
// activations with VDPBF16PS (32 products per instruction, float32 accumulation), as oneDNN's
// bfloat16 GEMMs do: twice the products per instruction of widening the weights to float32, at
// the price of token vectors rounded to bfloat16 (the GEMM path rounds them too). Dot tiles
// below kPanelMinTokens tokens, the panel form (12 weight rows x 32 tokens) from there; a
// segment's last 16-token vector holding 8 tokens or fewer runs at half width (a 64-token
// expert segment pads 7.5 tokens on average, and 8 of them then cost half).
#include "moe/expert_kernel_forms.h"

#ifdef LLAMA_MOE_HAVE_X86_KERNELS
#include <cstring>
#include <type_traits>
#include <vector>

#include "moe/expert_kernels_x86.h"

namespace llama_moe {
namespace kernel_internal {
namespace {

// Dot tiles; tails use masked loads.
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

// The dot-product driver with bfloat16 tokens and activations: float32 token rows are rounded
// into the scratch's tail.
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

// Weights w[r][k] and w[r][k+1] as one 32-bit word for VPBROADCASTD; an odd last element pairs
// with zero (its panel partner is a zero pad).
template <bool kLastOdd>
inline int32_t WeightPair(const uint16_t* w, int64_t ldw, int r, int64_t k) {
  int32_t pair;
  if (kLastOdd) {
    pair = w[r * ldw + k];
  } else {
    std::memcpy(&pair, w + r * ldw + k, sizeof pair);
  }
  return pair;
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
    const __m512i b = _mm512_set1_epi32(WeightPair<kLastOdd>(w, ldw, r, k));
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

// PanelTileBf16 with the last 16-token vector at half width: its first 8 tokens with 256-bit
// VDPBF16PS (half the work of the 512-bit one), zeros stored for its other 8 (padding only).
// acc[r][0..NV-1) are the full vectors, tail[r] the half one.
template <int R, int NV, bool kLastOdd>
LLAMA_MOE_AVX512BF16 inline void HalfTailStepBf16(__m512 (&acc)[R][NV], __m256 (&tail)[R], const uint16_t* w,
                                                  int64_t ldw, const uint16_t* p, int64_t k) {
  __m512i pv[NV];
#pragma GCC unroll 4
  for (int v = 0; v + 1 < NV; ++v) pv[v] = _mm512_loadu_si512(p + (k * NV + 2 * v) * 16);
  const __m256i pt = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + (k * NV + 2 * (NV - 1)) * 16));
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512i b = _mm512_set1_epi32(WeightPair<kLastOdd>(w, ldw, r, k));
#pragma GCC unroll 4
    for (int v = 0; v + 1 < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)b, (__m512bh)pv[v]);
    tail[r] = _mm256_dpbf16_ps(tail[r], (__m256bh)_mm512_castsi512_si256(b), (__m256bh)pt);
  }
}

template <int R, int NV>
LLAMA_MOE_AVX512BF16 void PanelTileBf16HalfTail(const uint16_t* w, int64_t ldw, const uint16_t* p, int64_t len,
                                                float* c, int64_t ldc) {
  __m512 acc[R][NV];
  __m256 tail[R];
  ZeroTile(acc);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) tail[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 2 <= len; k += 2) HalfTailStepBf16<R, NV, false>(acc, tail, w, ldw, p, k);
  if (k < len) HalfTailStepBf16<R, NV, true>(acc, tail, w, ldw, p, k);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v + 1 < NV; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
    _mm256_storeu_ps(c + r * ldc + 16 * (NV - 1), tail[r]);
    _mm256_storeu_ps(c + r * ldc + 16 * (NV - 1) + 8, _mm256_setzero_ps());
  }
}

template <int NV, size_t... I>
constexpr std::array<PanelFn<uint16_t>, sizeof...(I)> Bf16Tiles(std::index_sequence<I...>) {
  return {{&PanelTileBf16<int(I) + 1, NV>...}};
}
template <int NV, size_t... I>
constexpr std::array<PanelFn<uint16_t>, sizeof...(I)> Bf16HalfTailTiles(std::index_sequence<I...>) {
  return {{&PanelTileBf16HalfTail<int(I) + 1, NV>...}};
}
constexpr auto kBf16Rows = std::make_index_sequence<PanelShape<uint16_t>::kRows>();

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

// The weighted activation of the tile-layout g and u, rounded into the pair panel ap (an odd
// last row pairs with zero); pads get weight 0.
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

struct Bf16Form {
  static constexpr PanelTable<uint16_t> kTiles = {{Bf16Tiles<1>(kBf16Rows), Bf16Tiles<2>(kBf16Rows)}};
  static constexpr PanelTable<uint16_t> kHalfTailTiles = {
      {Bf16HalfTailTiles<1>(kBf16Rows), Bf16HalfTailTiles<2>(kBf16Rows)}};
  static const PanelTable<uint16_t>* HalfTail() { return &kHalfTailTiles; }
  template <typename X>
  static void PackTokens(const X* const* x_rows, int64_t n, int64_t np, int64_t len, uint16_t* panel) {
    PackTokensBf16(x_rows, n, np, len, panel);
  }
  static const uint16_t* Activate(float* g, const float* u, const float* w, int64_t n, int64_t np, int64_t Ie,
                                  uint16_t* ap) {
    ActivateBf16(g, u, w, n, np, Ie, ap);
    return ap;
  }
};

}  // namespace

void SwiGluDotBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie, int64_t n,
                   const float* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  SwiGluTokensDpBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
}
void SwiGluDotBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie, int64_t n,
                   const uint16_t* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  SwiGluTokensDpBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
}
void SwiGluPanelBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                     int64_t n, const float* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  SwiGluPanel<Bf16Form>(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
}
void SwiGluPanelBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                     int64_t n, const uint16_t* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  SwiGluPanel<Bf16Form>(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
}

}  // namespace kernel_internal
}  // namespace llama_moe
#endif  // LLAMA_MOE_HAVE_X86_KERNELS
