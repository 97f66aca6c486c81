#include "moe/router_factory.h"

#include "moe/topk_router.h"

namespace llama_moe {

std::shared_ptr<Router> MakeRouter(int64_t hidden, const MoeConfig& moe, const at::TensorOptions& options) {
  return std::make_shared<TopKRouter>(hidden, moe, options);
}

}  // namespace llama_moe
