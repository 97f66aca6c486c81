#include "moe/expert_gemm.h"

#include <ATen/ATen.h>

namespace llama_moe {
namespace {

// out [n,N] = a [n,K] w[N,K]^T. A single float32 row goes to BLAS gemv: OpenBLAS's sgemm with
// one row streams the weights at 2-2.5 GB/s here, its sgemv at 6.6-8.2 GB/s. bfloat16 has no
// BLAS gemv and its one-row GEMM is already at read bandwidth.
void LinearOut(at::Tensor& out, const at::Tensor& a, const at::Tensor& w) {
  if (a.size(0) == 1 && a.scalar_type() == at::kFloat) {
    at::Tensor row = out.select(0, 0);
    at::mv_out(row, w, a.select(0, 0));
  } else {
    MmOut(out, a, w.t());
  }
}

// out [N,n] = w [N,K] b [K,n], b usually a transposed [n,K] activation (the feature-major rule
// in moe/dispatch_plan.cc says when). One float32 column is a gemv.
void WeightTimesOut(at::Tensor& out, const at::Tensor& w, const at::Tensor& b) {
  if (b.size(1) == 1 && b.scalar_type() == at::kFloat) {
    at::Tensor col = out.select(1, 0);
    at::mv_out(col, w, b.select(1, 0));
  } else {
    at::mm_out(out, w, b);
  }
}

}  // namespace

void MmOut(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (UpcastGemm(a, b)) {
    out.copy_(at::mm(a.to(at::kFloat), b.to(at::kFloat)));
  } else {
    at::mm_out(out, a, b);
  }
}

at::Tensor MmFloat(const at::Tensor& a, const at::Tensor& b) {
  if (UpcastGemm(a, b)) return at::mm(a.to(at::kFloat), b.to(at::kFloat));
  return at::mm(a, b).to(at::kFloat);
}

void ExpertSwiGluInto(const ExpertWeights& m, const at::Tensor& xs, const at::Tensor& w, SegmentPath path, bool keep,
                      at::Tensor& g, at::Tensor& u, at::Tensor& y) {
  if (path == SegmentPath::kGemmFeatureMajor) {
    WeightTimesOut(g, m.gate, xs.t());
    WeightTimesOut(u, m.up, xs.t());
    at::silu_(g).mul_(u).mul_(w.unsqueeze(0));
    WeightTimesOut(y, m.down, g);
    return;
  }
  LinearOut(g, xs, m.gate);
  LinearOut(u, xs, m.up);
  if (g.scalar_type() == at::kFloat) {
    at::Tensor act = keep ? at::silu(g) : at::silu_(g);
    act.mul_(u).mul_(w.unsqueeze(1));
    LinearOut(y, act, m.down);
    return;
  }
  // bfloat16/float16: the weighted activation in float32, rounded once (instead of after silu,
  // the product and the weighting), which is also 2x faster here than ATen's bfloat16 silu.
  const at::Tensor a32 = at::silu(g.to(at::kFloat)).mul_(u.to(at::kFloat)).mul_(w.unsqueeze(1));
  const at::Tensor act = keep ? a32.to(g.scalar_type()) : g.copy_(a32);
  LinearOut(y, act, m.down);
}

}  // namespace llama_moe
