// Sparse dispatch of tokens to experts: the MoE layer's fast path.
//
// SparseMoeForward permutes the T*K (token, slot) pairs so that each expert's pairs are
// contiguous (a stable sort by expert id) and, for each *active* expert, runs its segment: the
// expert's rows of x through its SwiGLU with the gate weight folded in before the down
// projection, index-added back to the tokens. Cost grows with T*K, not with the number of
// experts E: an expert no token chose costs nothing. How each segment runs (the hand-written CPU
// kernel or ATen GEMMs, and in which layout) is the plan's choice (moe/dispatch_plan.h). In
// training it is one autograd node with a hand-written backward (first-order gradients for x,
// the gate weights and every stack that requires grad; no double backward); the only host sync
// is one copy of the per-expert counts. On a device whose LibTorch has a grouped GEMM kernel
// (the plan's "grouped" rule) the whole layer runs as GroupedMoeForward instead
// (moe/grouped_dispatch.h), with no host sync. ReferenceMoeForward (moe/moe_reference.h) is the
// slow form it is tested against.
//
// Example:
//   ExpertBank bank;
//   bank.frozen_gate = at::randn({4, 8, 16});
//   bank.frozen_up = at::randn({4, 8, 16});
//   bank.frozen_down = at::randn({4, 16, 8});
//   const at::Tensor expert = at::tensor({0, 3, 2, 1}, at::kLong).reshape({2, 2});
//   at::Tensor y = SparseMoeForward(at::randn({2, 16}), expert, at::rand({2, 2}), bank);  // [2,16]
#ifndef LLAMA_MOE_MOE_DISPATCH_H_
#define LLAMA_MOE_MOE_DISPATCH_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "moe/expert_bank.h"

namespace llama_moe {

// x [T,H]; expert [T,K] int64; weight [T,K] float32 -> [T,H] in x's dtype.
at::Tensor SparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                            const ExpertBank& bank);

// SparseMoeForward for inference with each expert's weights from `get`, called once per active
// expert in ascending expert order, each result used before the next call (so a cache may
// reuse its slot): the same arithmetic in the same order, so a layer whose experts live
// elsewhere (moe/expert_offload.h) equals the in-memory layer exactly. No gradients.
at::Tensor SparseMoeForwardWith(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                int64_t num_experts, int64_t expert_intermediate_size,
                                const std::function<ExpertWeights(int64_t)>& get);

// Every frozen expert on every token with weight 1 (identity mode): one dense SwiGLU over the
// concatenated slices, which is the dense FFN up to summation order.
at::Tensor AllFrozenForward(const at::Tensor& x, const ExpertBank& bank);
// Every learned expert with weight 1 (learned_only mode).
at::Tensor AllLearnedForward(const at::Tensor& x, const ExpertBank& bank);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_DISPATCH_H_
