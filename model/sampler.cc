#include "model/sampler.h"

#include <algorithm>
#include <cmath>

namespace llama_moe {

int64_t Argmax(const float* values, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

std::vector<int64_t> TopPCandidates(const std::vector<double>& probs, double top_p) {
  const int64_t n = static_cast<int64_t>(probs.size());
  // Heap order: larger probability first, then lower id.
  auto less = [&probs](int64_t a, int64_t b) {
    return probs[a] < probs[b] || (probs[a] == probs[b] && a > b);
  };
  std::vector<int64_t> heap(n);
  for (int64_t i = 0; i < n; ++i) heap[i] = i;
  std::make_heap(heap.begin(), heap.end(), less);
  std::vector<int64_t> kept;
  double mass = 0.0;
  auto end = heap.end();
  while (end != heap.begin()) {
    std::pop_heap(heap.begin(), end, less);
    --end;
    kept.push_back(*end);
    mass += probs[*end];
    if (mass >= top_p) break;
  }
  return kept;
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {}

double Sampler::Uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int64_t Sampler::Sample(const float* logits, int64_t vocab) {
  if (options_.temperature <= 0.0) return Argmax(logits, vocab);
  const double max_logit = logits[Argmax(logits, vocab)];
  probs_.resize(vocab);
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    probs_[i] = std::exp((static_cast<double>(logits[i]) - max_logit) / options_.temperature);
    total += probs_[i];
  }
  for (double& p : probs_) p /= total;
  if (options_.top_p >= 1.0) {
    double u = Uniform();
    for (int64_t i = 0; i < vocab; ++i) {
      u -= probs_[i];
      if (u < 0.0) return i;
    }
    // Rounding left u >= 0: the draw fell in the last sliver of mass.
    for (int64_t i = vocab - 1; i > 0; --i) {
      if (probs_[i] > 0.0) return i;
    }
    return 0;
  }
  const std::vector<int64_t> kept = TopPCandidates(probs_, options_.top_p);
  double mass = 0.0;
  for (int64_t i : kept) mass += probs_[i];
  double u = Uniform() * mass;
  for (int64_t i : kept) {
    u -= probs_[i];
    if (u < 0.0) return i;
  }
  return kept.back();
}

}  // namespace llama_moe
