// Expert offloading (moe/expert_offload.h) against the in-memory MoE model, in one binary:
// greedy decode speed, expert-cache hit rate and peak resident memory for the mmap and ram expert
// sources with a cache of {1, 2, 4, 8, 16} experts per layer (16 = all of them), plus mmap
// without prefetch at 4 and 8 to show what the next-layer prefetch does.
//
// Checkpoint: a random dense Llama (H 1024, I 4096, 24 layers, 16 heads, 4 KV heads, V 32000,
// bfloat16: 0.86 GB) converted with convert/recipes/default.textproto (16 experts of Ie 512 per
// layer, 8 frozen + 8 learned, top-8), which makes 732M parameters = 1.47 GB. It is written once
// per run into a temporary directory (about a minute) and deleted at exit; set
// LLAMA_MOE_OFFLOAD_BENCH_MODEL to a directory to keep it there (created when absent, reused after).
//
// Each configuration runs in a fresh child process (fork) so that its memory peak is its own:
//   peak_decode_MiB  VmHWM after generation, reset to the current RSS right after loading by
//                    writing 5 to /proc/self/clear_refs: the steady-state peak while decoding;
//   peak_total_MiB   the child's getrusage(RUSAGE_SELF).ru_maxrss: loading included
//                    (the in-memory load holds the file pages and the parameters at once);
//   rss_load_MiB     VmRSS right after loading.
// The child inherits the parent's resident pages (libraries, Google Benchmark; a few tens of MiB),
// the same for every configuration. The parent never runs LibTorch code, so no OpenMP thread pool
// exists at fork time (libgomp is not fork-safe once started); creating the checkpoint runs in a
// child too. File pages of the mmap source are released after each expert is copied into the
// cache, so RSS shows the cache, not the file.
//
// Counters: items_per_second (= decode tokens/s; manual time is the decode time), hit_rate
// (demand lookups found in the cache, prefill and decode together), misses, prefetches,
// tokens_match (1 when the greedy tokens equal the in-memory model's, generated once per process).
//
//   source tools/env.sh && bazel run -c opt //benchmarks:offload_benchmark
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "convert/converter.h"
#include "convert/recipe.h"
#include "model/file_util.h"
#include "model/generate.h"
#include "model/tiny_llama.h"
#include "moe/expert_offload.h"
#include "moe/moe_model.h"

namespace llama_moe {
namespace {

enum Mode { kInMemory = 0, kMmap = 1, kRam = 2 };
constexpr int kPromptTokens = 16;
constexpr int kNewTokens = 32;
constexpr double kMiB = 1024.0 * 1024.0;

// What a child reports back through its pipe.
struct ChildResult {
  int ok = 0;
  double decode_seconds = 0, decode_tokens = 0;
  double hit_rate = 0, misses = 0, prefetches = 0;
  double peak_decode_kib = 0, peak_total_kib = 0, rss_load_kib = 0;
  int64_t tokens[kNewTokens] = {};
  char error[512] = {};
};

// "VmHWM:  1234 kB" -> 1234.
double StatusKib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::atof(line.c_str() + std::strlen(field));
  }
  return -1;
}

bool ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  return static_cast<bool>(out);
}

// Runs fn(result) in a forked child and returns what it wrote.
template <typename F>
ChildResult InChild(const F& fn) {
  int fd[2];
  ChildResult r;
  if (pipe(fd) != 0) {
    std::snprintf(r.error, sizeof(r.error), "pipe failed");
    return r;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    ChildResult c;
    fn(c);
    const char* p = reinterpret_cast<const char*>(&c);
    size_t left = sizeof(c);
    while (left > 0) {
      const ssize_t n = write(fd[1], p, left);
      if (n <= 0) break;
      p += n;
      left -= n;
    }
    _exit(0);  // no static destructors or atexit handlers of the parent's state
  }
  close(fd[1]);
  char* p = reinterpret_cast<char*>(&r);
  size_t got = 0;
  while (got < sizeof(r)) {
    const ssize_t n = read(fd[0], p + got, sizeof(r) - got);
    if (n <= 0) break;
    got += n;
  }
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got != sizeof(r)) {
    r = ChildResult();
    std::snprintf(r.error, sizeof(r.error), "child exited with status %d before reporting", status);
  }
  return r;
}

