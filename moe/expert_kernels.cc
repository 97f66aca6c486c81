// The expert kernel's entry points: which form runs a call (expert_kernel_forms.h lists them).
#include "moe/expert_kernels.h"

#include <type_traits>
#include <vector>

#include "moe/expert_kernel_forms.h"

namespace llama_moe {
namespace {

using namespace kernel_internal;  // NOLINT: the forms' shared pieces

// The dot tiles for float32 token vectors: AVX2+FMA wherever the CPU has it (AVX-512 CPUs too).
template <typename W>
const Tiles<W, float>& FloatTiles(KernelIsa isa) {
  constexpr bool kF32 = std::is_same<W, float>::value;
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (isa != KernelIsa::kPortable && CpuSupports(isa)) {
    if constexpr (kF32) return Avx2TilesF32();
    else return Avx2TilesBf16();
  }
#endif
  if constexpr (kF32) return PortableTilesF32();
  else return PortableTilesBf16();
}

// The dot-product forms with float32 tokens. Scratch layout: g [n][Ie], u [n][Ie] float32.
template <typename W>
void SwiGluTokens(const W* gate, const W* up, const W* down, int64_t H, int64_t Ie, int64_t n,
                  const float* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa) {
  float* g = scratch;
  float* u = scratch + n * Ie;
  SwiGluPhases<W, float>(gate, up, down, H, Ie, n, x_rows, FloatTiles<W>(isa), w, g, u, /*a=*/g, y_rows);
}

// bfloat16 weights, tokens as float32 or bfloat16 rows. The dot-product forms without
// AVX512-BF16 multiply float32 tokens: bfloat16 rows are widened into the scratch's tail.
template <typename X>
void SwiGluBf16(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie, int64_t n,
                const X* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa) {
#ifdef LLAMA_MOE_HAVE_X86_KERNELS
  if (isa == KernelIsa::kAvx512Bf16 && CpuSupports(isa)) {
    if (n >= kPanelMinTokens) {
      SwiGluPanelBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
    } else {
      SwiGluDotBf16(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
    }
    return;
  }
#endif
  if constexpr (std::is_same<X, uint16_t>::value) {
    float* xf = scratch + DotScratchFloats(H, Ie, n);
    std::vector<const float*> rows(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < H; ++i) xf[t * H + i] = AsFloat(x_rows[t][i]);
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
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
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
    SwiGluPanelF32(gate, up, down, H, Ie, n, x_rows, w, scratch, y_rows);
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
