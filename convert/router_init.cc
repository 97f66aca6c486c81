#include "convert/router_init.h"

#include <ATen/ATen.h>

#include "convert/random_streams.h"

namespace llama_moe {

RouterInitWeights NormalRouterInit(int64_t num_experts, int64_t hidden, double std, at::Generator gen) {
  return {at::randn({num_experts, hidden}, gen, at::kFloat) * std, at::zeros({num_experts}, at::kFloat)};
}

RouterInitWeights DensePreservingRouterInit(int64_t num_frozen, int64_t num_learned, int64_t hidden,
                                            double bias_margin) {
  const int64_t E = num_frozen + num_learned;
  RouterInitWeights r{at::zeros({E, hidden}, at::kFloat), at::zeros({E}, at::kFloat)};
  r.bias.slice(0, 0, num_frozen).fill_(bias_margin * static_cast<double>(num_learned) / E);
  r.bias.slice(0, num_frozen, E).fill_(-bias_margin * static_cast<double>(num_frozen) / E);
  return r;
}

RouterInitWeights ComplementaryRouterInit(int64_t num_frozen, int64_t num_learned, int64_t hidden, double std,
                                          at::Generator gen) {
  const at::Tensor u = at::randn({1, hidden}, gen, at::kFloat) * std;
  return {at::cat({u.expand({num_frozen, hidden}), -u.expand({num_learned, hidden})}, 0),
          at::zeros({num_frozen + num_learned}, at::kFloat)};
}

RouterInitWeights InitRouter(const ConversionRecipe& r, const MoeConfig& moe, int64_t hidden, int64_t layer) {
  const int64_t Nf = moe.num_frozen_experts, Nl = moe.num_learned_experts;
  switch (r.router_init()) {
    case ConversionRecipe::DENSE_PRESERVING:
      return DensePreservingRouterInit(Nf, Nl, hidden, r.bias_margin());
    case ConversionRecipe::COMPLEMENTARY:
      return ComplementaryRouterInit(Nf, Nl, hidden, r.router_std(),
                                     ConversionStream(r.seed(), layer, StreamPurpose::kRouter));
    case ConversionRecipe::NORMAL:
      break;
  }
  return NormalRouterInit(moe.num_experts(), hidden, r.router_std(),
                          ConversionStream(r.seed(), layer, StreamPurpose::kRouter));
}

}  // namespace llama_moe
