// The MoE layer's expert computation (dispatch + expert SwiGLUs + combine), forward and
// forward+backward, against three baselines measured in the same binary:
//   dense   a dense SwiGLU FFN with the same *active* parameters (intermediate K*Ie), the cost
//           a sparse layer should approach;
//   original AllTokensMoeForward, the original project's method: every expert chosen by any
//            token runs on all T tokens;
//   mixtral MixtralLoopMoeForward: Hugging Face's per-expert loop with one_hot masks.
//
// Sizes: H 1024 and a total FFN intermediate of 4096 split into E experts (Ie = 4096/E), the
// shape of a small Llama layer. Larger layers (H 4096) make the T=2048 original-method baseline and the
// backward runs take tens of seconds each on the 2 shared cores, which would push the sweep past a
// few minutes; smaller ones (H 256) make every run dispatch-overhead bound and say little about
// real layers. Routing is uniform random top-K (K distinct experts per token, fixed seed) with
// softmax-like positive weights, so expert loads vary as they do under a balanced router.
//
// Args: T tokens, E experts, K top-k, bf16 (0 float32, 1 bfloat16). Counters:
//   items_per_second  tokens/s
//   FLOP_per_s        useful FLOP/s: 6*T*K*H*Ie per forward, 3x that for forward+backward (the
//                     same count for every method, so slower methods show lower rates)
//   weight_bytes      bytes of expert weights the routing touches: distinct active experts x
//                     expert bytes (dense: its whole K*Ie FFN)
//   active_experts    distinct experts chosen by the T tokens
//   peak_bytes        peak of tensor storage allocated through c10's CPU allocator during one
//                     (untimed) call, above what was live before it: activations, outputs and
//                     autograd's saved tensors; not oneDNN/OpenBLAS internal scratch buffers
//
// Forward runs without autograd (inference). Forward+backward takes gradients for x, the gate
// weights and the learned experts (E/2 frozen, E/2 learned, as after upcycling); the dense
// baseline takes gradients for x and all its weights.
//
//   source tools/env.sh && bazel run -c opt //benchmarks:moe_benchmark -- --benchmark_repetitions=3
//   (benchmarks/run_all.sh runs it with JSON output; benchmarks/summarize.py prints the ratios.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/Allocator.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "benchmarks/bench_util.h"
#include "benchmarks/moe_baselines.h"
#include "moe/dispatch.h"
#include "moe/random_expert_bank.h"

namespace llama_moe {
namespace {

constexpr int64_t kH = 1024;        // hidden size H
constexpr int64_t kITotal = 4096;   // total FFN intermediate, split into E experts of Ie

enum Method { kSparse, kAllTokens, kMixtral, kDense };

// Receives every CPU allocation and free made through c10's default CPU allocator on this thread
// (and on autograd's worker, which inherits the thread-local state) while installed, and keeps
// the running total and its peak. The reporting hook is the one the profiler uses; both overloads
// are declared because LibTorch 1.13 passes the totals as int64_t and 2.x as size_t.
class PeakMemoryReporter : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void* ptr, int64_t alloc_size, int64_t total_allocated, int64_t total_reserved,
                         c10::Device device) {
    Add(alloc_size);
  }
  void reportMemoryUsage(void* ptr, int64_t alloc_size, size_t total_allocated, size_t total_reserved,
                         c10::Device device) {
    Add(alloc_size);
  }
  bool memoryProfilingEnabled() const override { return true; }
  int64_t peak() const { return peak_; }

 private:
  void Add(int64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    current_ += n;
    peak_ = std::max(peak_, current_);
  }
  std::mutex mu_;
  int64_t current_ = 0;
  int64_t peak_ = 0;
};

template <typename F>
int64_t PeakBytes(F&& f) {
  auto reporter = std::make_shared<PeakMemoryReporter>();
  {
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, reporter);
    f();
  }
  return reporter->peak();
}



