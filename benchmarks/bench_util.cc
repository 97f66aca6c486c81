#include "benchmarks/bench_util.h"

#include <ATen/Parallel.h>

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

}  // namespace llama_moe
