#include "moe/expert_bank.h"

#include <ATen/ATen.h>

#include <vector>

namespace llama_moe {

ExpertWeights ExpertBank::Expert(int64_t e) const {
  const int64_t nf = num_frozen();
  if (e < nf) return {frozen_gate[e], frozen_up[e], frozen_down[e]};
  return {learned_gate[e - nf], learned_up[e - nf], learned_down[e - nf]};
}

at::Tensor CountPerExpert(const at::Tensor& expert, int64_t num_experts) {
  const at::Tensor flat = expert.reshape({-1}).to(at::kLong);
  return at::zeros({num_experts}, flat.options()).scatter_add_(0, flat, at::ones_like(flat));
}

at::Tensor LearnedThenFrozen(const at::Tensor& learned, const at::Tensor& frozen) {
  if (!learned.defined() || learned.size(0) == 0) return frozen;
  const bool adjacent = learned.is_contiguous() && frozen.is_contiguous() && learned.dtype() == frozen.dtype() &&
                        learned.device() == frozen.device() && learned.sizes().slice(1) == frozen.sizes().slice(1) &&
                        learned.storage().is_alias_of(frozen.storage()) &&
                        frozen.storage_offset() == learned.storage_offset() + learned.numel();
  if (!adjacent) {
    if (!frozen.is_cpu()) {
      TORCH_WARN_ONCE("a layer's learned and frozen experts are separate allocations on ", frozen.device(),
                      ": every grouped forward and backward copies them (MoeFeedForward allocates them together; "
                      "moving a built module with to() separates them, loading into it does not)");
    }
    return at::cat({learned, frozen});
  }
  std::vector<int64_t> sizes = learned.sizes().vec();
  sizes[0] += frozen.size(0);
  return learned.as_strided(sizes, learned.strides(), learned.storage_offset());
}

at::Tensor ExpertSwiGlu(const ExpertWeights& w, const at::Tensor& x) {
  return at::matmul(at::silu(at::matmul(x, w.gate.t())) * at::matmul(x, w.up.t()), w.down.t());
}

}  // namespace llama_moe
