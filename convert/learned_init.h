// Learned-expert initialisation: how the trainable experts start from the frozen slices.
//
// Learned expert j starts as a copy of frozen slice j mod Nf, then the recipe's strategy
// perturbs it. One function per strategy, each for one projection's stack in float32;
// InitLearnedExperts picks the recipe's. Every draw comes from a stream of (seed, layer,
// projection) (convert/random_streams.h), so the result does not depend on the order or the
// thread count. ARCHITECTURE.md says how to add one.
//
// Example:
//   const at::Tensor frozen = at::randn({2, 4, 8});  // one projection's frozen stack [Nf,Ie,H]
//   at::Tensor learned = NoisySliceInit(frozen, /*num_learned=*/2, /*noise_std=*/0.01, /*seed=*/0,
//                                       /*layer=*/0, StreamPurpose::kNoiseGate);
#ifndef LLAMA_MOE_CONVERT_LEARNED_INIT_H_
#define LLAMA_MOE_CONVERT_LEARNED_INIT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "convert/random_streams.h"
#include "convert/recipe.pb.h"

namespace llama_moe {

// The slices plus N(0, noise_std^2) noise (none for noise_std 0: exact copies). The noise is
// drawn in fixed chunks, each from its own stream, on the intra-op threads.
at::Tensor NoisySliceInit(const at::Tensor& frozen_f32, int64_t num_learned, double noise_std, uint64_t seed,
                          int64_t layer, StreamPurpose purpose);

// NoisySliceInit(frozen_f32, out.size(0), ...) rounded to out's dtype, written into `out` (a
// contiguous [num_learned, ...] stack of any floating dtype, e.g. a reused buffer) without a
// float32 learned stack: each chunk of noise is added to its slice and rounded in one pass.
// `frozen_f32` must be contiguous.
void NoisySliceInitInto(const at::Tensor& frozen_f32, double noise_std, uint64_t seed, int64_t layer,
                        StreamPurpose purpose, const at::Tensor& out);

// Drop-Upcycling: a fraction of each expert's neurons (index `neuron_dim` of the stack: 1 for
// gate/up [N,Ie,H], 2 for down [N,H,Ie]) is re-drawn from N(mean, std^2) of the dense matrix;
// the rest is the exact slice.
at::Tensor DropUpcyclingInit(const at::Tensor& frozen_f32, int64_t num_learned, double reinit_fraction,
                             double matrix_mean, double matrix_std, int neuron_dim, uint64_t seed, int64_t layer,
                             StreamPurpose purpose);

// NOISY_SLICE's noise std for one projection: the recipe's noise_scale times the standard
// deviation of the frozen stack (exactly that of the dense matrix). ATen's reduction order follows
// the memory layout, so the stack's float32 copy must keep the stack's strides for the same bits.
double NoisySliceStd(const at::Tensor& frozen_f32, const ConversionRecipe& recipe);

// The stream purpose of projection `proj`'s noise (indexes kFfnProjections: gate, up, down).
StreamPurpose NoisePurpose(int proj);

// The recipe's strategy for one projection: `proj` indexes kFfnProjections (gate, up, down).
// Statistics are those of the whole dense matrix (the frozen stack holds exactly its values).
at::Tensor InitLearnedExperts(const at::Tensor& frozen_f32, int64_t num_learned, const ConversionRecipe& recipe,
                              int proj, int64_t layer);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_LEARNED_INIT_H_
