// y = x · Wᵀ for the few rows of x a decode step has (1 to kDecodeLinearMaxRows), reading each
// weight row once for all of them. ATen's CPU linear at one row runs at a quarter to a third of
// the machine's read bandwidth (measured: 9.5 of ~38 GB/s in float32 on the AMD EPYC), and a
// decode step is nothing but such products; this kernel streams the weights at close to the read
// bandwidth and splits the output rows across the intra-op threads.
//
// Forms: portable C++, AVX2+FMA and AVX-512F (float32 and bfloat16 weights; bfloat16 widened to
// float32 in registers), and AVX512-BF16 (bfloat16 pairs multiplied exactly by VDPBF16PS); all
// accumulate in float32. The best form the CPU runs is
// picked per call; a test runs every form the CPU supports against a float64 reference. To add
// a form: a value of DecodeLinearForm, its kernel beside the others in decode_linear.cc, its CPU
// check in DecodeLinearFormSupported, its case in DecodeLinearWith, and its name in the test's list.
//
// Example:
//   const at::Tensor x = at::randn({1, 64});
//   const at::Tensor w = at::randn({32, 64});
//   if (CanDecodeLinear(x, w)) {
//     at::Tensor y = DecodeLinear(x, w);  // [1, 32], equal to at::linear(x, w) up to rounding
//   }
#ifndef LLAMA_MOE_MODEL_DECODE_LINEAR_H_
#define LLAMA_MOE_MODEL_DECODE_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llama_moe {

// Rows of x beyond which a GEMM library wins (each weight load then feeds enough FMAs).
inline constexpr int64_t kDecodeLinearMaxRows = 8;

enum class DecodeLinearForm {
  kPortable,
  kAvx2,        // AVX2+FMA
  kAvx512,      // AVX-512F
  kAvx512Bf16,  // bfloat16 weights through VDPBF16PS (AVX512-BF16); float32 as kAvx512
};
const char* DecodeLinearFormName(DecodeLinearForm form);
bool DecodeLinearFormSupported(DecodeLinearForm form);

// On by default; off (ATen's linear everywhere) for ablations and the tests that compare the two.
// The environment variable LLAMA_MOE_DECODE_LINEAR=0 turns it off for a whole process. The decode
// attention (model/decode_attention.h) follows the same switch.
void SetDecodeLinearEnabled(bool enabled);
bool DecodeLinearEnabled();

// Whether DecodeLinear takes these operands (and it is enabled): CPU, x [..., K] with at most kDecodeLinearMaxRows
// rows, W [N, K] contiguous, both float32 or both bfloat16, and no gradient to record.
bool CanDecodeLinear(const at::Tensor& x, const at::Tensor& w);

// x [..., K], W [N, K] -> [..., N] in x's dtype, with the best form the CPU supports.
at::Tensor DecodeLinear(const at::Tensor& x, const at::Tensor& w);

// x W^T as the model's linear layers compute it: DecodeLinear where CanDecodeLinear, else
// at::linear. Paths that must equal the dense model bit for bit (identity routing and its LoRA
// form) compute their products with it.
at::Tensor ModelLinear(const at::Tensor& x, const at::Tensor& w);
// The same with a given form (tests and benchmarks); the form must be supported.
at::Tensor DecodeLinearWith(DecodeLinearForm form, const at::Tensor& x, const at::Tensor& w);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_DECODE_LINEAR_H_
