// The slow, obviously correct MoE forward that the sparse dispatch (moe/dispatch.h) and its
// kernels are checked against: token by token, slot by slot, each expert through ATen.
//
// Example:
//   ExpertBank bank;
//   bank.frozen_gate = at::randn({4, 8, 16});
//   bank.frozen_up = at::randn({4, 8, 16});
//   bank.frozen_down = at::randn({4, 16, 8});
//   const at::Tensor expert = at::tensor({0, 3, 2, 1}, at::kLong).reshape({2, 2});
//   at::Tensor y = ReferenceMoeForward(at::randn({2, 16}), expert, at::rand({2, 2}), bank);
#ifndef LLAMA_MOE_MOE_MOE_REFERENCE_H_
#define LLAMA_MOE_MOE_MOE_REFERENCE_H_

#include <ATen/core/Tensor.h>

#include "moe/expert_bank.h"

namespace llama_moe {

// x [T,H]; expert [T,K] int64; weight [T,K] -> sum_k weight[t,k] * expert[t,k](x[t]), [T,H].
at::Tensor ReferenceMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertBank& bank);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_MOE_REFERENCE_H_
