// The ATen GEMM backend of the dispatch: one expert's weighted SwiGLU on a segment of gathered
// rows, written into preallocated buffers. It serves training (forward and backward) and the
// inference segments the hand-written kernel does not take (moe/dispatch_plan.h).
//
// Example:
//   ExpertWeights e{at::randn({8, 16}), at::randn({8, 16}), at::randn({16, 8})};
//   at::Tensor xs = at::randn({3, 16}), w = at::rand({3});
//   at::Tensor g = at::empty({3, 8}), u = at::empty({3, 8}), y = at::empty({3, 16});
//   ExpertSwiGluInto(e, xs, w, SegmentPath::kGemmRowMajor, /*keep=*/false, g, u, y);  // y = w * SwiGLU(xs)
#ifndef LLAMA_MOE_MOE_EXPERT_GEMM_H_
#define LLAMA_MOE_MOE_EXPERT_GEMM_H_

#include <ATen/core/Tensor.h>

#include "moe/dispatch_plan.h"
#include "moe/expert_bank.h"

namespace llama_moe {

// out = a b, written into out (which may be a slice of a larger buffer); upcast per UpcastGemm.
void MmOut(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// a b as float32 (for products used only in float32 arithmetic).
at::Tensor MmFloat(const at::Tensor& a, const at::Tensor& b);

// One expert's weighted SwiGLU on rows xs [n,H] with routing weights w [n] (float32).
// kGemmFeatureMajor (float32 inference only): g, u [Ie,n] and y [H,n]; kGemmRowMajor: g, u
// [n,Ie] and y [n,H]. With keep the pre-activations g and u survive (saved for backward);
// otherwise g becomes the activation in place.
void ExpertSwiGluInto(const ExpertWeights& m, const at::Tensor& xs, const at::Tensor& w, SegmentPath path, bool keep,
                      at::Tensor& g, at::Tensor& u, at::Tensor& y);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_GEMM_H_
