// The sparse MoE forward for devices: every expert of a layer in three grouped GEMMs
// (moe/grouped_gemm.h), with the group sizes kept on the device, so a routed layer makes no host
// synchronisation in its forward or backward (SparseMoeForward's segment loop reads the
// per-expert counts on the host once per layer). The (token, slot) pairs are sorted by group
// (learned experts first, then frozen, so that the learned stack's weight gradients are the
// leading groups and a frozen stack costs no gradient GEMM), each group padded to the GEMM's row
// alignment; one autograd node with a hand-written backward, first-order gradients for x, the
// gate weights and every stack that requires grad. ReferenceMoeForward (moe/moe_reference.h) is
// the slow form it is tested against; PlanDispatch's "grouped" rule says when SparseMoeForward
// takes it.
//
// Example:
//   ExpertBank bank;
//   bank.frozen_gate = at::randn({4, 8, 16});
//   bank.frozen_up = at::randn({4, 8, 16});
//   bank.frozen_down = at::randn({4, 16, 8});
//   const at::Tensor expert = at::tensor({0, 3, 2, 1}, at::kLong).reshape({2, 2});
//   at::Tensor y = GroupedMoeForward(at::randn({2, 16}), expert, at::rand({2, 2}), bank,
//                                    ReferenceGroupedGemm());  // [2,16]
#ifndef LLAMA_MOE_MOE_GROUPED_DISPATCH_H_
#define LLAMA_MOE_MOE_GROUPED_DISPATCH_H_

#include <ATen/core/Tensor.h>

#include "moe/expert_bank.h"
#include "moe/grouped_gemm.h"

namespace llama_moe {

// x [T,H]; expert [T,K] int64; weight [T,K] float32 -> [T,H] in x's dtype (bfloat16/float16
// outputs summed over a token's experts in float32 and rounded once, as SparseMoeForward does).
at::Tensor GroupedMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                             const ExpertBank& bank, const GroupedGemm& gemm);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_GROUPED_DISPATCH_H_
