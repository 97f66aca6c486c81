// Hand-written CPU kernel for one token through one expert (a decode step's work), used by the
// dispatch's one-token inference path.
//
// Why not ATen: at one token an expert is three matrix-vector products over weights that are
// read once, so the step is bound by memory bandwidth, and the dozen ATen calls per expert
// (slices, three GEMV/GEMMs, silu, two multiplies, views, the sum over experts) cost as much as
// the reads for experts of a few MB. This kernel reads each weight row once, keeps the
// intermediate activations and the output in float32 (a bfloat16 model rounds once, at the end
// of the layer, as the dense FFN's GEMM does) and makes no allocation.
//
// The reference is the batched path (moe/dispatch.cc) and ReferenceMoeForward; the portable and
// AVX2 forms of the kernel are tested against each other and against ATen
// (moe/expert_kernels_test.cc).
#ifndef LLAMA_MOE_MOE_EXPERT_KERNELS_H_
#define LLAMA_MOE_MOE_EXPERT_KERNELS_H_

#include <cstdint>

namespace llama_moe {

enum class KernelIsa {
  kPortable,  // plain C++ loops: any CPU
  kAvx2Fma,   // x86-64 with AVX2 and FMA (chosen at run time; the build needs no -m flags)
};

// The fastest form this CPU runs.
KernelIsa BestKernelIsa();
// Whether this CPU can run `isa`.
bool CpuSupports(KernelIsa isa);

// y[H] += w * down · (silu(gate · x) ⊙ (up · x)) for one token x [H] and one expert with
// row-major contiguous weights gate, up [Ie,H] and down [H,Ie]: float32 (`float`) or bfloat16
// (`uint16_t`, the raw bits). x, y and all arithmetic are float32; scratch holds 2*Ie floats.
// Rows are split over ATen's intra-op threads, each row's dot product computed by one thread
// in a fixed order, so the result does not depend on the thread count.
void OneTokenSwiGluAccumulate(const float* gate, const float* up, const float* down, int64_t H, int64_t Ie,
                              const float* x, float w, float* scratch, float* y, KernelIsa isa);
void OneTokenSwiGluAccumulate(const uint16_t* gate, const uint16_t* up, const uint16_t* down, int64_t H,
                              int64_t Ie, const float* x, float w, float* scratch, float* y, KernelIsa isa);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_KERNELS_H_
