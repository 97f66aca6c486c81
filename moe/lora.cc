#include "moe/lora.h"

#include <ATen/ATen.h>

#include <vector>

#include "model/decode_linear.h"

namespace llama_moe {
namespace {

// x [n, in] through expert e's projection W [out, in] plus s B_e (A_e x): [n, out].
at::Tensor Adapted(const at::Tensor& x, const at::Tensor& w, const at::Tensor& a, const at::Tensor& b, double s) {
  return at::matmul(x, w.t()) + at::matmul(at::matmul(x, a.t()), b.t()) * s;
}

}  // namespace

LoraAdapters ZeroLoraAdapters(const ExpertBank& bank, int64_t rank, double scale) {
  const int64_t nf = bank.num_frozen(), ie = bank.expert_intermediate_size(), h = bank.frozen_gate.size(2);
  const at::TensorOptions o = bank.frozen_gate.options();
  LoraAdapters l;
  l.gate_a = at::zeros({nf, rank, h}, o);
  l.up_a = at::zeros({nf, rank, h}, o);
  l.down_a = at::zeros({nf, rank, ie}, o);
  l.gate_b = at::zeros({nf, ie, rank}, o);
  l.up_b = at::zeros({nf, ie, rank}, o);
  l.down_b = at::zeros({nf, h, rank}, o);
  l.scale = scale;
  return l;
}

at::Tensor LoraAllFrozenForward(const at::Tensor& x, const ExpertBank& bank, const LoraAdapters& lora) {
  const int64_t nf = bank.num_frozen(), ie = bank.expert_intermediate_size(), h = x.size(-1), t = x.size(0);
  const int64_t n = nf * ie;
  // The dense SwiGLU over the concatenated slices, as AllFrozenForward computes it ...
  const at::Tensor gate = bank.frozen_gate.reshape({n, h}), up = bank.frozen_up.reshape({n, h});
  const at::Tensor down = bank.frozen_down.permute({1, 0, 2}).reshape({h, n});
  // ... plus each slice's low-rank term: (x A_e^T) B_e^T for every e at once, [T, Nf, Ie].
  auto delta = [&](const at::Tensor& a, const at::Tensor& b) {
    const at::Tensor xa = at::einsum("th,erh->ter", {x, a});
    return (at::einsum("ter,eir->tei", {xa, b}) * lora.scale).reshape({t, n});
  };
  const at::Tensor g = ModelLinear(x, gate) + delta(lora.gate_a, lora.gate_b);
  const at::Tensor u = ModelLinear(x, up) + delta(lora.up_a, lora.up_b);
  const at::Tensor hidden = at::silu(g) * u;  // [T, Nf*Ie]
  const at::Tensor ha = at::einsum("tei,eri->ter", {hidden.reshape({t, nf, ie}), lora.down_a});
  return ModelLinear(hidden, down) + at::einsum("ter,ehr->th", {ha, lora.down_b}) * lora.scale;
}

at::Tensor LoraSparseMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                                const ExpertBank& bank, const LoraAdapters& lora) {
  const int64_t k = expert.size(1), nf = bank.num_frozen(), e_total = bank.num_experts();
  const at::Tensor flat = expert.reshape({-1}).to(at::kLong);
  // Pairs grouped by expert (a stable sort keeps each expert's tokens in order).
  const at::Tensor order = std::get<1>(flat.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor counts = CountPerExpert(flat, e_total).to(at::kCPU);  // the one host read
  const int64_t* count = counts.data_ptr<int64_t>();
  const at::Tensor tokens = order.div(k, "floor");
  const at::Tensor w = weight.reshape({-1}).index_select(0, order).to(x.scalar_type());
  at::Tensor y = at::zeros_like(x);
  int64_t begin = 0;
  for (int64_t e = 0; e < e_total; ++e) {
    const int64_t n = count[e];
    if (n == 0) continue;
    const at::Tensor rows = tokens.narrow(0, begin, n);
    const at::Tensor xs = x.index_select(0, rows);
    const ExpertWeights m = bank.Expert(e);
    at::Tensor out;
    if (e < nf) {
      const at::Tensor g = Adapted(xs, m.gate, lora.gate_a[e], lora.gate_b[e], lora.scale);
      const at::Tensor u = Adapted(xs, m.up, lora.up_a[e], lora.up_b[e], lora.scale);
      out = Adapted(at::silu(g) * u, m.down, lora.down_a[e], lora.down_b[e], lora.scale);
    } else {
      out = ExpertSwiGlu(m, xs);
    }
    y = y.index_add(0, rows, out * w.narrow(0, begin, n).unsqueeze(1));
    begin += n;
  }
  return y;
}

ExpertBank MergeLora(const ExpertBank& bank, const LoraAdapters& lora) {
  ExpertBank out = bank;
  out.frozen_gate = bank.frozen_gate + at::matmul(lora.gate_b, lora.gate_a) * lora.scale;
  out.frozen_up = bank.frozen_up + at::matmul(lora.up_b, lora.up_a) * lora.scale;
  out.frozen_down = bank.frozen_down + at::matmul(lora.down_b, lora.down_a) * lora.scale;
  return out;
}

}  // namespace llama_moe
