// Low-rank adapters (LoRA) on the frozen experts, applied without merging.
//
// Frozen expert e's projection W (gate/up [Ie,H], down [H,Ie]) acts as W + s B_e A_e, with A_e
// [r, in], B_e [out, r] and s = alpha / r. The adapters stay separate tensors: the frozen slices
// keep their exact dense values, so switching the adapters off (or a zero B, LoRA's
// initialisation) gives back the model without them, and identity routing the dense FFN.
// The adapted forms run as ATen operations under autograd (gradients reach A and B, the tokens,
// the gate weights and the learned experts); learned experts get no adapters.
//
// MergeLora builds W + s B A, the slow reference the tests hold the unmerged forms to; nothing
// else merges.
//
// Example:
//   ExpertBank bank;
//   bank.frozen_gate = at::randn({2, 8, 16});  // Nf 2, Ie 8, H 16
//   bank.frozen_up = at::randn({2, 8, 16});
//   bank.frozen_down = at::randn({2, 16, 8});
//   LoraAdapters lora = ZeroLoraAdapters(bank, /*rank=*/4, /*scale=*/2.0);  // B = 0
//   const at::Tensor x = at::randn({3, 16});
//   at::Tensor dense = LoraAllFrozenForward(x, bank, lora);  // equals AllFrozenForward(x, bank)
//   const at::Tensor expert = at::tensor({0, 1, 1, 0, 0, 1}, at::kLong).reshape({3, 2});
//   at::Tensor y = LoraSparseMoeForward(x, expert, at::rand({3, 2}), bank, lora);  // [3,16]
#ifndef LLAMA_MOE_MOE_LORA_H_
#define LLAMA_MOE_MOE_LORA_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "moe/expert_bank.h"

namespace llama_moe {

// The adapters of one layer's frozen experts, stacked like the experts.
struct LoraAdapters {
  at::Tensor gate_a, up_a, down_a;  // [Nf, r, H], [Nf, r, H], [Nf, r, Ie]
  at::Tensor gate_b, up_b, down_b;  // [Nf, Ie, r], [Nf, Ie, r], [Nf, H, r]
  double scale = 1.0;               // alpha / r

  bool defined() const { return gate_a.defined(); }
  int64_t rank() const { return gate_a.size(1); }
};

// Adapters with B = 0 (and A = 0), shaped for `bank`; tests and examples.
LoraAdapters ZeroLoraAdapters(const ExpertBank& bank, int64_t rank, double scale);

// Identity routing with adapters: every frozen expert on every token with weight 1, as
// AllFrozenForward (the same products in the same order) plus the adapters' terms.
at::Tensor LoraAllFrozenForward(const at::Tensor& x, const ExpertBank& bank, const LoraAdapters& lora);

// Routed MoE with adapters on the frozen experts: x [T,H], expert [T,K] int64, weight [T,K] ->
// [T,H] in x's dtype, only the chosen experts computed (one host read of the per-expert counts).
at::Tensor LoraSparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                const ExpertBank& bank, const LoraAdapters& lora);

// The bank with each frozen projection replaced by W + s B A (differentiable in A and B).
ExpertBank MergeLora(const ExpertBank& bank, const LoraAdapters& lora);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_LORA_H_
