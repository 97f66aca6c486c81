// bfloat16 bits and float32, as the hand-written CPU kernels (model/decode_linear.h, the MoE
// expert kernels) read and write them: bfloat16 is the top half of a float32.
//
// Example:
//   const uint16_t bits = RoundToBf16(1.5f);
//   const float back = Bf16ToFloat(bits);  // 1.5f
#ifndef LLAMA_MOE_MODEL_BFLOAT16_H_
#define LLAMA_MOE_MODEL_BFLOAT16_H_

#include <cstdint>
#include <cstring>

namespace llama_moe {

inline float Bf16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// An element of a float32 or bfloat16 tensor as float32, for kernels written once for both.
inline float AsFloat(float v) { return v; }
inline float AsFloat(uint16_t bits) { return Bf16ToFloat(bits); }

// Round to nearest even, as ATen's float32 -> bfloat16 conversion; NaN stays NaN.
inline uint16_t RoundToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// A float32 value stored as an element of a float32 or bfloat16 tensor (bfloat16: rounded).
inline void StoreAs(float v, float* dst) { *dst = v; }
inline void StoreAs(float v, uint16_t* dst) { *dst = RoundToBf16(v); }

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_BFLOAT16_H_
