// RMSNorm of a decode step's few rows on the CPU in one pass, with the arithmetic of
// RmsNorm::forward (model/llama_model.h): the mean of squares in float32, x * rsqrt(mean + eps)
// rounded to the compute dtype, times the weight, rounded again. ATen's form is seven calls
// (two dtype conversions, pow, mean, add, rsqrt, two multiplies) with their allocations, each
// costing more than the arithmetic on one row; a decode step runs two per layer. It follows the
// decode kernels' switch (SetDecodeLinearEnabled, LLAMA_MOE_DECODE_LINEAR=0).
//
// Example:
//   const at::Tensor x = at::randn({1, 1, 64}), w = at::ones({64});
//   if (CanDecodeRmsNorm(x, w)) {
//     at::Tensor y = DecodeRmsNorm(x, w, 1e-5);  // [1, 1, 64]
//   }
#ifndef LLAMA_MOE_MODEL_DECODE_NORM_H_
#define LLAMA_MOE_MODEL_DECODE_NORM_H_

#include <ATen/core/Tensor.h>

namespace llama_moe {

// CPU, x [..., H] with at most kDecodeLinearMaxRows rows, w [H] contiguous, both float32 or both
// bfloat16, no gradient to record, and the decode kernels on.
bool CanDecodeRmsNorm(const at::Tensor& x, const at::Tensor& w);

// x [..., H] -> the same shape and dtype.
at::Tensor DecodeRmsNorm(const at::Tensor& x, const at::Tensor& w, double eps);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_DECODE_NORM_H_
