// Prefill throughput and per-token decode time of the dense Llama model on a mid-size random
// model (H 512, I 1408, 8 layers, 8 heads / 2 KV heads of 64, V 8192: 31M parameters).
//
// BM_DecodeStep at a short and a long prompt shows that a cached decode step costs nearly the
// same at any prompt length (its attention is O(S) reads of K/V, the matmuls O(1)), while the
// baseline BM_DecodeStepNoCache recomputes the whole sequence per token and grows linearly.
//
//   OPENBLAS_CORETYPE=SkylakeX bazel run -c opt //benchmarks:generate_benchmark
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>

#include "benchmarks/bench_util.h"
#include "model/kv_cache.h"
#include "model/llama_config.h"
#include "model/llama_model.h"

namespace llama_moe {
namespace {

LlamaConfig MidConfig() {
  LlamaConfig cfg;
  cfg.vocab_size = 8192;
  cfg.hidden_size = 512;
  cfg.intermediate_size = 1408;
  cfg.num_hidden_layers = 8;
  cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 2;
  cfg.head_dim = 64;
  cfg.max_position_embeddings = 4096;
  cfg.rope_theta = 500000.0;
  cfg.rope_scaling = RopeScaling{};
  cfg.torch_dtype = "float32";
  return cfg;
}

// One random model per dtype, built once (fan-in scaled Gaussian weights, norms at 1).
LlamaForCausalLM& Model(int dtype_arg) {
  static std::map<int, std::shared_ptr<LlamaForCausalLM>> models;
  auto& m = models[dtype_arg];
  if (!m) {
    SetBenchThreads();
    const c10::ScalarType dtype = dtype_arg == 0 ? at::kFloat : at::kBFloat16;
    m = std::make_shared<LlamaForCausalLM>(MidConfig(), at::TensorOptions().dtype(dtype));
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    c10::AutoGradMode no_grad(false);
    for (auto& p : m->named_parameters()) {
      at::Tensor& t = p.value();
      if (t.dim() == 1) {
        t.fill_(1.0);
      } else {
        t.copy_(at::randn(t.sizes(), gen, at::TensorOptions().dtype(at::kFloat)) / std::sqrt(double(t.size(1))));
      }
    }
  }
  return *m;
}

at::Tensor RandomTokens(int64_t b, int64_t t) {
  return at::randint(MidConfig().vocab_size, {b, t}, at::TensorOptions().dtype(at::kLong));
}

const char* DTypeLabel(int dtype_arg) { return dtype_arg == 0 ? "float32" : "bfloat16"; }

// Args: prompt tokens T, dtype (0 float32, 1 bfloat16). Items: prompt tokens.
void BM_Prefill(benchmark::State& state) {
  const int64_t t = state.range(0);
  LlamaForCausalLM& model = Model(state.range(1));
  const at::Tensor tokens = RandomTokens(1, t);
  ForwardOptions opts;
  opts.last_position_only = true;
  for (auto _ : state) {
    KvCache cache = *KvCache::Create(model.config(), t, {0}, model.options());
    opts.cache = &cache;
    benchmark::DoNotOptimize(model.ForwardUnchecked(tokens, opts));
  }
  state.SetItemsProcessed(state.iterations() * t);
  state.SetLabel(DTypeLabel(state.range(1)));
}
BENCHMARK(BM_Prefill)->Args({128, 0})->Args({512, 0})->Args({512, 1})->Unit(benchmark::kMillisecond);

constexpr int64_t kStepsPerIteration = 16;

// Args: prompt tokens, dtype. One iteration decodes 16 tokens after an untimed prefill; items are
// decoded tokens, so items_per_second is decode tokens/s and time_per_token its inverse.
void BM_DecodeStep(benchmark::State& state) {
  const int64_t prompt = state.range(0);
  LlamaForCausalLM& model = Model(state.range(1));
  const at::Tensor tokens = RandomTokens(1, prompt);
  const at::Tensor next = RandomTokens(1, 1);
  ForwardOptions opts;
  opts.last_position_only = true;
  for (auto _ : state) {
    state.PauseTiming();
    KvCache cache = *KvCache::Create(model.config(), prompt + kStepsPerIteration, {0}, model.options());
    opts.cache = &cache;
    model.ForwardUnchecked(tokens, opts);
    state.ResumeTiming();
    for (int64_t s = 0; s < kStepsPerIteration; ++s) {
      benchmark::DoNotOptimize(model.ForwardUnchecked(next, opts));
    }
  }
  state.SetItemsProcessed(state.iterations() * kStepsPerIteration);
  // The inverted token rate: seconds per token, printed with an SI prefix ("17.1ms").
  state.counters["time_per_token"] = benchmark::Counter(
      kStepsPerIteration, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.SetLabel(DTypeLabel(state.range(1)));
}
BENCHMARK(BM_DecodeStep)
    ->Args({32, 0})
    ->Args({2048, 0})
    ->Args({32, 1})
    ->Args({2048, 1})
    ->Unit(benchmark::kMillisecond);

// Baseline: a decode step without a cache recomputes all prompt + 1 positions (only the last
// position's logits are formed, as in generation).
void BM_DecodeStepNoCache(benchmark::State& state) {
  const int64_t prompt = state.range(0);
  LlamaForCausalLM& model = Model(state.range(1));
  const at::Tensor tokens = RandomTokens(1, prompt + 1);
  ForwardOptions opts;
  opts.last_position_only = true;
  for (auto _ : state) benchmark::DoNotOptimize(model.ForwardUnchecked(tokens, opts));
  state.SetItemsProcessed(state.iterations());
  state.counters["time_per_token"] =
      benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.SetLabel(DTypeLabel(state.range(1)));
}
BENCHMARK(BM_DecodeStepNoCache)->Args({32, 0})->Args({2048, 0})->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llama_moe
