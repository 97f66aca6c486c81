#include "moe/expert_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

std::vector<KernelIsa> SupportedIsas() {
  std::vector<KernelIsa> isas = {KernelIsa::kPortable};
  for (KernelIsa isa : {KernelIsa::kAvx2Fma, KernelIsa::kAvx512, KernelIsa::kAvx512Bf16}) {
    if (CpuSupports(isa)) isas.push_back(isa);
  }
  return isas;
}

// Whether `isa` rounds the tokens and activations of bfloat16 weights to bfloat16.
bool RoundsToBf16(KernelIsa isa, at::ScalarType dtype) {
  return isa == KernelIsa::kAvx512Bf16 && dtype == at::kBFloat16;
}

struct Case {
  at::Tensor gate, up, down;  // weights in their dtype
  at::Tensor x, y0, w;        // x [n,H], y0 [n,H] (the kernel accumulates into y), w [n]; float32
};

Case MakeCase(int64_t H, int64_t Ie, int64_t n, at::ScalarType dtype, uint64_t seed) {
  at::manual_seed(seed);
  Case c;
  c.gate = (at::randn({Ie, H}) / std::sqrt(double(H))).to(dtype);
  c.up = (at::randn({Ie, H}) / std::sqrt(double(H))).to(dtype);
  c.down = (at::randn({H, Ie}) / std::sqrt(double(Ie))).to(dtype);
  c.x = at::randn({n, H});
  c.y0 = at::randn({n, H});
  c.w = at::rand({n}) + 0.1;
  return c;
}

// The slow reference: float64 ATen on the same (possibly bfloat16) weights; with round_bf16,
// the tokens and the weighted activations rounded to bfloat16 first, as the AVX512-BF16 form
// multiplies them.
at::Tensor Reference(const Case& c, bool round_bf16 = false) {
  auto maybe_round = [&](const at::Tensor& t) { return round_bf16 ? t.to(at::kFloat).to(at::kBFloat16).to(at::kDouble) : t; };
  const at::Tensor x = maybe_round(c.x.to(at::kDouble));
  const at::Tensor g = at::mm(x, c.gate.to(at::kDouble).t()), u = at::mm(x, c.up.to(at::kDouble).t());
  const at::Tensor a = maybe_round(c.w.to(at::kDouble).unsqueeze(1) * at::silu(g) * u);
  return c.y0.to(at::kDouble) + at::mm(a, c.down.to(at::kDouble).t());
}

// Runs the kernel on the case's tokens, their rows visited in reverse order (the rows are
// addressed through pointers, as the dispatch passes scattered token rows).
at::Tensor RunKernel(const Case& c, KernelIsa isa) {
  const int64_t Ie = c.gate.size(0), H = c.gate.size(1), n = c.x.size(0);
  at::Tensor y = c.y0.clone(), scratch = at::empty({SwiGluScratchFloats(H, Ie, n)});
  const at::Tensor w = c.w.flip(0).contiguous();
  std::vector<const float*> x_rows;
  std::vector<float*> y_rows;
  for (int64_t t = n - 1; t >= 0; --t) {
    x_rows.push_back(c.x.data_ptr<float>() + t * H);
    y_rows.push_back(y.data_ptr<float>() + t * H);
  }
  if (c.gate.scalar_type() == at::kFloat) {
    SwiGluAccumulate(c.gate.data_ptr<float>(), c.up.data_ptr<float>(), c.down.data_ptr<float>(), H, Ie, n,
                     x_rows.data(), w.data_ptr<float>(), scratch.data_ptr<float>(), y_rows.data(), isa);
  } else {
    auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
    SwiGluAccumulate(bits(c.gate), bits(c.up), bits(c.down), H, Ie, n, x_rows.data(), w.data_ptr<float>(),
                     scratch.data_ptr<float>(), y_rows.data(), isa);
  }
  return y;
}

double MaxRelErr(const at::Tensor& a, const at::Tensor& ref) {
  return (a.to(at::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
}

TEST(ExpertKernelsTest, MatchesFloat64Reference) {
  // Sizes with and without vector tails (the AVX2 tiles step 8 to 64 elements) down to rows
  // shorter than one vector, odd lengths (the bfloat16 panel pairs elements) and row counts
  // that leave partial 12-row panel tiles; token counts of one to several register tiles of 4
  // with ragged last tiles, and from kPanelMinTokens the panel form's 16- and 32-token blocks
  // with padded tails (the bfloat16 form's half-width last vector: 17, 24, 40).
  for (KernelIsa isa : SupportedIsas()) {
    for (auto [H, Ie] : std::vector<std::pair<int64_t, int64_t>>{{32, 16}, {100, 37}, {7, 3}, {1024, 64}, {257, 129}}) {
      for (int64_t n : {1, 2, 3, 4, 5, 9, 16, 17, 24, 32, 40, 45, 64}) {
        for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
          const Case c = MakeCase(H, Ie, n, dtype, 1000 + H + Ie + n);
          // All arithmetic is float32, bfloat16 weights included: only float32 rounding remains.
          // The AVX512-BF16 form's roundings of tokens and activations are in the reference; an
          // activation can still land one bfloat16 step away (float32 vs float64 before rounding).
          const bool rounds = RoundsToBf16(isa, dtype);
          EXPECT_LT(MaxRelErr(RunKernel(c, isa), Reference(c, rounds)), rounds ? 1e-3 : 2e-6)
              << "isa " << int(isa) << " H " << H << " Ie " << Ie << " n " << n << " " << dtype;
        }
      }
    }
  }
}

TEST(ExpertKernelsTest, VectorFormsAgreeWithPortable) {
  // Every vector form this CPU runs (on x86-64 CI machines at least AVX2+FMA) against the plain
  // C++ form; the AVX512-BF16 form's bfloat16 roundings make it agree less closely.
  ASSERT_FALSE(SupportedIsas().empty());
  for (KernelIsa isa : SupportedIsas()) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      for (int64_t n : {1, 6, 20, 48}) {
        const Case c = MakeCase(300, 45, n, dtype, 7);
        EXPECT_LT(MaxRelErr(RunKernel(c, isa), RunKernel(c, KernelIsa::kPortable).to(at::kDouble)),
                  RoundsToBf16(isa, dtype) ? 1e-2 : 1e-6)
            << "isa " << int(isa) << " " << dtype << " n " << n;
      }
    }
  }
}