// One expert bank per (E, dtype), built once: E/2 frozen and E/2 learned experts.
const ExpertBank& Bank(int64_t E, int bf16) {
  static std::map<std::pair<int64_t, int>, ExpertBank> cache;
  auto it = cache.find({E, bf16});
  if (it != cache.end()) return it->second;
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(100 + E);
  const int64_t ie = kITotal / E, nf = E / 2, nl = E - nf;
  return cache.emplace(std::make_pair(E, bf16), RandomExpertBank(nf, nl, ie, kH, dtype, gen)).first->second;
}

struct Inputs {
  at::Tensor x;       // [T,H]
  at::Tensor expert;  // [T,K] int64, K distinct uniform experts per token
  at::Tensor weight;  // [T,K] float32, positive, rows sum to 1
  ExpertBank experts;
  at::Tensor dense_gate, dense_up, dense_down;  // [K*Ie,H], [K*Ie,H], [H,K*Ie]
  int64_t active = 0;                           // distinct experts in `expert`
};

Inputs MakeInputs(int64_t T, int64_t E, int64_t K, int bf16, Method method) {
  SetBenchThreads();
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7 + T * 131 + E * 17 + K);
  Inputs in;
  in.x = at::randn({T, kH}, gen, at::TensorOptions().dtype(at::kFloat)).to(dtype);
  // topk of i.i.d. uniform scores picks a uniformly random K-subset per token.
  in.expert = std::get<1>(at::rand({T, E}, gen, at::TensorOptions().dtype(at::kFloat)).topk(K, -1));
  in.weight = at::softmax(at::randn({T, K}, gen, at::TensorOptions().dtype(at::kFloat)), -1);
  in.active = std::get<0>(at::_unique(in.expert.reshape({-1}))).numel();
  if (method == kDense) {
    const int64_t i = K * (kITotal / E);
    in.dense_gate = RandomWeight({i, kH}, dtype, gen);
    in.dense_up = RandomWeight({i, kH}, dtype, gen);
    in.dense_down = RandomWeight({kH, i}, dtype, gen);
  } else {
    in.experts = Bank(E, bf16);
  }
  return in;
}

at::Tensor Run(Method method, const Inputs& in) {
  switch (method) {
    case kSparse:
      return SparseMoeForward(in.x, in.expert, in.weight, in.experts);
    case kAllTokens:
      return AllTokensMoeForward(in.x, in.expert, in.weight, in.experts);
    case kMixtral:
      return MixtralLoopMoeForward(in.x, in.expert, in.weight, in.experts);
    case kDense:
      return at::matmul(at::silu(at::matmul(in.x, in.dense_gate.t())) * at::matmul(in.x, in.dense_up.t()),
                        in.dense_down.t());
  }
  return {};
}

