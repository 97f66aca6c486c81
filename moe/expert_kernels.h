// Hand-written CPU kernel for tokens through one expert (a decode step's work, or an expert's
// segment of a batch), used by the dispatch's inference path.
//
// Why not ATen: at one token an expert is three matrix-vector products over weights that are
// read once, so the step is bound by memory bandwidth, and the dozen ATen calls per expert
// (slices, three GEMV/GEMMs, silu, two multiplies, views, the sum over experts) cost as much as
// the reads for experts of a few MB. At a few tokens per expert, GEMM libraries copy (pack)
// each weight matrix before multiplying, which for a weight used by a handful of rows costs
// more than the multiply. This kernel reads each weight row once, sums in float32, keeps the
// output in float32 (a bfloat16 model rounds once, at the end of the layer, as the dense FFN's
// GEMM does) and makes no allocation.
//
// One file per form (portable, AVX2, AVX-512, AVX512-BF16), chosen per call at run time
// (moe/expert_kernel_forms.h); moe/expert_kernels_test.cc checks every form this CPU runs
// against a float64 reference and against the portable form.
//
// Example:
//   const int64_t H = 16, Ie = 8, n = 2;
//   std::vector<float> gate(Ie * H, 0.1f), up(Ie * H, 0.2f), down(H * Ie, 0.3f), x(n * H, 1.0f), y(n * H, 0.0f);
//   std::vector<float> scratch(SwiGluScratchFloats(H, Ie, n));
//   const float* x_rows[2] = {x.data(), x.data() + H};
//   float* y_rows[2] = {y.data(), y.data() + H};
//   const float w[2] = {0.5f, 1.0f};
//   SwiGluAccumulate(gate.data(), up.data(), down.data(), H, Ie, n, x_rows, w, scratch.data(), y_rows,
//                    BestKernelIsa());
#ifndef LLAMA_MOE_MOE_EXPERT_KERNELS_H_
#define LLAMA_MOE_MOE_EXPERT_KERNELS_H_

#include <cstdint>

namespace llama_moe {

enum class KernelIsa {
  kPortable,  // plain C++ loops: any CPU
  kAvx2Fma,   // x86-64 with AVX2 and FMA (chosen at run time; the build needs no -m flags)
  kAvx512,    // and AVX-512F: float32 weights run segments of kPanelMinTokens and more in the
              // panel form (bfloat16 weights use the AVX2 form)
  kAvx512Bf16,  // and AVX512-BF16: bfloat16 weights multiply bfloat16-rounded tokens and
                // activations with VDPBF16PS, in the panel form from kPanelMinTokens tokens
                // (float32 weights as kAvx512)
};

// From this many tokens the AVX-512 forms run the panel form: a GEMM micro-kernel that packs the
// tokens instead of the weights and runs at the FMA units' rate (faster than OpenBLAS's and
// oneDNN's GEMMs on expert shapes at every token count measured, see expert_kernels.cc). Below
// it a 16-token vector would be mostly padding, and the dot-product tiles serve.
constexpr int64_t kPanelMinTokens = 16;

// Whether `isa` has the panel form for float32 (bfloat16_weights false) or bfloat16 weights
// and this CPU runs it.
bool HasPanelForm(KernelIsa isa, bool bfloat16_weights);

// The fastest form this CPU runs.
KernelIsa BestKernelIsa();
// Whether this CPU can run `isa`.
bool CpuSupports(KernelIsa isa);

// For n tokens through one expert, each token t's row accumulated:
//   y_t[H] += w[t] * down · (silu(gate · x_t) ⊙ (up · x_t))
// with row-major contiguous weights gate, up [Ie,H] and down [H,Ie] in float32 (`float`) or
// bfloat16 (`uint16_t`, the raw bits). x_t (at x_rows[t]) and y_t (at y_rows[t], distinct rows)
// are float32 [H], as is all arithmetic except in the kAvx512Bf16 form, which rounds the tokens
// and the activations to bfloat16 as a bfloat16 GEMM does; scratch holds
// SwiGluScratchFloats(H, Ie, n) floats. Below kPanelMinTokens (or without AVX-512) each weight
// row is read once for all n tokens (up to 4 tokens share a register tile), which suits decode
// steps, where a GEMM library spends more time packing the weights than multiplying; from
// kPanelMinTokens the panel form packs the tokens and runs at GEMM speed. Work is split over
// ATen's intra-op threads by weight rows and each output element is computed by one thread in
// a fixed order: the result does not depend on the thread count.
int64_t SwiGluScratchFloats(int64_t H, int64_t Ie, int64_t n);
void SwiGluAccumulate(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie, int64_t n,
                      const float* const* x_rows, const float* w, float* scratch, float* const* y_rows, KernelIsa isa);
void SwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                      int64_t n, const float* const* x_rows, const float* w, float* scratch, float* const* y_rows,
                      KernelIsa isa);
// The same with bfloat16 tokens (raw bits): a bfloat16 model's hidden states as they are, without
// a float32 copy. Equal to the float32-token form on the same (bfloat16-exact) values.
void SwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H, int64_t Ie,
                      int64_t n, const uint16_t* const* x_rows, const float* w, float* scratch, float* const* y_rows,
                      KernelIsa isa);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_KERNELS_H_
