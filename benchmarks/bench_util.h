// Helpers shared by the benchmark binaries.
//
// Example:
//   SetBenchThreads();  // before the first tensor work of the process
#ifndef LLAMA_MOE_BENCHMARKS_BENCH_UTIL_H_
#define LLAMA_MOE_BENCHMARKS_BENCH_UTIL_H_

namespace llama_moe {

// Intra-op thread count, set once per process: two threads (the machine's cores) unless
// BENCH_THREADS says otherwise, e.g. BENCH_THREADS=1 on a shared box, where a descheduled OpenMP
// thread stalls every barrier (the README's figures use 1). Call before the first tensor work;
// later calls do nothing.
void SetBenchThreads();

}  // namespace llama_moe

#endif  // LLAMA_MOE_BENCHMARKS_BENCH_UTIL_H_
