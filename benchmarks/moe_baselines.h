// The MoE forwards of other projects that //benchmarks:moe_benchmark measures the sparse
// dispatch (moe/dispatch.h) against, in the same run.
//
// Example:
//   ExpertBank bank;
//   bank.frozen_gate = at::randn({4, 8, 16});
//   bank.frozen_up = at::randn({4, 8, 16});
//   bank.frozen_down = at::randn({4, 16, 8});
//   const at::Tensor expert = at::tensor({0, 3, 2, 1}, at::kLong).reshape({2, 2});
//   at::Tensor y = MixtralLoopMoeForward(at::randn({2, 16}), expert, at::rand({2, 2}), bank);
#ifndef LLAMA_MOE_BENCHMARKS_MOE_BASELINES_H_
#define LLAMA_MOE_BENCHMARKS_MOE_BASELINES_H_

#include <ATen/core/Tensor.h>

#include "moe/expert_bank.h"

namespace llama_moe {

// The original project's method: every expert chosen by any token runs on *all* tokens, then
// the selected outputs are gathered. Cost grows with the number of distinct active experts
// times T.
at::Tensor AllTokensMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertBank& bank);

// Hugging Face's Mixtral block: a loop over all E experts that finds each one's tokens with a
// one-hot mask, gathers, computes and index-adds.
at::Tensor MixtralLoopMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                 const ExpertBank& bank);

}  // namespace llama_moe

#endif  // LLAMA_MOE_BENCHMARKS_MOE_BASELINES_H_
