#include "moe/dispatch.h"

#include <ATen/ATen.h>

#include <vector>

namespace llama_moe {
namespace {

at::Tensor SwiGlu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, const at::Tensor& down) {
  // x [n,H]; gate/up [Ie,H]; down [H,Ie].
  return at::matmul(at::silu(at::matmul(x, gate.t())) * at::matmul(x, up.t()), down.t());
}

}  // namespace

at::Tensor ExpertStacks::Expert(int64_t e, const at::Tensor& x) const {
  const int64_t nf = num_frozen();
  if (e < nf) return SwiGlu(x, frozen_gate[e], frozen_up[e], frozen_down[e]);
  return SwiGlu(x, learned_gate[e - nf], learned_up[e - nf], learned_down[e - nf]);
}

at::Tensor SparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                            const ExpertStacks& stacks) {
  const int64_t T = x.size(0), K = expert.size(1), E = stacks.num_experts();
  const at::Tensor flat_expert = expert.reshape({T * K});
  // Stable sort keeps pairs of one expert in token order, so results do not depend on sort
  // implementation details.
  const at::Tensor order = std::get<1>(flat_expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor token = order.div(K, "floor");                      // [T*K] source token of each pair
  const at::Tensor counts = at::bincount(flat_expert, /*weights=*/{}, E).to(at::kCPU);
  const at::Tensor x_sorted = x.index_select(0, token);               // [T*K,H], grouped by expert
  const int64_t* c = counts.data_ptr<int64_t>();
  std::vector<at::Tensor> outs;
  outs.reserve(static_cast<size_t>(E));
  int64_t begin = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (c[e] == 0) continue;
    outs.push_back(stacks.Expert(e, x_sorted.narrow(0, begin, c[e])));
    begin += c[e];
  }
  const at::Tensor y_sorted = outs.size() == 1 ? outs[0] : at::cat(outs, 0);  // [T*K,H]
  const at::Tensor w_sorted = weight.reshape({T * K}).index_select(0, order).to(y_sorted.scalar_type());
  at::Tensor out = at::zeros_like(x);
  return out.index_add(0, token, y_sorted * w_sorted.unsqueeze(1));
}

at::Tensor AllFrozenForward(const at::Tensor& x, const ExpertStacks& s) {
  const int64_t n = s.frozen_gate.size(0) * s.frozen_gate.size(1), H = x.size(-1);
  // [Nf,Ie,H] -> [Nf*Ie,H]; [Nf,H,Ie] -> [H,Nf*Ie] (neuron order matches the gate/up rows).
  return SwiGlu(x, s.frozen_gate.reshape({n, H}), s.frozen_up.reshape({n, H}),
                s.frozen_down.permute({1, 0, 2}).reshape({H, n}));
}

at::Tensor AllLearnedForward(const at::Tensor& x, const ExpertStacks& s) {
  const int64_t n = s.learned_gate.size(0) * s.learned_gate.size(1), H = x.size(-1);
  return SwiGlu(x, s.learned_gate.reshape({n, H}), s.learned_up.reshape({n, H}),
                s.learned_down.permute({1, 0, 2}).reshape({H, n}));
}

at::Tensor ReferenceMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertStacks& stacks) {
  at::Tensor out = at::zeros_like(x);
  const at::Tensor ex = expert.to(at::kCPU);
  for (int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor acc = at::zeros_like(x[t]);
    for (int64_t k = 0; k < expert.size(1); ++k) {
      const int64_t e = ex[t][k].item<int64_t>();
      acc = acc + stacks.Expert(e, x.narrow(0, t, 1))[0] * weight[t][k].to(x.scalar_type());
    }
    out[t].copy_(acc);
  }
  return out;
}

at::Tensor SeedStyleMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertStacks& stacks) {
  const int64_t T = x.size(0), K = expert.size(1);
  const at::Tensor active = std::get<0>(at::_unique(expert.reshape({T * K}), /*sorted=*/true)).to(at::kCPU);
  // all_out[j] = expert active[j] on every token.
  std::vector<at::Tensor> all;
  at::Tensor slot_of = at::full({stacks.num_experts()}, -1, at::kLong);
  for (int64_t j = 0; j < active.size(0); ++j) {
    const int64_t e = active[j].item<int64_t>();
    slot_of[e] = j;
    all.push_back(stacks.Expert(e, x));
  }
  const at::Tensor all_out = at::stack(all, 0);                            // [A,T,H]
  const at::Tensor j = slot_of.to(x.device()).index_select(0, expert.reshape({T * K})).reshape({T, K});
  const at::Tensor tok = at::arange(T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(1).expand({T, K});
  const int64_t H = x.size(1);
  const at::Tensor picked = all_out.reshape({-1, H}).index_select(0, (j * T + tok).reshape({T * K})).reshape({T, K, H});
  return (picked * weight.to(x.scalar_type()).unsqueeze(-1)).sum(1);
}

at::Tensor MixtralLoopMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                 const ExpertStacks& stacks) {
  const int64_t E = stacks.num_experts();
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
    const at::Tensor y = stacks.Expert(e, x.index_select(0, tok)) * we.unsqueeze(1);
    out.index_add_(0, tok, y);
  }
  return out;
}

}  // namespace llama_moe
