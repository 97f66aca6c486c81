// Internal to the expert kernel's x86 forms: the intrinsics, the `target` attributes each form
// compiles with, and the panel form's machinery shared by the float32 (AVX-512) and bfloat16
// (AVX512-BF16) forms. Included only where LLAMA_MOE_HAVE_X86_KERNELS is defined.
//
// The panel form is a GEMM micro-kernel for segments of kPanelMinTokens tokens and more. From a
// few dozen tokens the dot-product tiles lose to the GEMM libraries (each loaded token piece
// serves only two weight rows, and every (row, token) pair ends in a horizontal sum). The panel
// form is the GEMM libraries' own scheme with the roles that suit experts: the *tokens* are
// copied (packed) into k-major panels, [len][block width] per block of tokens, and the weights
// are read in place, each weight broadcast from memory and multiplied into up to four 16-token
// vectors. A tile (PanelShape) keeps 24 accumulators in registers, so it runs near the FMA
// units' rate (README: "MoE layer" gives the measured rates). Packing the tokens costs n*len
// copies against the tile's n*len*rows FMAs, where the libraries' weight packing costs a large
// share of the multiply for an expert used by a few dozen tokens.
//
// Panel layout: tokens padded to a multiple of 16 (zeros) and split into blocks of the tile's
// width (the last one narrower, a multiple of 16); block b (first token t0, width bw) starts at
// element t0*kp, where kp is len rounded up to the element pairs VDPBF16PS takes (1 for
// float32, 2 for bfloat16), and holds element k of token t0+t at (k/pair)*bw*pair + t*pair +
// k%pair. The tile output uses the same layout with pair 1 ([rows][bw] per block), so the
// float32 gate/up output is already the down projection's panel.
//
// Its uses are the two panel forms (expert_kernels_avx512.cc, expert_kernels_avx512_bf16.cc);
// outside a function compiled for AVX-512 none of it compiles, so it has no example of its own.
#ifndef LLAMA_MOE_MOE_EXPERT_KERNELS_X86_H_
#define LLAMA_MOE_MOE_EXPERT_KERNELS_X86_H_

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "model/x86_intrinsics.h"
#include "moe/expert_kernel_forms.h"

#define LLAMA_MOE_AVX2 __attribute__((target("avx2,fma")))
#define LLAMA_MOE_AVX512 __attribute__((target("avx2,fma,avx512f")))
#define LLAMA_MOE_AVX512BF16 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")))

namespace llama_moe {
namespace kernel_internal {

// Masks of the first `left` of 16 or 32 lanes (all when left is larger, none when it is not
// positive), for tails.
inline __mmask16 Mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << std::max<int64_t>(left, 0)) - 1);
}
inline __mmask32 Mask32(int64_t left) {
  return left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << std::max<int64_t>(left, 0)) - 1);
}

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

// The panel element: float, or bfloat16 bits taken in pairs.
template <typename P>
constexpr int64_t kPair = sizeof(P) == 2 ? 2 : 1;

// Tile functions by block width (16, 32, ... tokens) and row count (1..kRows).
template <typename W>
using PanelFn = void (*)(const W*, int64_t, const W*, int64_t, float*, int64_t);
template <typename W>
using PanelTable = std::array<std::array<PanelFn<W>, PanelShape<W>::kRows>, PanelShape<W>::kBlock / 16>;

// Width of the token block starting at t0 of np (a multiple of 16) padded tokens.
inline int64_t BlockWidth(int64_t t0, int64_t np, int64_t block) { return std::min(block, np - t0); }

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

// The weighted activation w * silu(g) * u of 16 tokens.
LLAMA_MOE_AVX512 inline __m512 Activation(const float* g, const float* u, __m512 wv) {
  return _mm512_mul_ps(_mm512_mul_ps(wv, Silu(_mm512_loadu_ps(g))), _mm512_loadu_ps(u));
}

// y_rows[t][h] += yT (tile layout [H][bw] per block of `block` tokens) for the n real tokens.
LLAMA_MOE_AVX512 inline void AccumulateTransposed(const float* yT, int64_t n, int64_t np, int64_t H, int64_t block,
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
// panel from L3 for every row block (2-3% faster at H 1024, 2048 tokens). Row blocks are split
// over ATen's threads; each output element is one tile's, summed in a fixed order.
//
// half_tail (null where the form has none) holds tiles whose last 16-token vector computes its
// first 8 tokens at half width and stores zeros for the other 8: the n real tokens' block whose
// last vector has 8 or fewer of them runs those, and pays half for its padding. Each token's
// lane sums the same products in the same order at either width, so the result is the padded
// tile's bit for bit.
template <typename W>
void PanelProduct(const W* w, int64_t M, int64_t len, const W* panel, int64_t n, int64_t np,
                  const PanelTable<W>& tiles, const PanelTable<W>* half_tail, float* c) {
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
          const PanelTable<W>& table = half_tail != nullptr && n - t0 <= bw - 8 ? *half_tail : tiles;
          table[bw / 16 - 1][rows - 1](w + r0 * len, len, panel + t0 * kp, len, c + t0 * M + r0 * bw, bw);
        }
      }
    });
  }
}

// n tokens through one expert in the panel form: pack the tokens, gate and up products, the
// weighted activation packed as the down projection's panel, the down product, and its
// transposed accumulation into the token rows. Scratch (PanelScratchFloats): g, u [np*Ie],
// yT [np*H] float32, then the token and activation panels. `Form` supplies the weight type's
// tiles (kTiles) and half-tail tiles (HalfTail(), null for none; see PanelProduct), token
// packing (PackTokens) and activation (Activate, which returns the panel the down projection
// reads: g itself in float32).
template <typename Form, typename W, typename X>
void SwiGluPanel(const W* gate, const W* up, const W* down, int64_t H, int64_t Ie, int64_t n,
                 const X* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  const int64_t np = RoundUp(n, 16);
  float* g = scratch;
  float* u = g + np * Ie;
  float* yT = u + np * Ie;
  W* xp = reinterpret_cast<W*>(yT + np * H);
  W* ap = xp + np * RoundUp(H, kPair<W>);
  Form::PackTokens(x_rows, n, np, H, xp);
  PanelProduct(gate, Ie, H, xp, n, np, Form::kTiles, Form::HalfTail(), g);
  PanelProduct(up, Ie, H, xp, n, np, Form::kTiles, Form::HalfTail(), u);
  const W* down_panel = Form::Activate(g, u, w, n, np, Ie, ap);
  PanelProduct(down, H, Ie, down_panel, n, np, Form::kTiles, Form::HalfTail(), yT);
  AccumulateTransposed(yT, n, np, H, PanelShape<W>::kBlock, y_rows);
}

}  // namespace kernel_internal
}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_KERNELS_X86_H_
