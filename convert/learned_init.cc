#include "convert/learned_init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "convert/normal_fill.h"

namespace llama_moe {
namespace {

// Expert j of `num_learned` copies frozen slice j mod Nf (a fresh tensor).
at::Tensor CopySlices(const at::Tensor& frozen_f32, int64_t num_learned) {
  const at::Tensor src = at::arange(num_learned, at::kLong).remainder(frozen_f32.size(0));
  return frozen_f32.index_select(0, src);
}

// Noise is drawn in fixed chunks of 2^20 elements, each from its own stream, so that the chunks
// run on the intra-op threads and the result does not depend on how many there are.
constexpr int64_t kNoiseChunk = int64_t{1} << 20;

}  // namespace

void NoisySliceInitInto(const at::Tensor& frozen_f32, double noise_std, uint64_t seed, int64_t layer,
                        StreamPurpose purpose, const at::Tensor& out) {
  TORCH_CHECK(frozen_f32.scalar_type() == at::kFloat && frozen_f32.is_contiguous(),
              "NoisySliceInitInto: the frozen stack must be contiguous float32");
  TORCH_CHECK(out.is_contiguous() && out.dim() == frozen_f32.dim() && out.dim() >= 1 &&
                  out.sizes().slice(1) == frozen_f32.sizes().slice(1),
              "NoisySliceInitInto: out ", out.sizes(), " is not a contiguous stack of slices ", frozen_f32.sizes());
  const at::Tensor src = frozen_f32.view({-1});
  const at::Tensor dst = out.view({-1});
  const int64_t period = src.numel(), n = dst.numel(), chunks = (n + kNoiseChunk - 1) / kNoiseChunk;
  if (period == 0 || n == 0) return;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor noise;  // this thread's chunk of draws, reused from chunk to chunk
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * kNoiseChunk, len = std::min(kNoiseChunk, n - start);
      at::Tensor z;
      if (noise_std > 0) {
        if (!noise.defined()) noise = at::empty({kNoiseChunk}, at::kFloat);
        z = noise.narrow(0, 0, len);
        FillNormal(z.data_ptr<float>(), len, static_cast<float>(noise_std), ConversionSeed(seed, layer, purpose, c));
      }
      // Learned expert j copies slice j mod Nf, so flat position i of the learned stack reads flat
      // position i mod (Nf * slice size) of the frozen one: a chunk is at most a few runs.
      for (int64_t done = 0; done < len;) {
        const int64_t from = (start + done) % period, take = std::min(len - done, period - from);
        const at::Tensor s = src.narrow(0, from, take);
        at::Tensor d = dst.narrow(0, start + done, take);
        if (z.defined()) {
          at::Tensor zs = z.narrow(0, done, take);
          zs.add_(s);  // slice + noise in float32, then one rounding to out's dtype
          d.copy_(zs);
        } else {
          d.copy_(s);
        }
        done += take;
      }
    }
  });
}

at::Tensor NoisySliceInit(const at::Tensor& frozen_f32, int64_t num_learned, double noise_std, uint64_t seed,
                          int64_t layer, StreamPurpose purpose) {
  std::vector<int64_t> sizes = frozen_f32.sizes().vec();
  sizes.at(0) = num_learned;
  at::Tensor learned = at::empty(sizes, at::kFloat);
  NoisySliceInitInto(frozen_f32.contiguous(), noise_std, seed, layer, purpose, learned);
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
  switch (r.learned_init()) {
    case ConversionRecipe::DROP_UPCYCLING: {
      const double std = frozen_f32.std().item<double>();
      const double mean = frozen_f32.mean().item<double>();
      const int neuron_dim = proj == 2 ? 2 : 1;  // down [N,H,Ie]; gate/up [N,Ie,H]
      return DropUpcyclingInit(frozen_f32, num_learned, r.reinit_fraction(), mean, std, neuron_dim, r.seed(), layer,
                               NoisePurpose(proj));
    }
    case ConversionRecipe::NOISY_SLICE:
      break;
  }
  return NoisySliceInit(frozen_f32, num_learned, NoisySliceStd(frozen_f32, r), r.seed(), layer, NoisePurpose(proj));
}

double NoisySliceStd(const at::Tensor& frozen_f32, const ConversionRecipe& r) {
  return r.noise_scale() * frozen_f32.std().item<double>();
}

StreamPurpose NoisePurpose(int proj) {
  const StreamPurpose purposes[3] = {StreamPurpose::kNoiseGate, StreamPurpose::kNoiseUp, StreamPurpose::kNoiseDown};
  return purposes[proj];
}

}  // namespace llama_moe
