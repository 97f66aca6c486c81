// Internal to the expert kernel (moe/expert_kernels.h): what its forms share, and each form's
// entry points. One file per form: expert_kernels_portable.cc (plain C++),
// expert_kernels_avx2.cc (AVX2+FMA dot tiles), expert_kernels_avx512.cc (the float32 panel form),
// expert_kernels_avx512_bf16.cc (VDPBF16PS dot tiles and the bfloat16 panel form);
// expert_kernels.cc picks one per call. The x86 forms compile with `target` attributes, so the
// build needs no -m flags, and are called only after CpuSupports checked the CPU.
//
// The dot-product forms share one driver (SwiGluPhases) over a table of tile functions; the
// panel forms share theirs in expert_kernels_x86.h.
//
// Example:
//   const float w[2] = {1, 2}, x[2] = {3, 4};
//   const float* rows[1] = {w};
//   const float* tokens[1] = {x};
//   float out[1];
//   kernel_internal::PortableTilesF32().single[1](rows, tokens, 2, out);  // out[0] = 11
#ifndef LLAMA_MOE_MOE_EXPERT_KERNEL_FORMS_H_
#define LLAMA_MOE_MOE_EXPERT_KERNEL_FORMS_H_

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "model/bfloat16.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLAMA_MOE_HAVE_X86_KERNELS 1
#endif

namespace llama_moe {
namespace kernel_internal {

inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Rows per parallel chunk: at least ~32K weights, so that a chunk's reads dwarf the cost of
// handing it to a thread.
inline int64_t Grain(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length)); }

// ---- The dot-product forms (any token count; the dispatch sends them fewer than 16 tokens) ----

// Dot products of R weight rows with NT token vectors, out[r*NT + t] = rows[r] . v[t]. Each
// loaded piece of a weight row is used for all NT tokens. U independent accumulators per
// (row, token) pair keep the FMA pipeline busy when the tile is small (a decode step's single
// token): with R*NT*U >= 8 chains, FMA latency is hidden.
template <int R, int NT>
constexpr int Unroll() {
  return R * NT >= 8 ? 1 : 8 / (R * NT);
}

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
inline int64_t DotScratchFloats(int64_t H, int64_t Ie, int64_t n) { return 2 * n * Ie + (n * (H + Ie) + 1) / 2; }

// The panel forms' scratch (expert_kernels_x86.h): g, u, yT, then the float32 token panel or
// the bfloat16 token and activation panels.
inline int64_t PanelScratchFloats(int64_t H, int64_t Ie, int64_t n) {
  const int64_t np = RoundUp(n, 16);
  return np * (2 * Ie + H) + std::max(np * H, (np * (RoundUp(H, 2) + RoundUp(Ie, 2)) + 1) / 2);
}

// ---- Each form's entry points ----

// expert_kernels_portable.cc: plain C++ dot tiles.
const Tiles<float, float>& PortableTilesF32();
const Tiles<uint16_t, float>& PortableTilesBf16();

#ifdef LLAMA_MOE_HAVE_X86_KERNELS
// expert_kernels_avx2.cc: AVX2+FMA dot tiles (bfloat16 weights widened to float32 in registers).
const Tiles<float, float>& Avx2TilesF32();
const Tiles<uint16_t, float>& Avx2TilesBf16();

// expert_kernels_avx512.cc: the float32 panel form, for n >= kPanelMinTokens. Scratch: PanelScratchFloats.
void SwiGluPanelF32(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie, int64_t n,
                    const float* const* x_rows, const float* w, float* scratch, float* const* y_rows);

// expert_kernels_avx512_bf16.cc: bfloat16 weights with VDPBF16PS; tokens and activations are
// rounded to bfloat16. Dot tiles (scratch: DotScratchFloats) and, for n >= kPanelMinTokens, the
// panel form (scratch: PanelScratchFloats); float32 or bfloat16 token rows.
void SwiGluDotBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie, int64_t n,
                   const float* const* x_rows, const float* w, float* scratch, float* const* y_rows);
void SwiGluDotBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie, int64_t n,
                   const uint16_t* const* x_rows, const float* w, float* scratch, float* const* y_rows);
void SwiGluPanelBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                     int64_t n, const float* const* x_rows, const float* w, float* scratch, float* const* y_rows);
void SwiGluPanelBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                     int64_t n, const uint16_t* const* x_rows, const float* w, float* scratch, float* const* y_rows);
#endif

}  // namespace kernel_internal
}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_KERNEL_FORMS_H_
