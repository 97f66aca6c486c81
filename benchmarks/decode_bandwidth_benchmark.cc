// How close a decode step's routed expert computation (SparseMoeForward) comes to the machine's
// memory bandwidth, with a copy baseline and a dense FFN baseline measured in the same binary.
//
// At decode sizes (T = 1..8 tokens) an MoE layer does a few FLOPs per weight byte, so its speed
// is bounded by how fast it can stream the chosen experts' weights from memory: the number to
// watch is the fraction of the copy bandwidth it reaches, not FLOP/s. Shape: one Llama 3 8B FFN
// (H 4096, I 14336) split into 16 experts of Ie 1792 (8 frozen + 8 learned, the default recipe),
// top-K in {2, 8} (8 is the default), float32 and bfloat16 stacks (1.41 GB and 0.70 GB per
// layer, each built once and cached). Routing is uniform random top-K (K distinct experts per
// token, fixed seed), run under c10::InferenceMode.
//
// Benchmarks:
//   BM_Copy                   at::Tensor::copy_ of a 512 MiB buffer (far above the 33 MiB L3) into
//                             another; bytes_per_second counts the bytes *read* (512 MiB per copy;
//                             the copy also writes as many), because a decode step reads weights.
//                             read_plus_write_per_second is both directions.
//   BM_Read                   at::sum of the same buffer: pure read bandwidth, for reference. A
//                             copy also writes (and first reads each destination line it writes),
//                             so a pure read can reach up to about twice the copy's read rate and
//                             bw_fraction can exceed 1; read_fraction cannot, much.
//   BM_Decode/sparse/T/K/bf16 SparseMoeForward on T tokens.
//   BM_Decode/dense/T/K/bf16  a dense SwiGLU FFN of the same *active* width K*Ie on the same T
//                             tokens: the plain-GEMM speed a sparse layer should approach.
// Counters of BM_Decode:
//   active_experts    distinct experts the T tokens chose (dense: K)
//   weight_bytes      active_experts x bytes of one expert (gate, up and down: 3*H*Ie*elem);
//                     every one of them must be read once per call
//   bytes_per_second  weight_bytes per wall-clock second (the console prints it in GiB/s, the
//                     JSON in bytes/s; the *_GBps counters are 10^9 bytes/s)
//   bw_fraction       bytes_per_second / the copy's read bandwidth (copy_GBps, measured once per
//                     process before the first decode benchmark: median of 5 copies of the same
//                     buffers as BM_Copy)
//   read_fraction     the same over the BM_Read bandwidth (read_GBps, measured the same way)
//   items_per_second  tokens/s
//
// BENCH_THREADS sets the intra-op threads (default 2, the machine's cores); copies and decode use
// the same number. A call takes 25-700 ms; with MinTime 1 s per decode benchmark the whole binary
// takes about 1.5 minutes on 2 cores. The per-benchmark MinTime wins over --benchmark_min_time;
// shorten a run with --benchmark_filter instead (e.g. 'Copy|T:1/').
//
//   source tools/env.sh && bazel run //benchmarks:decode_bandwidth_benchmark
//   (benchmarks/run_all.sh writes JSON; benchmarks/summarize.py prints the table.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "benchmarks/bench_util.h"
#include "moe/dispatch.h"
#include "moe/random_expert_bank.h"