// The converted checkpoint, created on first use and deleted at exit unless given by the user.
class BenchModel {
 public:
  static BenchModel& Get() {
    static BenchModel m;
    return m;
  }
  const std::string& dir() const { return dir_; }
  const std::string& error() const { return error_; }
  ~BenchModel() {
    if (owned_) RemoveAll(root_).IgnoreError();
  }

 private:
  BenchModel() {
    std::string dense;
    if (const char* given = std::getenv("LLAMA_MOE_OFFLOAD_BENCH_MODEL")) {
      dir_ = given;
      if (PathExists(dir_)) return;
      dense = dir_ + ".dense";  // created there and kept for later runs
    } else {
      char tmpl[] = "/tmp/llama-moe-offload-bench-XXXXXX";
      if (mkdtemp(tmpl) == nullptr) {
        error_ = "mkdtemp failed";
        return;
      }
      root_ = tmpl;
      owned_ = true;
      dir_ = JoinPath(root_, "moe");
      dense = JoinPath(root_, "dense");
    }
    const ChildResult r = InChild([&](ChildResult& c) {
      TinyLlamaOptions o;
      o.dtype = DType::kBF16;
      o.seed = 7;
      o.num_shards = 4;
      o.config.vocab_size = 32000;
      o.config.hidden_size = 1024;
      o.config.intermediate_size = 4096;
      o.config.num_hidden_layers = 24;
      o.config.num_attention_heads = 16;
      o.config.num_key_value_heads = 4;
      o.config.head_dim = 64;
      o.config.bos_token_id = 1;
      o.config.eos_token_ids = {2};
      absl::Status s = WriteTinyLlama(dense, o);
      if (s.ok()) {
        ConvertOptions co;
        co.input_dir = dense;
        co.output_dir = dir_;
        // convert/recipes/default.textproto's fields, inline so that the binary needs no data files.
        absl::StatusOr<ConversionRecipe> recipe = ParseRecipe(
            "num_frozen_experts: 8 num_learned_experts: 8 learned_init: NOISY_SLICE noise_scale: 0.2 "
            "partition: CONTIGUOUS router_init: NORMAL router_std: 0.02 top_k: 8 score_function: SOFTMAX "
            "normalize_gates: true bias_update_rate: 0.001 seed: 0",
            "default");
        if (!recipe.ok()) {
          s = recipe.status();
        } else {
          co.recipe = *recipe;
          s = ConvertDenseToMoe(co).status();
        }
      }
      RemoveAll(dense).IgnoreError();
      if (!s.ok()) {
        std::snprintf(c.error, sizeof(c.error), "%s", std::string(s.message()).c_str());
        return;
      }
      c.ok = 1;
    });
    if (!r.ok) error_ = std::string("creating the checkpoint: ") + r.error;
  }

  std::string root_, dir_, error_;
  bool owned_ = false;
};

