#include "moe/expert_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace llama_moe {
namespace {

std::vector<KernelIsa> SupportedIsas() {
  std::vector<KernelIsa> isas = {KernelIsa::kPortable};
  if (CpuSupports(KernelIsa::kAvx2Fma)) isas.push_back(KernelIsa::kAvx2Fma);
  return isas;
}

struct Case {
  at::Tensor gate, up, down, x, y0;  // weights in their dtype; x, y0 float32
  float w = 0.7f;
};

Case MakeCase(int64_t H, int64_t Ie, at::ScalarType dtype, uint64_t seed) {
  at::manual_seed(seed);
  Case c;
  c.gate = (at::randn({Ie, H}) / std::sqrt(double(H))).to(dtype);
  c.up = (at::randn({Ie, H}) / std::sqrt(double(H))).to(dtype);
  c.down = (at::randn({H, Ie}) / std::sqrt(double(Ie))).to(dtype);
  c.x = at::randn({H});
  c.y0 = at::randn({H});  // the kernel accumulates into y
  return c;
}

// The slow reference: float64 ATen on the same (possibly bfloat16-rounded) weights.
at::Tensor Reference(const Case& c) {
  const at::Tensor x = c.x.to(at::kDouble);
  const at::Tensor g = at::mv(c.gate.to(at::kDouble), x), u = at::mv(c.up.to(at::kDouble), x);
  return c.y0.to(at::kDouble) + c.w * at::mv(c.down.to(at::kDouble), at::silu(g) * u);
}

at::Tensor RunKernel(const Case& c, KernelIsa isa) {
  const int64_t Ie = c.gate.size(0), H = c.gate.size(1);
  at::Tensor y = c.y0.clone(), scratch = at::empty({2 * Ie});
  if (c.gate.scalar_type() == at::kFloat) {
    OneTokenSwiGluAccumulate(c.gate.data_ptr<float>(), c.up.data_ptr<float>(), c.down.data_ptr<float>(), H, Ie,
                             c.x.data_ptr<float>(), c.w, scratch.data_ptr<float>(), y.data_ptr<float>(), isa);
  } else {
    auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
    OneTokenSwiGluAccumulate(bits(c.gate), bits(c.up), bits(c.down), H, Ie, c.x.data_ptr<float>(), c.w,
                             scratch.data_ptr<float>(), y.data_ptr<float>(), isa);
  }
  return y;
}

double MaxRelErr(const at::Tensor& a, const at::Tensor& ref) {
  return (a.to(at::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
}

TEST(ExpertKernelsTest, OneTokenMatchesFloat64Reference) {
  // Sizes with and without vector tails (the AVX2 form steps 32, 16 and 8 elements), down to
  // rows shorter than one vector.
  for (KernelIsa isa : SupportedIsas()) {
    for (auto [H, Ie] : std::vector<std::pair<int64_t, int64_t>>{{32, 16}, {100, 37}, {7, 3}, {1024, 64}, {257, 129}}) {
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        const Case c = MakeCase(H, Ie, dtype, 1000 + H + Ie);
        // All arithmetic is float32, bfloat16 weights included: only float32 rounding remains.
        EXPECT_LT(MaxRelErr(RunKernel(c, isa), Reference(c)), 2e-6)
            << "isa " << int(isa) << " H " << H << " Ie " << Ie << " " << dtype;
      }
    }
  }
}

TEST(ExpertKernelsTest, PortableAndAvx2Agree) {
  if (!CpuSupports(KernelIsa::kAvx2Fma)) GTEST_SKIP() << "this CPU has no AVX2+FMA";
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const Case c = MakeCase(300, 45, dtype, 7);
    EXPECT_LT(MaxRelErr(RunKernel(c, KernelIsa::kPortable), RunKernel(c, KernelIsa::kAvx2Fma).to(at::kDouble)), 1e-6) << dtype;
  }
}

TEST(ExpertKernelsTest, BestIsaIsSupported) { EXPECT_TRUE(CpuSupports(BestKernelIsa())); }

TEST(ExpertKernelsTest, ResultDoesNotDependOnThreadCount) {
  // Rows are split over threads but each row's dot product is one thread's, in a fixed order:
  // bitwise equal results with 1 and 2 threads (shapes large enough to be split).
  const int threads = at::get_num_threads();
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const Case c = MakeCase(2048, 512, dtype, 11);
    at::set_num_threads(1);
    const at::Tensor one = RunKernel(c, BestKernelIsa());
    at::set_num_threads(2);
    const at::Tensor two = RunKernel(c, BestKernelIsa());
    EXPECT_TRUE(at::equal(one, two)) << dtype;
  }
  at::set_num_threads(threads);
}

}  // namespace
}  // namespace llama_moe
