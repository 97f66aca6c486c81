// Attention for the few query positions of a decode step, on the CPU, in one call: scores,
// mask, softmax and the weighted sum of values for every query head, reading its kv head's rows
// of the cache in place (grouped-query heads share them; no copy, no repeat). ATen's form of the
// same (two batched matmuls with float32 scores, a softmax and the copies and dtype conversions
// between them: about ten calls per layer) costs more than the attention's arithmetic at decode
// sizes, and a tenth of a bfloat16 decode step on the AMD EPYC.
//
// Arithmetic: float32 throughout (query rounded from the compute dtype once, keys and values
// widened in registers), softmax with the row's maximum subtracted, output rounded once to the
// compute dtype. Forms: portable C++ and AVX-512F; the best the CPU runs is picked per call and a
// test runs every form against a float64 reference. It follows the decode kernels' switch
// (SetDecodeLinearEnabled, LLAMA_MOE_DECODE_LINEAR=0), so ablations and the tests that compare
// with ATen turn both off together.
//
// Example:
//   const at::Tensor q = at::randn({1, 8, 1, 16}), k = at::randn({1, 2, 5, 16}), v = at::randn({1, 2, 5, 16});
//   const at::Tensor bias = at::zeros({1, 1, 1, 1, 5});
//   if (CanDecodeAttention(q, k, v)) {
//     at::Tensor out = DecodeAttention(q, k, v, bias, 0.25);  // [1, 1, 8 * 16]
//   }
#ifndef LLAMA_MOE_MODEL_DECODE_ATTENTION_H_
#define LLAMA_MOE_MODEL_DECODE_ATTENTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llama_moe {

// Query positions beyond which ATen's batched matmuls win.
inline constexpr int64_t kDecodeAttentionMaxRows = 8;

enum class DecodeAttentionForm { kPortable, kAvx512 };
const char* DecodeAttentionFormName(DecodeAttentionForm form);
bool DecodeAttentionFormSupported(DecodeAttentionForm form);

// Whether DecodeAttention takes these operands (and the decode kernels are on): CPU, q
// [B,heads,T,D] with T <= kDecodeAttentionMaxRows, k and v [B,kv,S,D] with contiguous rows
// (the KV cache's view), heads a multiple of kv, all float32 or all bfloat16, no gradient.
bool CanDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// softmax(q kᵀ * scale + bias) v with query head h reading kv head h / (heads / kv);
// bias [B,1,1,T,S] float32, additive (-inf: masked) -> [B,T,heads*D] in q's dtype.
at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                           double scale);
// The same with a given form (tests); the form must be supported.
at::Tensor DecodeAttentionWith(DecodeAttentionForm form, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& bias, double scale);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_DECODE_ATTENTION_H_