void RunConfiguration(const std::string& dir, Mode mode, int64_t cache, bool prefetch, ChildResult& c) {
  std::shared_ptr<LlamaForCausalLM> model;
  std::shared_ptr<ExpertProvider> experts;
  if (mode == kInMemory) {
    ModelLoadOptions o;
    o.moe.mode = RoutingMode::kRouted;
    absl::StatusOr<LoadedModel> m = LoadModel(dir, o);
    if (!m.ok()) {
      std::snprintf(c.error, sizeof(c.error), "%s", m.status().ToString().c_str());
      return;
    }
    model = m->model;
  } else {
    OffloadLoadOptions o;
    o.offload.source = mode == kMmap ? OffloadSource::kMmap : OffloadSource::kRam;
    o.offload.cache_experts = cache;
    o.offload.prefetch = prefetch;
    absl::StatusOr<OffloadedModel> m = LoadOffloadedModel(dir, o);
    if (!m.ok()) {
      std::snprintf(c.error, sizeof(c.error), "%s", m.status().ToString().c_str());
      return;
    }
    model = m->model;
    experts = m->experts;
  }
  c.rss_load_kib = StatusKib("VmRSS:");
  if (!ResetPeakRss()) {
    std::snprintf(c.error, sizeof(c.error), "cannot write /proc/self/clear_refs");
    return;
  }
  std::vector<int64_t> prompt;
  for (int i = 0; i < kPromptTokens; ++i) prompt.push_back(3 + (i * 977) % 31000);  // fixed, varied ids
  GenerateOptions g;
  g.max_new_tokens = kNewTokens;
  g.eos_token_ids = {};  // always kNewTokens tokens
  absl::StatusOr<GenerateResult> r = Generate(*model, {prompt}, g);
  if (!r.ok()) {
    std::snprintf(c.error, sizeof(c.error), "%s", r.status().ToString().c_str());
    return;
  }
  c.peak_decode_kib = StatusKib("VmHWM:");
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  c.peak_total_kib = ru.ru_maxrss;  // KiB on Linux
  c.decode_seconds = r->decode_seconds;
  c.decode_tokens = r->decode_tokens;
  for (int i = 0; i < kNewTokens && i < static_cast<int>(r->tokens[0].size()); ++i) c.tokens[i] = r->tokens[0][i];
  if (experts != nullptr) {
    const ExpertCacheStats s = experts->stats();
    c.hit_rate = s.HitRate();
    c.misses = s.misses;
    c.prefetches = s.prefetches;
  } else {
    c.hit_rate = 1;  // every expert resident
  }
  c.ok = 1;
}

// The in-memory model's greedy tokens, generated once per process in a child of their own the
// first time a configuration needs them (run_all.sh interleaves configurations at random, so
// the in-memory configuration need not run first). Empty if that generation failed.
const std::vector<int64_t>& InMemoryTokens(const std::string& dir) {
  static const std::vector<int64_t> tokens = [&] {
    const ChildResult r = InChild([&](ChildResult& c) { RunConfiguration(dir, kInMemory, 16, false, c); });
    return r.ok ? std::vector<int64_t>(r.tokens, r.tokens + kNewTokens) : std::vector<int64_t>();
  }();
  return tokens;
}

// Args: mode (0 in-memory, 1 mmap, 2 ram), cache experts per layer, prefetch (0/1).
void BM_Offload(benchmark::State& state) {
  const Mode mode = static_cast<Mode>(state.range(0));
  const int64_t cache = state.range(1);
  const bool prefetch = state.range(2) != 0;
  BenchModel& bm = BenchModel::Get();
  if (!bm.error().empty()) {
    state.SkipWithError(bm.error().c_str());
    return;
  }
  ChildResult r;
  for (auto _ : state) {
    r = InChild([&](ChildResult& c) { RunConfiguration(bm.dir(), mode, cache, prefetch, c); });
    if (!r.ok) break;
    state.SetIterationTime(r.decode_seconds);
  }
  if (!r.ok) {
    state.SkipWithError(r.error);
    return;
  }
  const std::vector<int64_t> tokens(r.tokens, r.tokens + kNewTokens);
  state.SetItemsProcessed(static_cast<int64_t>(r.decode_tokens) * state.iterations());
  state.SetLabel(mode == kInMemory ? "in-memory" : (mode == kMmap ? "mmap" : "ram"));
  state.counters["peak_decode_MiB"] = r.peak_decode_kib / 1024.0;
  state.counters["peak_total_MiB"] = r.peak_total_kib / 1024.0;
  state.counters["rss_load_MiB"] = r.rss_load_kib / 1024.0;
  state.counters["hit_rate"] = r.hit_rate;
  state.counters["misses"] = r.misses;
  state.counters["prefetches"] = r.prefetches;
  const std::vector<int64_t>& reference = InMemoryTokens(bm.dir());
  state.counters["tokens_match"] = !reference.empty() && tokens == reference ? 1 : 0;
}

void Configurations(benchmark::internal::Benchmark* b) {
  b->Args({kInMemory, 16, 0});
  for (int mode : {kMmap, kRam}) {
    for (int cache : {1, 2, 4, 8, 16}) b->Args({mode, cache, 1});
  }
  b->Args({kMmap, 4, 0});
  b->Args({kMmap, 8, 0});
}

BENCHMARK(BM_Offload)->Apply(Configurations)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llama_moe
