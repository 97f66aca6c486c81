#include "benchmarks/moe_baselines.h"

#include <ATen/ATen.h>

#include <vector>

namespace llama_moe {

at::Tensor AllTokensMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertBank& bank) {
  const int64_t T = x.size(0), K = expert.size(1);
  const at::Tensor active = std::get<0>(at::_unique(expert.reshape({T * K}), /*sorted=*/true)).to(at::kCPU);
  // all_out[j] = expert active[j] on every token.
  std::vector<at::Tensor> all;
  at::Tensor slot_of = at::full({bank.num_experts()}, -1, at::kLong);
  for (int64_t j = 0; j < active.size(0); ++j) {
    const int64_t e = active[j].item<int64_t>();
    slot_of[e] = j;
    all.push_back(ExpertSwiGlu(bank.Expert(e), x));
  }
  const at::Tensor all_out = at::stack(all, 0);  // [A,T,H]
  const at::Tensor j = slot_of.to(x.device()).index_select(0, expert.reshape({T * K})).reshape({T, K});
  const at::Tensor tok =
      at::arange(T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(1).expand({T, K});
  const int64_t H = x.size(1);
  const at::Tensor picked = all_out.reshape({-1, H}).index_select(0, (j * T + tok).reshape({T * K})).reshape({T, K, H});
  return (picked * weight.to(x.scalar_type()).unsqueeze(-1)).sum(1);
}

at::Tensor MixtralLoopMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                 const ExpertBank& bank) {
  const int64_t E = bank.num_experts();
  at::Tensor out = at::zeros_like(x);
  // expert_mask [E,K,T] as in transformers' MixtralSparseMoeBlock.
  const at::Tensor mask = at::one_hot(expert, E).permute({2, 1, 0});
  const at::Tensor w = weight.to(x.scalar_type());
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<at::Tensor> idx = at::where(mask[e]);  // (slot, token)
    const at::Tensor& slot = idx[0];
    const at::Tensor& tok = idx[1];
    if (tok.numel() == 0) continue;
    const at::Tensor we = w.reshape({-1}).index_select(0, tok * expert.size(1) + slot);
    const at::Tensor y = ExpertSwiGlu(bank.Expert(e), x.index_select(0, tok)) * we.unsqueeze(1);
    out.index_add_(0, tok, y);
  }
  return out;
}

}  // namespace llama_moe
