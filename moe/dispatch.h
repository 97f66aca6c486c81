// Sparse dispatch of tokens to experts, and the reference and baseline forms it is checked and
// measured against.
//
// The fast path (SparseMoeForward) permutes the T*K (token, slot) pairs so that each expert's
// pairs are contiguous (one stable sort by expert id) and, for each *active* expert, gathers its
// tokens, runs its SwiGLU with the gate weight folded in before the down projection, and
// index-adds the result back to the tokens. Cost grows with T*K, not with the number of
// experts E: an expert no token chose costs nothing. It is one autograd node with a hand-written
// backward (first-order gradients for x, the gate weights and every stack that requires grad;
// no double backward); the per-expert GEMMs write into slices of preallocated buffers, and the
// only host sync is one copy of the per-expert counts.
//
// Expert weights come from two stacks (frozen experts 0..Nf-1, learned experts Nf..E-1):
// gate/up [N, Ie, H], down [N, H, Ie]. An empty learned stack is allowed.
//
// Example:
//   ExpertStacks s{frozen_gate, frozen_up, frozen_down, learned_gate, learned_up, learned_down};
//   at::Tensor y = SparseMoeForward(x, route.expert, route.weight, s);   // x [T,H] -> y [T,H]
#ifndef LLAMA_MOE_MOE_DISPATCH_H_
#define LLAMA_MOE_MOE_DISPATCH_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

namespace llama_moe {

// One expert's matrices: gate and up [Ie,H], down [H,Ie].
struct ExpertMatrices {
  at::Tensor gate, up, down;
};

struct ExpertStacks {
  at::Tensor frozen_gate, frozen_up, frozen_down;     // [Nf,Ie,H], [Nf,Ie,H], [Nf,H,Ie]
  at::Tensor learned_gate, learned_up, learned_down;  // [Nl,...]; undefined when Nl = 0

  int64_t num_frozen() const { return frozen_gate.size(0); }
  int64_t num_experts() const { return num_frozen() + (learned_gate.defined() ? learned_gate.size(0) : 0); }
  // SwiGLU of expert e on x [n,H] -> [n,H].
  at::Tensor Expert(int64_t e, const at::Tensor& x) const;
};

// x [T,H]; expert [T,K] int64; weight [T,K] float32 -> [T,H] in x's dtype. The fast path.
at::Tensor SparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                            const ExpertStacks& stacks);

// SparseMoeForward for inference with the experts' matrices from `get`, called once per active
// expert in ascending expert order, each result used before the next call (so a cache may
// reuse its slot): the same arithmetic in the same order, so a layer whose experts live
// elsewhere (moe/expert_offload.h) equals the in-memory layer exactly. No gradients.
at::Tensor SparseMoeForwardWith(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                int64_t num_experts, int64_t expert_intermediate_size,
                                const std::function<ExpertMatrices(int64_t)>& get);

// Every frozen expert on every token with weight 1 (identity mode): one dense SwiGLU over the
// concatenated slices, which is the dense FFN up to summation order.
at::Tensor AllFrozenForward(const at::Tensor& x, const ExpertStacks& stacks);
// Every learned expert with weight 1 (learned_only mode).
at::Tensor AllLearnedForward(const at::Tensor& x, const ExpertStacks& stacks);

// Slow, obviously correct reference: token by token, slot by slot.
at::Tensor ReferenceMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertStacks& stacks);

// Baseline of the seed project: every expert chosen by any token runs on *all* tokens, then the
// selected outputs are gathered. Cost grows with the number of distinct active experts times T.
at::Tensor SeedStyleMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertStacks& stacks);

// Baseline of Hugging Face's Mixtral block: loop over all E experts, find each one's tokens
// with a mask, gather, compute, index_add.
at::Tensor MixtralLoopMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                 const ExpertStacks& stacks);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_DISPATCH_H_
