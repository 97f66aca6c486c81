#include "model/decode_linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

const DecodeLinearForm kForms[] = {DecodeLinearForm::kPortable, DecodeLinearForm::kAvx2, DecodeLinearForm::kAvx512,
                                   DecodeLinearForm::kAvx512Bf16};

// Every supported form against a float64 reference, over row counts, output sizes that are not
// multiples of a block, and row lengths around the vector widths.
TEST(DecodeLinearTest, EveryFormMatchesAFloat64Reference) {
  at::manual_seed(3);
  int checked = 0;
  for (DecodeLinearForm form : kForms) {
    if (!DecodeLinearFormSupported(form)) continue;
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
      for (int64_t m : {1, 2, 3, 5, 8}) {
        for (int64_t n : {1, 7, 33, 130}) {
          for (int64_t k : {1, 7, 8, 15, 16, 17, 64, 1000}) {
            const at::Tensor x = at::randn({m, k}).to(dt);
            const at::Tensor w = at::randn({n, k}).to(dt);
            const at::Tensor want = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
            const at::Tensor got = DecodeLinearWith(form, x, w);
            ASSERT_EQ(got.scalar_type(), dt);
            ASSERT_EQ(got.sizes(), want.sizes());
            // float32 accumulation over k terms of size ~1; bfloat16 output rounds to 8 bits.
            const double tol = dt == at::kFloat ? 1e-5 * (1 + std::sqrt(static_cast<double>(k)))
                                                : 1.0 / 128 * (1 + want.abs().max().item<double>());
            EXPECT_LE((got.to(at::kDouble) - want).abs().max().item<double>(), tol)
                << DecodeLinearFormName(form) << " " << c10::toString(dt) << " m " << m << " n " << n << " k " << k;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GE(checked, 320);  // at least the portable form and one vector form
}

TEST(DecodeLinearTest, KeepsLeadingShapeAndSplitsAcrossThreads) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  const at::Tensor x = at::randn({1, 2, 300});
  const at::Tensor w = at::randn({4099, 300});
  const at::Tensor y = DecodeLinear(x, w);
  EXPECT_EQ(y.sizes(), (at::IntArrayRef{1, 2, 4099}));
  EXPECT_LE((y - at::linear(x, w)).abs().max().item<double>(), 1e-3);
  at::set_num_threads(threads);
}

TEST(DecodeLinearTest, TakesOnlyWhatItComputes) {
  const at::Tensor w = at::randn({16, 32});
  EXPECT_TRUE(CanDecodeLinear(at::randn({8, 32}), w));
  EXPECT_FALSE(CanDecodeLinear(at::randn({9, 32}), w));                 // a GEMM's job
  EXPECT_FALSE(CanDecodeLinear(at::randn({1, 32}).to(at::kBFloat16), w));  // mixed dtypes
  EXPECT_FALSE(CanDecodeLinear(at::randn({1, 32}), w.t().contiguous().t()));  // strided weight
  EXPECT_FALSE(CanDecodeLinear(at::randn({1, 32}).to(at::kDouble), w.to(at::kDouble)));
  const at::Tensor wg = at::randn({16, 32}).requires_grad_(true);
  EXPECT_FALSE(CanDecodeLinear(at::randn({1, 32}), wg));  // autograd records at::linear
  at::NoGradGuard no_grad;
  EXPECT_TRUE(CanDecodeLinear(at::randn({1, 32}), wg));
}

}  // namespace
}  // namespace llama_moe
