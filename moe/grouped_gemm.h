// Grouped matrix products over rows sorted by expert: the primitive the device dispatch
// (moe/grouped_dispatch.h) is written in. Group sizes travel as an int32 tensor of cumulative
// ends `offs` on the rows' device, so an implementation that reads them on the device (a
// grouped GEMM kernel) never waits for the host.
//
// Two implementations:
//   AtenGroupedGemm()      at::_grouped_mm, when the LibTorch has it (LLAMA_MOE_HAS_GROUPED_MM
//                          in model/torch_features.h); one kernel per product, no host read.
//   ReferenceGroupedGemm() one at::mm per group after one host read of `offs`: the obviously
//                          correct form, available everywhere, that the dispatch is tested with.
//                          Rows it leaves unwritten are NaN, so a caller that reads them fails.
// To add one (a vendor grouped GEMM, say): a function returning a GroupedGemm whose two products
// follow the contracts below, a case in moe/grouped_gemm_test.cc against the reference, and its
// availability rule in PlanDispatch (moe/dispatch_plan.h).
//
// Example:
//   const at::Tensor a = at::randn({5, 4}), b = at::randn({2, 4, 3});
//   const at::Tensor offs = at::tensor({2, 5}, at::kInt);  // rows 0-1 group 0, rows 2-4 group 1
//   const at::Tensor y = ReferenceGroupedGemm().rows(a, b, offs);  // [5,3]
#ifndef LLAMA_MOE_MOE_GROUPED_GEMM_H_
#define LLAMA_MOE_MOE_GROUPED_GEMM_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

namespace llama_moe {

enum class GroupedGemmKind { kAten, kReference };

struct GroupedGemm {
  // a [M,K] times b [G,K,N] -> [M,N]: row r of group g (offs[g-1] <= r < offs[g], offs[-1] = 0)
  // is a[r] b[g]. Rows at or past offs[G-1] are unspecified.
  std::function<at::Tensor(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs)> rows;
  // a [N,M] and b [M,P], the shared dimension split by offs -> [G,N,P]: slice g is
  // a[:, offs[g-1]:offs[g]] b[offs[g-1]:offs[g], :] (zero for an empty group). Columns of a and
  // rows of b at or past offs[G-1] are not read.
  std::function<at::Tensor(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs)> contraction;
  // Groups are padded to a multiple of this many rows (a kernel's alignment rule); 1: none.
  int64_t row_align = 1;
  GroupedGemmKind kind = GroupedGemmKind::kReference;
  const char* name = "";
};

// at::_grouped_mm. Only where LLAMA_MOE_HAS_GROUPED_MM is 1; elsewhere it throws.
GroupedGemm AtenGroupedGemm();

// One at::mm per group, after one host read of offs; `row_align` lets a test take the padded
// layout a kernel's alignment rule asks for.
GroupedGemm ReferenceGroupedGemm(int64_t row_align = 1);

// The implementation of that kind (what an autograd node keeps to run its backward with).
GroupedGemm GroupedGemmOf(GroupedGemmKind kind, int64_t row_align);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_GROUPED_GEMM_H_
