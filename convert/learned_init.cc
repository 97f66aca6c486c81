#include "convert/learned_init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace llama_moe {
namespace {

// Expert j of `num_learned` copies frozen slice j mod Nf (a fresh tensor).
at::Tensor CopySlices(const at::Tensor& frozen_f32, int64_t num_learned) {
  const at::Tensor src = at::arange(num_learned, at::kLong).remainder(frozen_f32.size(0));
  return frozen_f32.index_select(0, src);
}

// t += N(0, std^2) elementwise, t contiguous float32. Drawing normals is the converter's most
// expensive step (one generator fills ~55M floats/s: minutes for Llama 3 8B), so fixed chunks of
// 2^20 elements each get their own stream and run on the intra-op threads.
void AddGaussianNoise(at::Tensor& t, double std, uint64_t seed, int64_t layer, StreamPurpose purpose) {
  at::Tensor flat = t.view({-1});
  constexpr int64_t kChunk = int64_t{1} << 20;
  const int64_t n = flat.numel(), chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      at::Tensor part = flat.narrow(0, c * kChunk, std::min(kChunk, n - c * kChunk));
      at::Tensor z = at::empty_like(part);
      z.normal_(0.0, std, ConversionStream(seed, layer, purpose, c));
      part.add_(z);
    }
  });
}

StreamPurpose NoisePurpose(int proj) {
  const StreamPurpose purposes[3] = {StreamPurpose::kNoiseGate, StreamPurpose::kNoiseUp, StreamPurpose::kNoiseDown};
  return purposes[proj];
}

}  // namespace

at::Tensor NoisySliceInit(const at::Tensor& frozen_f32, int64_t num_learned, double noise_std, uint64_t seed,
                          int64_t layer, StreamPurpose purpose) {
  at::Tensor learned = CopySlices(frozen_f32, num_learned);
  if (noise_std > 0) AddGaussianNoise(learned, noise_std, seed, layer, purpose);
  return learned;
}

at::Tensor DropUpcyclingInit(const at::Tensor& frozen_f32, int64_t num_learned, double reinit_fraction,
                             double matrix_mean, double matrix_std, int neuron_dim, uint64_t seed, int64_t layer,
                             StreamPurpose purpose) {
  at::Tensor learned = CopySlices(frozen_f32, num_learned);
  at::Generator noise_gen = ConversionStream(seed, layer, purpose);
  at::Generator drop_gen = ConversionStream(seed, layer, StreamPurpose::kDropNeurons);
  const int64_t ie = learned.size(neuron_dim);
  const int64_t drop = static_cast<int64_t>(std::llround(reinit_fraction * ie));
  for (int64_t j = 0; j < num_learned && drop > 0; ++j) {
    at::Tensor idx = at::randperm(ie, drop_gen, at::kLong).slice(0, 0, drop);
    at::Tensor expert = learned[j];  // [Ie, H] or [H, Ie]
    const int dim = neuron_dim - 1;
    at::Tensor fresh =
        at::randn(expert.index_select(dim, idx).sizes(), noise_gen, at::kFloat) * matrix_std + matrix_mean;
    expert.index_copy_(dim, idx, fresh);
  }
  return learned;
}

at::Tensor InitLearnedExperts(const at::Tensor& frozen_f32, int64_t num_learned, const ConversionRecipe& r,
                              int proj, int64_t layer) {
  const double std = frozen_f32.std().item<double>();
  switch (r.learned_init()) {
    case ConversionRecipe::DROP_UPCYCLING: {
      const double mean = frozen_f32.mean().item<double>();
      const int neuron_dim = proj == 2 ? 2 : 1;  // down [N,H,Ie]; gate/up [N,Ie,H]
      return DropUpcyclingInit(frozen_f32, num_learned, r.reinit_fraction(), mean, std, neuron_dim, r.seed(), layer,
                               NoisePurpose(proj));
    }
    case ConversionRecipe::NOISY_SLICE:
      break;
  }
  return NoisySliceInit(frozen_f32, num_learned, r.noise_scale() * std, r.seed(), layer, NoisePurpose(proj));
}

}  // namespace llama_moe
