// How the sparse dispatch (moe/dispatch.h) runs a forward: the execution choices, each a named
// rule with its measured reason, in one place. The dispatch asks the plan and never decides on
// its own; a new per-expert backend becomes one more SegmentPath and one more rule here, a new
// grouped GEMM one more GroupedGemm (moe/grouped_gemm.h) and its case in the grouped rule.
//
// Example:
//   const at::Tensor x = at::randn({1, 16});
//   const at::Tensor expert = at::tensor({3, 1}, at::kLong).reshape({1, 2});
//   DispatchPlan plan = PlanDispatch(DispatchMode::kInference, x, expert);
//   if (plan.one_token || plan.PathFor(1) == SegmentPath::kKernel) return absl::OkStatus();
#ifndef LLAMA_MOE_MOE_DISPATCH_PLAN_H_
#define LLAMA_MOE_MOE_DISPATCH_PLAN_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llama_moe {

enum class DispatchMode {
  kTraining,   // one autograd node: gate/up pre-activations of every pair are kept for backward
  kInference,  // no gradient: buffers reused across experts, nothing kept
};

// How one expert's segment of the expert-sorted (token, slot) pairs runs.
enum class SegmentPath {
  kKernel,            // the hand-written CPU kernel (moe/expert_kernels.h) on the tokens' rows
  kGemmFeatureMajor,  // ATen GEMMs writing [Ie,n] and [H,n] (moe/expert_gemm.h)
  kGemmRowMajor,      // ATen GEMMs writing [n,Ie] and [n,H]; what training runs
};

struct DispatchPlan {
  DispatchMode mode = DispatchMode::kInference;
  // Rule "grouped": the whole layer in grouped GEMMs with no host synchronisation
  // (moe/grouped_dispatch.h), on a device whose LibTorch runs bfloat16 grouped GEMMs in one
  // kernel (LLAMA_MOE_HAS_GROUPED_MM, CUDA compute capability 9.x/10.x). Elsewhere LibTorch's
  // grouped GEMM loops over the groups after reading their sizes on the host, once per product,
  // so the segment loop (one read per layer) is faster. The fields below then do not apply.
  bool grouped = false;
  // Rule "one token": a decode step's token runs its K experts through the kernel directly,
  // without the permutation, gather and scatter (a decode step's whole dispatch is a few hundred
  // microseconds, so those ATen calls would cost as much as the experts).
  bool one_token = false;
  // Rule "kernel rows": segments of at most this many rows take the kernel (0: none do).
  int64_t kernel_max_rows = 0;
  // Rule "feature-major": float32 inference segments of fewer than this many rows run their
  // GEMMs feature-major (0: never).
  int64_t feature_major_below = 0;

  SegmentPath PathFor(int64_t rows) const;
};

// The plan for hidden states x [T,H] routed by expert [T,K].
DispatchPlan PlanDispatch(DispatchMode mode, const at::Tensor& x, const at::Tensor& expert);

// Whether `device` runs LibTorch's bfloat16 grouped GEMM as one kernel.
bool HasGroupedGemmKernel(const c10::Device& device);

// Allows (default) or forbids the grouped rule for the whole process: how a benchmark prices
// the grouped GEMM against the segment loop on one GPU.
void SetGroupedDispatchAllowed(bool allowed);

// Rule "upcast": whether the bfloat16 GEMM a b runs as a float32 GEMM rounded once, on CPUs
// whose bfloat16 GEMMs are slow.
bool UpcastGemm(const at::Tensor& a, const at::Tensor& b);

// The kernel-rows rule for a compute dtype on this CPU.
int64_t KernelMaxRows(at::ScalarType dtype);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_DISPATCH_PLAN_H_
