// Intra-op thread count of the benchmark binaries, set once per process.
//
// Two threads (the machine's cores) unless BENCH_THREADS says otherwise, e.g. BENCH_THREADS=1 on
// a shared box, where a descheduled OpenMP thread stalls every barrier (the README's figures use
// 1). Every benchmark calls it before its first tensor work; later calls do nothing.
#ifndef LLAMA_MOE_BENCHMARKS_BENCH_THREADS_H_
#define LLAMA_MOE_BENCHMARKS_BENCH_THREADS_H_

namespace llama_moe {

void SetBenchThreads();

}  // namespace llama_moe

#endif  // LLAMA_MOE_BENCHMARKS_BENCH_THREADS_H_
