// Helpers shared by the benchmark binaries.
#ifndef LLAMA_MOE_BENCHMARKS_BENCH_UTIL_H_
#define LLAMA_MOE_BENCHMARKS_BENCH_UTIL_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "moe/expert_bank.h"

namespace llama_moe {

// Intra-op thread count, set once per process: two threads (the machine's cores) unless
// BENCH_THREADS says otherwise, e.g. BENCH_THREADS=1 on a shared box, where a descheduled OpenMP
// thread stalls every barrier (the README's figures use 1). Call before the first tensor work;
// later calls do nothing.
void SetBenchThreads();

// N(0, 1/fan_in) weights (fan_in = the last dimension), drawn in float32, stored in `dtype`.
at::Tensor RandomWeight(std::vector<int64_t> shape, at::ScalarType dtype, at::Generator& gen);

// An expert bank of `frozen` + `learned` experts of width `ie` on hidden size `h`.
ExpertBank RandomExpertBank(int64_t frozen, int64_t learned, int64_t ie, int64_t h, at::ScalarType dtype,
                              at::Generator& gen);

}  // namespace llama_moe

#endif  // LLAMA_MOE_BENCHMARKS_BENCH_UTIL_H_
