// Next-token selection from logits: greedy, or temperature + nucleus (top-p) sampling with a
// seeded generator, on the host so that a seed gives the same tokens on every device and build.
//
// Sampling follows HF's order: logits / temperature, softmax, keep the smallest set of most
// probable tokens whose probability reaches top_p (at least one token), renormalise, draw.
//
// Example:
//   Sampler sampler({/*temperature=*/0.7, /*top_p=*/0.9, /*seed=*/42});
//   const std::vector<float> logits_row = {0.1f, 2.0f, -1.0f, 0.5f};
//   const int64_t next = sampler.Sample(logits_row.data(), /*vocab=*/4);
#ifndef LLAMA_MOE_MODEL_SAMPLER_H_
#define LLAMA_MOE_MODEL_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

namespace llama_moe {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (argmax), e.g. 0.7
  double top_p = 1.0;        // nucleus mass in (0, 1], e.g. 0.9
  uint64_t seed = 0;         // the same seed gives the same tokens
};

// Index of the largest value; the lowest index among ties.
int64_t Argmax(const float* values, int64_t n);

// The smallest set of most probable tokens whose total probability is >= top_p, most probable
// first (ties: lower id first). `probs` sums to 1. Uses a heap, so only the kept tokens are ordered
// (O(V + k log V) instead of a full sort of V = 128256 entries each step).
std::vector<int64_t> TopPCandidates(const std::vector<double>& probs, double top_p);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);
  // Chooses a token from `vocab` logits.
  int64_t Sample(const float* logits, int64_t vocab);

 private:
  // Uniform in [0, 1) from 53 random bits: std::uniform_real_distribution differs between
  // standard libraries, this does not.
  double Uniform();

  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<double> probs_;  // scratch, reused between steps
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_SAMPLER_H_