void SetCounters(benchmark::State& state, const Inputs& in, double flops_per_iter, int64_t peak) {
  const int64_t T = state.range(0), E = state.range(1), K = state.range(2);
  const int64_t elem = state.range(3) ? 2 : 4;
  const int64_t expert_bytes = 3 * (kITotal / E) * kH * elem;
  state.SetItemsProcessed(state.iterations() * T);
  state.counters["FLOP_per_s"] = benchmark::Counter(flops_per_iter, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_bytes"] = double(in.dense_gate.defined() ? K * expert_bytes : in.active * expert_bytes);
  state.counters["active_experts"] = double(in.active);
  state.counters["peak_bytes"] = double(peak);
  state.SetLabel(state.range(3) ? "bfloat16" : "float32");
}

double ForwardFlops(const benchmark::State& state) {
  return 6.0 * double(state.range(0)) * double(state.range(2)) * double(kH) * double(kITotal / state.range(1));
}

void BM_MoeForward(benchmark::State& state, Method method) {
  Inputs in = MakeInputs(state.range(0), state.range(1), state.range(2), int(state.range(3)), method);
  c10::InferenceMode no_autograd;
  const int64_t peak = PeakBytes([&] { Run(method, in); });
  for (auto _ : state) benchmark::DoNotOptimize(Run(method, in));
  SetCounters(state, in, ForwardFlops(state), peak);
}

void BM_MoeForwardBackward(benchmark::State& state, Method method) {
  Inputs in = MakeInputs(state.range(0), state.range(1), state.range(2), int(state.range(3)), method);
  std::vector<at::Tensor> wrt = {in.x.set_requires_grad(true)};
  if (method == kDense) {
    wrt.push_back(in.dense_gate.set_requires_grad(true));
    wrt.push_back(in.dense_up.set_requires_grad(true));
    wrt.push_back(in.dense_down.set_requires_grad(true));
  } else {
    // Fresh leaves per benchmark: the cached bank stays free of autograd state.
    in.experts.learned_gate = in.experts.learned_gate.detach().requires_grad_(true);
    in.experts.learned_up = in.experts.learned_up.detach().requires_grad_(true);
    in.experts.learned_down = in.experts.learned_down.detach().requires_grad_(true);
    wrt.push_back(in.weight.set_requires_grad(true));
    wrt.push_back(in.experts.learned_gate);
    wrt.push_back(in.experts.learned_up);
    wrt.push_back(in.experts.learned_down);
  }
  const at::Tensor probe = at::randn_like(in.x);
  // torch::autograd::grad returns fresh gradients instead of accumulating into .grad().
  // allow_unused: the baselines index only the selected experts, so with few tokens a stack
  // (e.g. every learned expert) can stay out of their graph.
  auto step = [&] { return torch::autograd::grad({Run(method, in)}, wrt, {probe}, c10::nullopt, false, /*allow_unused=*/true); };
  const int64_t peak = PeakBytes(step);
  for (auto _ : state) benchmark::DoNotOptimize(step());
  SetCounters(state, in, 3 * ForwardFlops(state), peak);
}

// The full cross product the ablation asks for: T in {1, 16, 256, 512, 2048} (512 and 2048 are
// the prefill sizes of the dense-ratio table), E in {8, 16, 32, 64} at constant total width (so
// Ie = 4096/E shrinks as E grows), K in {1, 2, 4, 8}, float32 and bfloat16; every method, forward
// and forward+backward. At 1 thread the whole binary takes about half an hour with 2 repetitions,
// most of it bfloat16 at T 2048 (bf16 matmul is 3-4x slower than f32 on CPUs without
// AVX512-BF16/AMX) and the original method there (it runs every expert on every token). Use
// --benchmark_filter to run a slice, e.g. 'T:512/'.
void SweepArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "E", "K", "bf16"});
  for (int64_t bf16 : {0, 1}) {
    for (int64_t T : {1, 16, 256, 512, 2048}) {
      for (int64_t E : {8, 16, 32, 64}) {
        for (int64_t K : {1, 2, 4, 8}) b->Args({T, E, K, bf16});
      }
    }
  }
}

// Wall-clock time for times and rates: the work runs on OpenMP/oneDNN threads whose CPU time the
// main thread's clock would not see.
#define MOE_BENCHMARK(fn, name, method, args) \
  BENCHMARK_CAPTURE(fn, name, method)->Apply(args)->MinTime(0.1)->UseRealTime()->Unit(benchmark::kMillisecond)

MOE_BENCHMARK(BM_MoeForward, sparse, kSparse, SweepArgs);
MOE_BENCHMARK(BM_MoeForward, dense, kDense, SweepArgs);
MOE_BENCHMARK(BM_MoeForward, original, kAllTokens, SweepArgs);
MOE_BENCHMARK(BM_MoeForward, mixtral, kMixtral, SweepArgs);
MOE_BENCHMARK(BM_MoeForwardBackward, sparse, kSparse, SweepArgs);
MOE_BENCHMARK(BM_MoeForwardBackward, dense, kDense, SweepArgs);
MOE_BENCHMARK(BM_MoeForwardBackward, original, kAllTokens, SweepArgs);
MOE_BENCHMARK(BM_MoeForwardBackward, mixtral, kMixtral, SweepArgs);

}  // namespace
}  // namespace llama_moe
