#include "model/torch_features.h"

#include <ATen/ATen.h>

#include <string>

#include "gtest/gtest.h"

namespace {

TEST(TorchFeaturesTest, GuardsFollowTheHeaderVersion) {
  const std::string version = TORCH_VERSION;
  const int major = std::stoi(version.substr(0, version.find('.')));
  const int minor = std::stoi(version.substr(version.find('.') + 1));
  EXPECT_EQ(LLAMA_MOE_HAS_SDPA_GQA, major > 2 || (major == 2 && minor >= 5) ? 1 : 0) << version;
  EXPECT_EQ(LLAMA_MOE_HAS_GROUPED_MM, major > 2 || (major == 2 && minor >= 9) ? 1 : 0) << version;
  EXPECT_TRUE(LLAMA_MOE_TORCH_AT_LEAST(1, 0));
  EXPECT_FALSE(LLAMA_MOE_TORCH_AT_LEAST(99, 0));
}

#if LLAMA_MOE_HAS_SDPA_GQA
// The fused call the GPU attention makes, on the CPU: equal to grouped-query attention written
// out with an additive mask.
TEST(TorchFeaturesTest, FusedGroupedQueryAttentionEqualsTheReference) {
  at::manual_seed(0);
  const int64_t B = 2, heads = 8, kv = 2, T = 5, S = 7, D = 16;
  const at::Tensor q = at::randn({B, heads, T, D}), k = at::randn({B, kv, S, D}), v = at::randn({B, kv, S, D});
  const at::Tensor mask = at::zeros({B, 1, T, S}).masked_fill(at::rand({B, 1, T, S}) < 0.3, -INFINITY)
                              .index_put_({at::indexing::Slice(), at::indexing::Slice(), at::indexing::Slice(), 0}, 0.0);
  const at::Tensor fused = at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, std::nullopt, true);
  const at::Tensor kr = k.repeat_interleave(heads / kv, 1), vr = v.repeat_interleave(heads / kv, 1);
  const at::Tensor ref = at::matmul(at::softmax(at::matmul(q, kr.transpose(2, 3)) / std::sqrt(double(D)) + mask, -1), vr);
  EXPECT_LT((fused - ref).abs().max().item<double>(), 1e-5);
}
#endif

}  // namespace
