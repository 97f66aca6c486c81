#include "convert/normal_fill.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdint>

#include "model/x86_intrinsics.h"

#if defined(LLAMA_MOE_X86_INTRINSICS) && defined(__GNUC__) && !defined(__clang__) && \
    __has_include(<ATen/native/cpu/avx_mathfun.h>)
#include <ATen/native/cpu/Intrinsics.h>
// LibTorch's AVX2 log and sincos, compiled here as ATen compiles them: AVX2 and FMA enabled, and
// multiply-adds contracted into FMAs, which GCC does only with contraction on (its default
// outside ISO mode, which LibTorch builds in) and at -O2 or above, so also in a sanitizer or
// debug build. The anonymous namespace keeps these inline definitions from merging with any
// other copy.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("O2", "fp-contract=fast")
#define CPU_CAPABILITY_AVX2
namespace llama_moe {
namespace {
#include <ATen/native/cpu/avx_mathfun.h>
}  // namespace
}  // namespace llama_moe

// The header's functions exist only where it still guards them with the macro defined above.
#ifdef _PS256_CONST
#define LLAMA_MOE_FAST_NORMAL 1
namespace llama_moe {
namespace {

// Box-Muller on blocks of 16 uniforms: the first 8 give the radii, the next 8 the angles.
void BoxMuller16Avx2(float* data, int64_t n, float std) {
  const __m256 two_pi = _mm256_set1_ps(static_cast<float>(2.0 * 3.14159265358979323846));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 minus_two = _mm256_set1_ps(-2.0f);
  const __m256 mean = _mm256_setzero_ps();
  const __m256 scale = _mm256_set1_ps(std);
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    const __m256 u1 = _mm256_sub_ps(one, _mm256_loadu_ps(data + i));  // (0, 1] for the log
    const __m256 u2 = _mm256_loadu_ps(data + i + 8);
    const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(minus_two, log256_ps(u1)));
    const __m256 theta = _mm256_mul_ps(two_pi, u2);
    __m256 sin_theta, cos_theta;
    sincos256_ps(theta, &sin_theta, &cos_theta);
    _mm256_storeu_ps(data + i, _mm256_fmadd_ps(_mm256_mul_ps(radius, cos_theta), scale, mean));
    _mm256_storeu_ps(data + i + 8, _mm256_fmadd_ps(_mm256_mul_ps(radius, sin_theta), scale, mean));
  }
}

}  // namespace
}  // namespace llama_moe
#endif
#undef CPU_CAPABILITY_AVX2
#pragma GCC pop_options
#endif

namespace llama_moe {
namespace {

// MT19937 (the engine of LibTorch's CPU generator), seeded the same way, producing 624 outputs
// per twist.
class Mt19937Block {
 public:
  static constexpr int kN = 624;
  explicit Mt19937Block(uint64_t seed) {
    s_[0] = static_cast<uint32_t>(seed);
    for (int i = 1; i < kN; ++i) s_[i] = 1812433253u * (s_[i - 1] ^ (s_[i - 1] >> 30)) + static_cast<uint32_t>(i);
  }
  // The next kN outputs, tempered.
  void Next(uint32_t* out) {
    Twist();
    for (int i = 0; i < kN; ++i) {
      uint32_t y = s_[i];
      y ^= y >> 11;
      y ^= (y << 7) & 0x9d2c5680u;
      y ^= (y << 15) & 0xefc60000u;
      y ^= y >> 18;
      out[i] = y;
    }
  }

 private:
  static uint32_t Mix(uint32_t a, uint32_t b, uint32_t m) {
    const uint32_t y = (a & 0x80000000u) | (b & 0x7fffffffu);
    return m ^ (y >> 1) ^ ((0u - (y & 1u)) & 0x9908b0dfu);
  }
  // Three loops so that each reads only words the algorithm has (or has not yet) replaced.
  void Twist() {
    constexpr int kM = 397;
    int i = 0;
    for (; i < kN - kM; ++i) s_[i] = Mix(s_[i], s_[i + 1], s_[i + kM]);
    for (; i < kN - 1; ++i) s_[i] = Mix(s_[i], s_[i + 1], s_[i + kM - kN]);
    s_[kN - 1] = Mix(s_[kN - 1], s_[0], s_[kM - 1]);
  }

  uint32_t s_[kN];
};

// Uniforms in [0, 1) as at::uniform_real_distribution<float> makes them: 24 random bits.
class Uniforms {
 public:
  explicit Uniforms(uint64_t seed) : mt_(seed) {}
  void Fill(float* out, int64_t n) {
    while (n > 0) {
      if (pos_ == Mt19937Block::kN) {
        mt_.Next(words_);
        pos_ = 0;
      }
      const int64_t take = std::min<int64_t>(n, Mt19937Block::kN - pos_);
      for (int64_t k = 0; k < take; ++k) {
        out[k] = static_cast<float>(words_[pos_ + k] & 0xFFFFFFu) * (1.0f / 16777216.0f);
      }
      out += take;
      n -= take;
      pos_ += static_cast<int>(take);
    }
  }

 private:
  Mt19937Block mt_;
  uint32_t words_[Mt19937Block::kN];
  int pos_ = Mt19937Block::kN;
};

}  // namespace

bool FillNormalIsFast() {
#ifdef LLAMA_MOE_FAST_NORMAL
  static const bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return fast;
#else
  return false;
#endif
}

void FillNormalAten(float* out, int64_t n, float std, uint64_t seed) {
  at::from_blob(out, {n}, at::kFloat).normal_(0.0, std, at::make_generator<at::CPUGeneratorImpl>(seed));
}

void FillNormal(float* out, int64_t n, float std, uint64_t seed) {
#ifdef LLAMA_MOE_FAST_NORMAL
  if (n >= 16 && FillNormalIsFast()) {
    // Uniforms and transform a tile at a time while the tile is in cache; the blocks of 16 and
    // the order of the draws are ATen's.
    constexpr int64_t kTile = 4096;
    Uniforms u(seed);
    const int64_t whole = n / 16 * 16;
    for (int64_t i = 0; i < whole; i += kTile) {
      const int64_t len = std::min(kTile, whole - i);
      u.Fill(out + i, len);
      BoxMuller16Avx2(out + i, len, std);
    }
    if (whole != n) {
      u.Fill(out + whole, n - whole);  // drawn, then replaced: the stream moves on as ATen's does
      u.Fill(out + n - 16, 16);
      BoxMuller16Avx2(out + n - 16, 16, std);
    }
    return;
  }
#endif
  FillNormalAten(out, n, std, seed);
}

}  // namespace llama_moe
