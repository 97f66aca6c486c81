// Builds the router an MoE config asks for: the one place that maps a config to a Router
// implementation (moe/router.h).
//
// Example:
//   MoeConfig moe;
//   moe.num_frozen_experts = 2;
//   moe.num_learned_experts = 2;
//   moe.top_k = 2;
//   std::shared_ptr<Router> router = MakeRouter(/*hidden=*/16, moe, at::TensorOptions().dtype(at::kFloat));
//   RouterOutput r = router->forward(at::randn({3, 16}));
#ifndef LLAMA_MOE_MOE_ROUTER_FACTORY_H_
#define LLAMA_MOE_MOE_ROUTER_FACTORY_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "moe/moe_config.h"
#include "moe/router.h"

namespace llama_moe {

// A router for `hidden`-wide inputs with parameters in `options` (zero-initialised: a loader
// or the converter fills them).
std::shared_ptr<Router> MakeRouter(int64_t hidden, const MoeConfig& moe, const at::TensorOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_ROUTER_FACTORY_H_
