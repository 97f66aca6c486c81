#include "benchmarks/bench_util.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>

namespace llama_moe {

void SetBenchThreads() {
  static const bool done = [] {
    const char* threads = std::getenv("BENCH_THREADS");
    at::set_num_threads(threads != nullptr ? std::atoi(threads) : 2);
    return true;
  }();
  (void)done;
}

at::Tensor RandomWeight(std::vector<int64_t> shape, at::ScalarType dtype, at::Generator& gen) {
  const double fan_in = double(shape.back());
  return (at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) / std::sqrt(fan_in)).to(dtype);
}

ExpertBank RandomExpertBank(int64_t frozen, int64_t learned, int64_t ie, int64_t h, at::ScalarType dtype,
                              at::Generator& gen) {
  ExpertBank s;
  s.frozen_gate = RandomWeight({frozen, ie, h}, dtype, gen);
  s.frozen_up = RandomWeight({frozen, ie, h}, dtype, gen);
  s.frozen_down = RandomWeight({frozen, h, ie}, dtype, gen);
  s.learned_gate = RandomWeight({learned, ie, h}, dtype, gen);
  s.learned_up = RandomWeight({learned, ie, h}, dtype, gen);
  s.learned_down = RandomWeight({learned, h, ie}, dtype, gen);
  return s;
}

}  // namespace llama_moe
