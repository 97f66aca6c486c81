#include "model/decode_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/decode_linear.h"

namespace llama_moe {
namespace {

// Grouped-query attention written out in float64: query head h reads kv head h / group.
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                     double scale) {
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3), group = heads / k.size(1);
  const at::Tensor kr = k.to(at::kDouble).repeat_interleave(group, 1), vr = v.to(at::kDouble).repeat_interleave(group, 1);
  const at::Tensor scores = at::matmul(q.to(at::kDouble), kr.transpose(2, 3)) * scale +
                            bias.to(at::kDouble).reshape({b, 1, t, k.size(2)});
  return at::matmul(at::softmax(scores, -1), vr).transpose(1, 2).reshape({b, t, heads * d});
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b).abs().max().item<double>() / b.abs().max().item<double>();
}

// Keys and values as a cache holds them: the first S of `capacity` slots.
std::pair<at::Tensor, at::Tensor> CacheView(int64_t b, int64_t kv, int64_t s, int64_t d, at::ScalarType dtype) {
  const at::Tensor keys = at::randn({b, kv, s + 5, d}).to(dtype), values = at::randn({b, kv, s + 5, d}).to(dtype);
  return {keys.narrow(2, 0, s), values.narrow(2, 0, s)};
}

// Causal bias for T new positions after S - T cached ones, with sequence 1 left-padded by 2.
at::Tensor Bias(int64_t b, int64_t t, int64_t s) {
  at::Tensor bias = at::zeros({b, 1, 1, t, s});
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t ti = 0; ti < t; ++ti) {
      for (int64_t j = 0; j < s; ++j) {
        const bool future = j > s - t + ti, pad = bi == 1 && j < 2;
        if (future || pad) bias[bi][0][0][ti][j] = -std::numeric_limits<float>::infinity();
      }
    }
  }
  return bias;
}

TEST(DecodeAttentionTest, EveryFormMatchesTheFloat64Reference) {
  at::manual_seed(0);
  for (const DecodeAttentionForm form : {DecodeAttentionForm::kPortable, DecodeAttentionForm::kAvx512}) {
    if (!DecodeAttentionFormSupported(form)) continue;
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      for (const auto& [b, heads, kv, t, s, d] : std::vector<std::array<int64_t, 6>>{
               {1, 16, 4, 1, 130, 64}, {2, 8, 2, 3, 17, 64}, {1, 4, 4, 1, 1, 32}, {2, 6, 3, 2, 9, 24}}) {
        const at::Tensor q = at::randn({b, heads, t, d}).to(dtype);
        const auto [k, v] = CacheView(b, kv, s, d, dtype);
        const at::Tensor bias = Bias(b, t, s);
        const double scale = 1.0 / std::sqrt(static_cast<double>(d));
        const at::Tensor got = DecodeAttentionWith(form, q, k, v, bias, scale);
        ASSERT_EQ(got.sizes(), at::IntArrayRef({b, t, heads * d}));
        EXPECT_EQ(got.scalar_type(), dtype);
        // float32 arithmetic on the same inputs; bfloat16 adds the output's rounding (2^-9).
        const double tol = dtype == at::kFloat ? 2e-6 : 8e-3;
        EXPECT_LT(RelErr(got, Reference(q, k, v, bias, scale)), tol)
            << DecodeAttentionFormName(form) << " " << c10::toString(dtype) << " b" << b << " h" << heads << " kv"
            << kv << " t" << t << " s" << s << " d" << d;
      }
    }
  }
}

TEST(DecodeAttentionTest, TwoThreadsEqualOne) {
  at::manual_seed(1);
  const at::Tensor q = at::randn({2, 16, 1, 64});
  const auto [k, v] = CacheView(2, 4, 77, 64, at::kFloat);
  const at::Tensor bias = Bias(2, 1, 77);
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = DecodeAttention(q, k, v, bias, 0.125);
  at::set_num_threads(2);
  const at::Tensor two = DecodeAttention(q, k, v, bias, 0.125);
  at::set_num_threads(saved);
  EXPECT_TRUE(at::equal(one, two));  // each head's row is computed by one thread either way
}

TEST(DecodeAttentionTest, TakesDecodeShapesOnly) {
  const at::Tensor q = at::randn({1, 8, 1, 16});
  const auto [k, v] = CacheView(1, 2, 5, 16, at::kFloat);
  ASSERT_TRUE(DecodeLinearEnabled());
  EXPECT_TRUE(CanDecodeAttention(q, k, v));
  EXPECT_FALSE(CanDecodeAttention(at::randn({1, 8, kDecodeAttentionMaxRows + 1, 16}), k, v));  // prefill
  EXPECT_FALSE(CanDecodeAttention(q.to(at::kDouble), k, v));
  EXPECT_FALSE(CanDecodeAttention(at::randn({1, 6, 1, 16}), at::randn({1, 4, 5, 16}), at::randn({1, 4, 5, 16})));
  EXPECT_FALSE(CanDecodeAttention(q, k.transpose(2, 3), v.transpose(2, 3)));  // rows not contiguous
  SetDecodeLinearEnabled(false);  // the decode kernels' switch turns it off too
  EXPECT_FALSE(CanDecodeAttention(q, k, v));
  SetDecodeLinearEnabled(true);
  EXPECT_THROW(DecodeAttention(q, k, v, at::zeros({1, 1, 1, 1, 4}), 1.0), c10::Error);  // bias of the wrong size
}

}  // namespace
}  // namespace llama_moe
