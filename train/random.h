// Seeded, platform-independent randomness for the data pipeline.
//
// The held-out split and the per-epoch sequence order must be identical on every machine and
// standard library, because a resumed or multi-process run recomputes them instead of storing them.
// std::shuffle and std::uniform_int_distribution are implementation-defined, so the pipeline uses
// SplitMix64 (Steele et al., 2014) and Lemire's multiply-shift bounded draw, written out here.
//
// Example:
//   SplitMix64 rng(MixSeed(/*seed=*/0, /*stream=*/3));  // e.g. the order of epoch 3
//   const uint64_t i = rng.Below(1000);                 // uniform in [0, 1000)
//   const double u = ToUnitInterval(Mix64(i));          // uniform in [0, 1)
#ifndef LLAMA_MOE_TRAIN_RANDOM_H_
#define LLAMA_MOE_TRAIN_RANDOM_H_

#include <cstdint>

namespace llama_moe {

// SplitMix64's finalizer: a bijective 64-bit mix in which every input bit affects every output bit.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A seed for stream `stream` (an epoch, a document index) of a run seeded with `seed`. Mixing twice
// keeps (seed, stream) and (seed + 1, stream - 1) apart.
inline uint64_t MixSeed(uint64_t seed, uint64_t stream) { return Mix64(Mix64(seed) ^ stream); }

// The top 53 bits as a double in [0, 1).
inline double ToUnitInterval(uint64_t x) { return static_cast<double>(x >> 11) * 0x1.0p-53; }

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    const uint64_t out = Mix64(state_);
    state_ += 0x9e3779b97f4a7c15ULL;
    return out;
  }
  // Uniform in [0, n) for n > 0, without modulo bias (Lemire 2019, "Fast random integer generation
  // in an interval").
  uint64_t Below(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(Next()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(Next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

 private:
  uint64_t state_;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_RANDOM_H_
