#include "model/decode_norm.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "model/decode_linear.h"

namespace llama_moe {
namespace {

// RmsNorm::forward's ATen form.
at::Tensor AtenRmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return w * (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type());
}

TEST(DecodeNormTest, MatchesTheAtenForm) {
  at::manual_seed(0);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (const int64_t rows : {1, 3, 8}) {
      const at::Tensor x = (at::randn({1, rows, 1024}) * 3).to(dtype), w = (at::rand({1024}) + 0.5).to(dtype);
      ASSERT_TRUE(CanDecodeRmsNorm(x, w));
      const at::Tensor got = DecodeRmsNorm(x, w, 1e-5), want = AtenRmsNorm(x, w, 1e-5);
      ASSERT_EQ(got.sizes(), x.sizes());
      EXPECT_EQ(got.scalar_type(), dtype);
      const double err = ((got.to(at::kDouble) - want.to(at::kDouble)).abs() / want.to(at::kDouble).abs().clamp_min(1e-3))
                             .max()
                             .item<double>();
      // The mean of squares is summed in another order: float32 differs in the last bits; a
      // bfloat16 element at most by its rounding step (2^-8 relative).
      EXPECT_LT(err, dtype == at::kFloat ? 1e-5 : 8e-3) << c10::toString(dtype) << " rows " << rows;
      if (dtype == at::kBFloat16) {  // and almost all bfloat16 elements round to the same value
        EXPECT_GT(at::isclose(got.to(at::kFloat), want.to(at::kFloat), 0, 0).to(at::kFloat).mean().item<double>(), 0.9);
      }
    }
  }
}

TEST(DecodeNormTest, TakesDecodeShapesOnly) {
  const at::Tensor w = at::ones({16});
  EXPECT_TRUE(CanDecodeRmsNorm(at::randn({1, 1, 16}), w));
  EXPECT_FALSE(CanDecodeRmsNorm(at::randn({1, kDecodeLinearMaxRows + 1, 16}), w));  // prefill
  EXPECT_FALSE(CanDecodeRmsNorm(at::randn({1, 16}).to(at::kBFloat16), w));          // dtypes differ
  EXPECT_FALSE(CanDecodeRmsNorm(at::randn({1, 8}), w));                              // widths differ
  SetDecodeLinearEnabled(false);
  EXPECT_FALSE(CanDecodeRmsNorm(at::randn({1, 16}), w));
  SetDecodeLinearEnabled(true);
}

}  // namespace
}  // namespace llama_moe
