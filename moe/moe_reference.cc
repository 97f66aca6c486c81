#include "moe/moe_reference.h"

#include <ATen/ATen.h>

namespace llama_moe {

at::Tensor ReferenceMoeForward(const at::Tensor& x, const at::Tensor& expert, const at::Tensor& weight,
                               const ExpertBank& bank) {
  at::Tensor out = at::zeros_like(x);
  const at::Tensor ex = expert.to(at::kCPU);
  for (int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor acc = at::zeros_like(x[t]);
    for (int64_t k = 0; k < expert.size(1); ++k) {
      const int64_t e = ex[t][k].item<int64_t>();
      acc = acc + ExpertSwiGlu(bank.Expert(e), x.narrow(0, t, 1))[0] * weight[t][k].to(x.scalar_type());
    }
    out[t].copy_(acc);
  }
  return out;
}

}  // namespace llama_moe
