#include "convert/normal_fill.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "convert/random_streams.h"

namespace llama_moe {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// Equal bit for bit to at::normal_, for lengths around the block of 16, the twister's 624 and the
// converter's chunk of 2^20, for several seeds and scales.
TEST(FillNormalTest, EqualsAtenNormal) {
  for (int64_t n : std::vector<int64_t>{16, 17, 31, 32, 623, 624, 625, 4096 + 15, 3 * 624 * 16 + 7, 1 << 20}) {
    for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{0x9E3779B97F4A7C15ull},
                          ConversionSeed(0, 31, StreamPurpose::kNoiseDown, 5)}) {
      for (float std : {1.0f, 0.0037f}) {
        std::vector<float> ours(n), aten(n);
        FillNormal(ours.data(), n, std, seed);
        FillNormalAten(aten.data(), n, std, seed);
        int64_t differ = 0;
        for (int64_t i = 0; i < n; ++i) differ += Bits(ours[i]) != Bits(aten[i]);
        ASSERT_EQ(differ, 0) << "n " << n << " seed " << seed << " std " << std;
      }
    }
  }
}

// The draws of one converter stream, pinned: a change of LibTorch, compiler or CPU that moves
// them changes every converted model, and this says so.
TEST(FillNormalTest, PinnedStream) {
  std::vector<float> z(1000);
  FillNormal(z.data(), static_cast<int64_t>(z.size()), 1.0f, ConversionSeed(0, 0, StreamPurpose::kNoiseGate, 0));
  const uint32_t first[4] = {Bits(z[0]), Bits(z[1]), Bits(z[8]), Bits(z[999])};
  const uint32_t expected[4] = {0xbf9bc76bu, 0x3f2423bdu, 0xbe968e88u, 0xbf8dccbbu};  // -1.21702 0.64117 -0.294056 -1.10781
  for (int i = 0; i < 4; ++i) EXPECT_EQ(first[i], expected[i]) << i;
  double sum = 0, sum_sq = 0;
  for (float v : z) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
  }
  EXPECT_NEAR(sum / 1000, 0.0, 0.1);  // 1000 standard normals: mean within ~3 standard errors
  EXPECT_NEAR(std::sqrt(sum_sq / 1000), 1.0, 0.07);
}

TEST(FillNormalTest, FastOnThisMachine) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_TRUE(FillNormalIsFast());
  }
#endif
  std::vector<float> z(15);  // below a block: ATen's own path
  FillNormal(z.data(), 15, 1.0f, 3);
  std::vector<float> a(15);
  FillNormalAten(a.data(), 15, 1.0f, 3);
  EXPECT_EQ(std::memcmp(z.data(), a.data(), sizeof(float) * 15), 0);
}

}  // namespace
}  // namespace llama_moe
