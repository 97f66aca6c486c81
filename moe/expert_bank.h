// The experts of one MoE layer as the dispatch reads them.
//
// ExpertWeights is one expert's SwiGLU: gate and up [Ie,H], down [H,Ie]. ExpertBank is a
// layer's experts in the router's numbering: the frozen stack (experts 0..Nf-1) then the learned
// stack (Nf..E-1), each stored stacked, gate/up [N,Ie,H] and down [N,H,Ie], as the checkpoint
// holds them (moe/moe_layout.h). An empty learned stack is allowed.
//
// Example:
//   ExpertBank bank;
//   bank.frozen_gate = at::randn({2, 8, 16});  // Nf 2, Ie 8, H 16
//   bank.frozen_up = at::randn({2, 8, 16});
//   bank.frozen_down = at::randn({2, 16, 8});
//   at::Tensor y = ExpertSwiGlu(bank.Expert(1), at::randn({3, 16}));  // [3,16]
#ifndef LLAMA_MOE_MOE_EXPERT_BANK_H_
#define LLAMA_MOE_MOE_EXPERT_BANK_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llama_moe {

struct ExpertWeights {
  at::Tensor gate, up, down;  // [Ie,H], [Ie,H], [H,Ie]
};

struct ExpertBank {
  at::Tensor frozen_gate, frozen_up, frozen_down;     // [Nf,Ie,H], [Nf,Ie,H], [Nf,H,Ie]
  at::Tensor learned_gate, learned_up, learned_down;  // [Nl,...]; undefined when Nl = 0

  int64_t num_frozen() const { return frozen_gate.size(0); }
  int64_t num_experts() const { return num_frozen() + (learned_gate.defined() ? learned_gate.size(0) : 0); }
  int64_t expert_intermediate_size() const { return frozen_gate.size(1); }
  // Expert e's matrices: views into its stack.
  ExpertWeights Expert(int64_t e) const;
};

// (token, slot) pairs per expert of `expert` ids [T,K]: int64 [E] on their device, counted without
// a host synchronisation (at::bincount reads the largest id on the host first).
at::Tensor CountPerExpert(const at::Tensor& expert, int64_t num_experts);

// The learned stack then the frozen one as one [Nl+Nf,a,b] tensor: a view when the two are
// adjacent in one allocation (MoeFeedForward allocates them so), else a copy. `learned` may be
// undefined (then: `frozen`). What a grouped GEMM over every expert of a layer reads.
at::Tensor LearnedThenFrozen(const at::Tensor& learned, const at::Tensor& frozen);

// down (silu(gate x) * (up x)) for x [n,H] -> [n,H], through ATen (the obviously correct form).
at::Tensor ExpertSwiGlu(const ExpertWeights& w, const at::Tensor& x);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_BANK_H_
