// Gaussian draws for the learned experts' noise, the converter's most expensive arithmetic.
//
// FillNormal writes exactly what `at::normal_(0, std, generator seeded with `seed`)` writes into a
// contiguous float32 tensor of n >= 16 elements with LibTorch's x86 AVX2 kernel: 24-bit uniforms
// from MT19937, then Box-Muller over blocks of 16 with the Cephes polynomials of LibTorch's
// avx_mathfun.h, the last 16 redrawn when n is not a multiple of 16. Converted models keep the
// bits they had when the noise came from ATen, at about three times the speed: the twister runs
// a block of 624 states at a time in vectorisable loops instead of one call per value. CPUs
// without AVX2 and FMA, builds without LibTorch's avx_mathfun.h, and n < 16 use at::normal_ itself.
//
// Example:
//   std::vector<float> z(1 << 20);
//   FillNormal(z.data(), static_cast<int64_t>(z.size()), /*std=*/0.01f, ConversionSeed(0, 3, StreamPurpose::kNoiseUp));
#ifndef LLAMA_MOE_CONVERT_NORMAL_FILL_H_
#define LLAMA_MOE_CONVERT_NORMAL_FILL_H_

#include <cstdint>

namespace llama_moe {

void FillNormal(float* out, int64_t n, float std, uint64_t seed);

// at::normal_ with a fresh CPU generator seeded with `seed`: the reference FillNormal equals on
// AVX2 CPUs, and its path elsewhere.
void FillNormalAten(float* out, int64_t n, float std, uint64_t seed);

// Whether FillNormal runs its own kernel here (else it calls FillNormalAten).
bool FillNormalIsFast();

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_NORMAL_FILL_H_