namespace llama_moe {
namespace {

constexpr int64_t kH = 4096;          // hidden size H (Llama 3 8B)
constexpr int64_t kIe = 1792;         // expert intermediate size Ie = 14336 / 8
constexpr int64_t kFrozen = 8;        // frozen experts Nf
constexpr int64_t kLearned = 8;       // learned experts Nl
constexpr int64_t kE = kFrozen + kLearned;
constexpr int64_t kCopyBytes = int64_t{512} << 20;  // 16x the L3 cache
constexpr int kReferenceRuns = 5;

enum Method { kSparse, kDense };


int64_t ElementBytes(int bf16) { return bf16 ? 2 : 4; }
int64_t ExpertBytes(int bf16) { return 3 * kH * kIe * ElementBytes(bf16); }

// Source and destination of the copy baselines, allocated and touched once.
struct CopyBuffers {
  at::Tensor src, dst;
};
const CopyBuffers& Buffers() {
  static const CopyBuffers b = [] {
    SetBenchThreads();
    CopyBuffers c;
    const int64_t n = kCopyBytes / 4;
    c.src = at::rand({n}, at::make_generator<at::CPUGeneratorImpl>(1), at::TensorOptions().dtype(at::kFloat));
    c.dst = at::empty({n}, at::kFloat);
    c.dst.copy_(c.src);  // fault the pages in
    return c;
  }();
  return b;
}

void CopyOnce() {
  const CopyBuffers& b = Buffers();
  b.dst.copy_(b.src);  // in-place methods are const on at::Tensor handles
}

double ReadOnce() {
  return at::sum(Buffers().src).item<double>();
}

// Bytes read per second by `f` (which reads kCopyBytes): median of kReferenceRuns timed calls.
template <typename F>
double MedianReadBandwidth(F&& f) {
  c10::InferenceMode no_autograd;
  f();  // warm-up
  std::vector<double> rates;
  for (int i = 0; i < kReferenceRuns; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rates.push_back(double(kCopyBytes) / s);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// The reference bandwidths for the fractions, measured once per process.
double CopyReadBandwidth() {
  static const double bw = MedianReadBandwidth([] { CopyOnce(); });
  return bw;
}
double ReadBandwidth() {
  static const double bw = MedianReadBandwidth([] { benchmark::DoNotOptimize(ReadOnce()); });
  return bw;
}


// One expert bank per dtype, built once: 8 frozen and 8 learned experts.
const ExpertBank& Bank(int bf16) {
  static std::map<int, ExpertBank> cache;
  auto it = cache.find(bf16);
  if (it != cache.end()) return it->second;
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(100 + bf16);
  return cache.emplace(bf16, RandomExpertBank(kFrozen, kLearned, kIe, kH, dtype, gen)).first->second;
}

// The dense baseline's weights per (K, dtype), built once: gate/up [K*Ie,H], down [H,K*Ie].
struct DenseFfn {
  at::Tensor gate, up, down;
};
const DenseFfn& Dense(int64_t K, int bf16) {
  static std::map<std::pair<int64_t, int>, DenseFfn> cache;
  auto it = cache.find({K, bf16});
  if (it != cache.end()) return it->second;
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(200 + 2 * K + bf16);
  DenseFfn d;
  d.gate = RandomWeight({K * kIe, kH}, dtype, gen);
  d.up = RandomWeight({K * kIe, kH}, dtype, gen);
  d.down = RandomWeight({kH, K * kIe}, dtype, gen);
  return cache.emplace(std::make_pair(K, bf16), std::move(d)).first->second;
}

void BM_Copy(benchmark::State& state) {
  SetBenchThreads();
  c10::InferenceMode no_autograd;
  Buffers();
  for (auto _ : state) CopyOnce();
  state.SetBytesProcessed(state.iterations() * kCopyBytes);  // bytes read
  state.counters["read_plus_write_per_second"] =
      benchmark::Counter(2.0 * double(kCopyBytes), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GBps"] = benchmark::Counter(double(kCopyBytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Read(benchmark::State& state) {
  SetBenchThreads();
  c10::InferenceMode no_autograd;
  Buffers();
  for (auto _ : state) benchmark::DoNotOptimize(ReadOnce());
  state.SetBytesProcessed(state.iterations() * kCopyBytes);
  state.counters["GBps"] = benchmark::Counter(double(kCopyBytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: T tokens, K top-k, bf16 (0 float32, 1 bfloat16).
void BM_Decode(benchmark::State& state, Method method) {
  SetBenchThreads();
  const int64_t T = state.range(0), K = state.range(1);
  const int bf16 = int(state.range(2));
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  // Measured once per process, on first use (before the first expert bank is built).
  const double copy_bw = CopyReadBandwidth();
  const double read_bw = ReadBandwidth();

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7 + T * 131 + K);
  const at::Tensor x = at::randn({T, kH}, gen, at::TensorOptions().dtype(at::kFloat)).to(dtype);
  // topk of i.i.d. uniform scores picks a uniformly random K-subset per token.
  const at::Tensor expert = std::get<1>(at::rand({T, kE}, gen, at::TensorOptions().dtype(at::kFloat)).topk(K, -1));
  const at::Tensor weight = at::softmax(at::randn({T, K}, gen, at::TensorOptions().dtype(at::kFloat)), -1);

  c10::InferenceMode no_autograd;
  int64_t active = K;
  // The loop's wall time, as Google Benchmark's real time measures it, for the fractions below
  // (plain counters, so that they print as fractions rather than as rates).
  std::chrono::steady_clock::time_point t0;
  if (method == kSparse) {
    const ExpertBank& s = Bank(bf16);
    active = std::get<0>(at::_unique(expert.reshape({-1}))).numel();
    t0 = std::chrono::steady_clock::now();
    for (auto _ : state) benchmark::DoNotOptimize(SparseMoeForward(x, expert, weight, s));
  } else {
    const DenseFfn& d = Dense(K, bf16);
    t0 = std::chrono::steady_clock::now();
    for (auto _ : state) {
      benchmark::DoNotOptimize(at::matmul(at::silu(at::matmul(x, d.gate.t())) * at::matmul(x, d.up.t()), d.down.t()));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double weight_bytes = double(active * ExpertBytes(bf16));
  const double achieved = weight_bytes * double(state.iterations()) / seconds;  // weight bytes/s
  state.SetItemsProcessed(state.iterations() * T);
  state.SetBytesProcessed(state.iterations() * int64_t(weight_bytes));
  state.counters["active_experts"] = double(active);
  state.counters["weight_bytes"] = weight_bytes;
  state.counters["bw_fraction"] = achieved / copy_bw;
  state.counters["read_fraction"] = achieved / read_bw;
  state.counters["copy_GBps"] = copy_bw / 1e9;
  state.counters["read_GBps"] = read_bw / 1e9;
  state.SetLabel(bf16 ? "bfloat16" : "float32");
}

void DecodeArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "K", "bf16"});
  for (int64_t bf16 : {0, 1}) {
    for (int64_t K : {2, 8}) {
      for (int64_t T : {1, 2, 4, 8}) b->Args({T, K, bf16});
    }
  }
}

// Wall-clock time: the work runs on OpenMP/oneDNN threads whose CPU time the main thread's clock
// would not see.
BENCHMARK(BM_Copy)->MinTime(0.5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Read)->MinTime(0.5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, sparse, kSparse)->Apply(DecodeArgs)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, dense, kDense)->Apply(DecodeArgs)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llama_moe
