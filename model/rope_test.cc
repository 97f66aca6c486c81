// RoPE pieces at Llama 3.1 8B's real settings (theta 500000, head_dim 128, llama3 scaling 8/1/4/8192)
// against a direct float64 evaluation; the whole model is checked in llama_model_test.
#include "model/rope.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace llama_moe {
namespace {

LlamaConfig Llama31() {
  LlamaConfig cfg;
  cfg.head_dim = 128;
  cfg.rope_theta = 500000.0;
  cfg.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
  return cfg;
}

TEST(RopeTest, Llama3ScalingRegions) {
  const at::Tensor inv = RopeInverseFrequencies(Llama31());
  ASSERT_EQ(inv.numel(), 64);
  int unchanged = 0, divided = 0, smoothed = 0;
  for (int i = 0; i < 64; ++i) {
    const double base = std::pow(500000.0, -2.0 * i / 128);
    const double wavelen = 2 * M_PI / base;
    double expected = base;
    if (wavelen < 8192.0 / 4) {
      ++unchanged;
    } else if (wavelen > 8192.0 / 1) {
      expected = base / 8;
      ++divided;
    } else {
      const double smooth = (8192.0 / wavelen - 1) / (4 - 1);
      expected = (1 - smooth) * base / 8 + smooth * base;
      ++smoothed;
    }
    // float32 storage: half an ulp, 2^-24 relative.
    EXPECT_NEAR(inv[i].item<float>(), expected, expected * 6e-8) << i;
  }
  // All three branches of the rule occur at these settings.
  EXPECT_GT(unchanged, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
}

TEST(RopeTest, NoScalingIsPlainTheta) {
  LlamaConfig cfg = Llama31();
  cfg.rope_scaling.reset();
  const at::Tensor inv = RopeInverseFrequencies(cfg);
  for (int i = 0; i < 64; ++i) {
    const double expected = std::pow(500000.0, -2.0 * i / 128);
    EXPECT_NEAR(inv[i].item<float>(), expected, expected * 6e-8);
  }
}

// ApplyRope rotates pairs (i, i + D/2) by position * inv_freq[i].
TEST(RopeTest, RotatesHalfPairs) {
  const LlamaConfig cfg = Llama31();
  const at::Tensor inv = RopeInverseFrequencies(cfg);
  const at::Tensor x = at::randn({2, 3, 5, 128}, at::kDouble);  // [B,heads,T,D]
  const at::Tensor positions = at::tensor(std::vector<int64_t>{0, 1, 7, 1000, 100000, 3, 4, 5, 6, 131071},
                                          at::TensorOptions().dtype(at::kLong)).view({2, 5});
  const at::Tensor y = ApplyRope(x, MakeRopeTables(inv, positions, at::kDouble));
  for (int b = 0; b < 2; ++b)
    for (int h = 0; h < 3; ++h)
      for (int t = 0; t < 5; ++t)
        for (int i = 0; i < 64; i += 9) {
          const double angle = positions[b][t].item<int64_t>() * static_cast<double>(inv[i].item<float>());
          const double a = x[b][h][t][i].item<double>(), c = x[b][h][t][i + 64].item<double>();
          EXPECT_NEAR(y[b][h][t][i].item<double>(), a * std::cos(angle) - c * std::sin(angle), 1e-9);
          EXPECT_NEAR(y[b][h][t][i + 64].item<double>(), c * std::cos(angle) + a * std::sin(angle), 1e-9);
        }
}

}  // namespace
}  // namespace llama_moe