// The kernel on bfloat16 weights with the tokens passed as bfloat16 rows.
at::Tensor RunKernelBf16Tokens(const Case& c, KernelIsa isa) {
  const int64_t Ie = c.gate.size(0), H = c.gate.size(1), n = c.x.size(0);
  at::Tensor y = c.y0.clone(), scratch = at::empty({SwiGluScratchFloats(H, Ie, n)});
  const at::Tensor xb = c.x.to(at::kBFloat16).contiguous();
  auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
  const at::Tensor w = c.w.flip(0).contiguous();
  std::vector<const uint16_t*> x_rows;
  std::vector<float*> y_rows;
  for (int64_t t = n - 1; t >= 0; --t) {  // in RunKernel's order: tiles group the same tokens
    x_rows.push_back(bits(xb) + t * H);
    y_rows.push_back(y.data_ptr<float>() + t * H);
  }
  SwiGluAccumulate(bits(c.gate), bits(c.up), bits(c.down), H, Ie, n, x_rows.data(), w.data_ptr<float>(),
                   scratch.data_ptr<float>(), y_rows.data(), isa);
  return y;
}

TEST(ExpertKernelsTest, Bfloat16TokenRowsEqualFloat32Rows) {
  // A bfloat16 model's hidden states go to the kernel as they are; on bfloat16-exact values the
  // result is bit for bit that of the float32-token form, in every form (dot tiles, panel with
  // an odd H and partial blocks).
  for (KernelIsa isa : SupportedIsas()) {
    for (int64_t n : {3, 17, 45}) {
      Case c = MakeCase(301, 45, n, at::kBFloat16, 21 + n);
      c.x = c.x.to(at::kBFloat16).to(at::kFloat);
      EXPECT_TRUE(at::equal(RunKernelBf16Tokens(c, isa), RunKernel(c, isa))) << "isa " << int(isa) << " n " << n;
    }
  }
}

TEST(ExpertKernelsTest, TokenResultDoesNotDependOnItsSegmentsOtherTokens) {
  // In the panel form each token is a lane of the vectors: its result is bit for bit the same
  // when more tokens share its segment. Segments whose last 16-token vector holds 1 to 8 tokens
  // (the bfloat16 form runs that vector at half width) against the same tokens with others
  // filling the vector, and a 13-token tail; odd H and Ie pair an odd last element with zero.
  // (The dot tiles unroll by their token count, so a ragged tile sums in another order.)
  int panel_forms = 0;
  for (KernelIsa isa : SupportedIsas()) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      if (!HasPanelForm(isa, dtype == at::kBFloat16)) continue;
      ++panel_forms;
      for (int64_t n : {17, 20, 24, 29, 33, 40, 45}) {
        const int64_t full = (n + 15) / 16 * 16;
        Case more = MakeCase(301, 45, full, dtype, 90 + n);
        Case c = more;
        c.x = more.x.narrow(0, full - n, n).contiguous();  // RunKernel visits rows in reverse
        c.y0 = more.y0.narrow(0, full - n, n).contiguous();
        c.w = more.w.narrow(0, full - n, n).contiguous();
        EXPECT_TRUE(at::equal(RunKernel(c, isa), RunKernel(more, isa).narrow(0, full - n, n)))
            << "isa " << int(isa) << " " << dtype << " n " << n;
      }
    }
  }
  if (panel_forms == 0) GTEST_SKIP() << "this CPU runs no panel form (it needs AVX-512F)";
}

TEST(ExpertKernelsTest, BestIsaIsSupported) { EXPECT_TRUE(CpuSupports(BestKernelIsa())); }

TEST(ExpertKernelsTest, ResultDoesNotDependOnThreadCount) {
  // Rows are split over threads but each output element is one thread's, summed in a fixed
  // order: bitwise equal results with 1 and 2 threads (shapes large enough to be split), for
  // the dot-product tiles (3 tokens) and the panel form (40).
  const int threads = at::get_num_threads();
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t n : {3, 40}) {
      const Case c = MakeCase(2048, 512, n, dtype, 11);
      at::set_num_threads(1);
      const at::Tensor one = RunKernel(c, BestKernelIsa());
      at::set_num_threads(2);
      const at::Tensor two = RunKernel(c, BestKernelIsa());
      EXPECT_TRUE(at::equal(one, two)) << dtype << " n " << n;
    }
  }
  at::set_num_threads(threads);
}

}  // namespace
}  // namespace llama_moe
