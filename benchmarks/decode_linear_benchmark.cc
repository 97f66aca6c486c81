// DecodeLinear (model/decode_linear.h), every form this CPU runs, on one decode step's matrix
// products of a Llama 3 8B layer (q, k, v, o, gate, up, down: H 4096, KV width 1024, FFN 14336;
// 436 MB in bfloat16, 872 MB in float32, far above the caches), against ATen's linear on the
// same products and the machine's read bandwidth, measured in the same benchmark.
//
// Benchmarks: BM_Layer/<form>/bf16 runs the layer's seven products for one row of x with
//   aten         at::linear (the baseline)
//   portable, avx2, avx512, avx512_bf16   DecodeLinearWith(form); a form this CPU lacks is
//                skipped with a message
// Counters:
//   bytes_per_second  weight bytes per wall-clock second (the console prints GiB/s)
//   read_fraction     that over the read bandwidth (at::sum over 512 MiB, median of 5) measured
//                     right before the benchmark's own loop: this VM's bandwidth moves within
//                     minutes, so each benchmark carries its own reference
//   read_GBps         that reference, 10^9 bytes/s
// benchmarks/summarize.py prints each form's speed over ATen's (medians of the repetitions).
//
// BENCH_THREADS sets the intra-op threads (default 2). About a minute on 2 cores.
//
//   source tools/env.sh && bazel run -c opt //benchmarks:decode_linear_benchmark
//   (benchmarks/run_all.sh decode_linear writes JSON; summarize.py prints the table.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "benchmarks/bench_util.h"
#include "model/decode_linear.h"

namespace llama_moe {
namespace {

constexpr int64_t kH = 4096, kKv = 1024, kI = 14336;
constexpr int64_t kReadBytes = int64_t{512} << 20;

// The layer's weights [N, K] per dtype, built once.
const std::vector<at::Tensor>& Layer(bool bf16) {
  static std::map<bool, std::vector<at::Tensor>> cache;
  auto it = cache.find(bf16);
  if (it != cache.end()) return it->second;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11 + bf16);
  std::vector<at::Tensor> w;
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{
           {kH, kH}, {kKv, kH}, {kKv, kH}, {kH, kH}, {kI, kH}, {kI, kH}, {kH, kI}}) {
    w.push_back((at::randn({n, k}, gen, at::TensorOptions().dtype(at::kFloat)) / 64).to(bf16 ? at::kBFloat16 : at::kFloat));
  }
  return cache.emplace(bf16, std::move(w)).first->second;
}

double LayerBytes(bool bf16) {
  double b = 0;
  for (const at::Tensor& w : Layer(bf16)) b += double(w.numel() * w.element_size());
  return b;
}

// Read bandwidth now: at::sum over kReadBytes, median of 5 after a warm-up.
double ReadBandwidth() {
  static const at::Tensor buf = at::ones({kReadBytes / 4}, at::kFloat);
  std::vector<double> rates;
  for (int i = 0; i < 6; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(at::sum(buf).item<double>());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) rates.push_back(double(kReadBytes) / s);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// form < 0: ATen's linear.
void BM_Layer(benchmark::State& state, int form) {
  SetBenchThreads();
  c10::InferenceMode no_autograd;
  const bool bf16 = state.range(0) != 0;
  if (form >= 0 && !DecodeLinearFormSupported(static_cast<DecodeLinearForm>(form))) {
    state.SkipWithError("this CPU does not run the form");
    return;
  }
  const std::vector<at::Tensor>& layer = Layer(bf16);
  std::map<int64_t, at::Tensor> x;  // one row of x per K
  for (const at::Tensor& w : layer) {
    if (!x.count(w.size(1))) x[w.size(1)] = at::randn({1, w.size(1)}, at::kFloat).to(w.scalar_type());
  }
  auto step = [&] {
    for (const at::Tensor& w : layer) {
      const at::Tensor& xi = x[w.size(1)];
      benchmark::DoNotOptimize(form < 0 ? at::linear(xi, w) : DecodeLinearWith(static_cast<DecodeLinearForm>(form), xi, w));
    }
  };
  step();  // warm-up
  const double read_bw = ReadBandwidth();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) step();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                         double(std::max<int64_t>(1, state.iterations()));
  const double bytes = LayerBytes(bf16);
  state.SetBytesProcessed(state.iterations() * int64_t(bytes));
  state.counters["read_fraction"] = bytes / seconds / read_bw;
  state.counters["read_GBps"] = read_bw / 1e9;
  state.SetLabel(bf16 ? "bfloat16" : "float32");
}

// Wall-clock time: the work runs on OpenMP threads whose CPU time the main thread's clock would
// not see.
BENCHMARK_CAPTURE(BM_Layer, aten, -1)->ArgName("bf16")->Arg(0)->Arg(1)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Layer, portable, static_cast<int>(DecodeLinearForm::kPortable))
    ->ArgName("bf16")->Arg(0)->Arg(1)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Layer, avx2, static_cast<int>(DecodeLinearForm::kAvx2))
    ->ArgName("bf16")->Arg(0)->Arg(1)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Layer, avx512, static_cast<int>(DecodeLinearForm::kAvx512))
    ->ArgName("bf16")->Arg(0)->Arg(1)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Layer, avx512_bf16, static_cast<int>(DecodeLinearForm::kAvx512Bf16))
    ->ArgName("bf16")->Arg(0)->Arg(1)->MinTime(1.0)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llama_moe
