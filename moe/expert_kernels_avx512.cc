// The AVX-512 form of the expert kernel: the float32 panel form (6 weight rows x 64 tokens per
// register tile) for segments of kPanelMinTokens tokens and more.
#include "moe/expert_kernel_forms.h"

#ifdef LLAMA_MOE_HAVE_X86_KERNELS
#include "moe/expert_kernels_x86.h"

namespace llama_moe {
namespace kernel_internal {
namespace {

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

template <int NV, size_t... I>
constexpr std::array<PanelFn<float>, sizeof...(I)> F32Tiles(std::index_sequence<I...>) {
  return {{&PanelTileF32<int(I) + 1, NV>...}};
}
constexpr auto kF32Rows = std::make_index_sequence<PanelShape<float>::kRows>();

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

// The weighted activation over the tile-layout g and u, in place in g, which is then the down
// projection's panel (the float32 tile layout is the panel layout); pads get weight 0.
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

struct F32Form {
  static constexpr PanelTable<float> kTiles = {
      {F32Tiles<1>(kF32Rows), F32Tiles<2>(kF32Rows), F32Tiles<3>(kF32Rows), F32Tiles<4>(kF32Rows)}};
  // Every block at full width: float32 prefill already runs well ahead of the dense GEMM.
  static const PanelTable<float>* HalfTail() { return nullptr; }
  static void PackTokens(const float* const* x_rows, int64_t n, int64_t np, int64_t len, float* panel) {
    PackTokensF32(x_rows, n, np, len, panel);
  }
  static const float* Activate(float* g, const float* u, const float* w, int64_t n, int64_t np, int64_t Ie,
                               float* /*unused: the panel is g*/) {
    ActivateF32(g, u, w, n, np, Ie);
    return g;
  }
};

}  // namespace

void SwiGluPanelF32(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie, int64_t n,
                    const float* const* x_rows, const float* w, float* scratch, float* const* y_rows) {
  SwiGluPanel<F32Form>(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
}

}  // namespace kernel_internal
}  // namespace llama_moe
#endif  // LLAMA_MOE_HAVE_X86_KERNELS
