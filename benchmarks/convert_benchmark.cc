// Conversion throughput of ConvertDenseToMoe against copying the same checkpoint, in one binary.
//
// A conversion reads every tensor of a dense checkpoint once and writes a larger one, so its floor
// is what a plain copy of the source costs on the same disk. The copy baseline is what
// `cp -r dense out && sync` does, minus cp's metadata work: every file of the source directory
// is read into an 8 MiB buffer and written to a new directory with read(2)/write(2), then
// fsync'ed, as the converter fsyncs its shards before publishing them. Both start from a source
// that sits in the page cache (it was just written) and both end with their output on disk, so
// the ratio says how much slicing, noise generation and hashing add to the I/O a copy cannot
// avoid.
//
// Checkpoint: a random dense Llama (H 2048, I 8192, 4 layers, 16 heads, 8 KV heads, V 32000,
// untied head, bfloat16, 4 shards: 0.76 GB), written once per process into a temporary directory
// and deleted at exit (15-30 s on 2 cores; the whole binary takes about a minute).
//
// Benchmarks (manual time: the timed call alone; the output directory is deleted after each
// iteration, outside the time):
//   BM_Copy                      the read/write/fsync copy above;
//   BM_Hash                      Sha256File of every source shard: the provenance hash a
//                                conversion computes first (part of BM_Convert's time);
//   BM_Convert/default           convert/recipes/default.textproto: 8 frozen + 8 learned experts
//                                (noisy slices), top-8;
//   BM_Convert/frozen_only       the same with num_learned_experts: 0 (top-8 of the 8 frozen
//                                slices): slicing and I/O without noise generation.
// Counters: bytes_per_second = bytes of the *source* checkpoint's files per second (the same
// numerator everywhere, so the rates compare directly); written_bytes = bytes of the files the
// iteration wrote (0 for BM_Hash); seconds = time per iteration.
//
// BENCH_THREADS sets the intra-op threads (default 2, the machine's cores).
//
//   source tools/env.sh && bazel run //benchmarks:convert_benchmark
//   (benchmarks/run_all.sh writes JSON; benchmarks/summarize.py prints the ratios.)
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "benchmarks/bench_util.h"
#include "convert/converter.h"
#include "convert/recipe.h"
#include "model/file_util.h"
#include "model/tiny_llama.h"

namespace llama_moe {
namespace {

namespace fs = std::filesystem;

// convert/recipes/default.textproto's fields, inline so that the binary needs no data files.
constexpr char kDefaultRecipe[] =
    "num_frozen_experts: 8 num_learned_experts: 8 learned_init: NOISY_SLICE noise_scale: 0.2 "
    "partition: CONTIGUOUS router_init: NORMAL router_std: 0.02 top_k: 8 score_function: SOFTMAX "
    "normalize_gates: true bias_update_rate: 0.001 seed: 0";

enum Recipe { kDefault, kFrozenOnly };


// Bytes of the regular files under `dir`.
uint64_t DirectoryBytes(const std::string& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (e.is_regular_file()) n += e.file_size();
  }
  return n;
}

// The dense checkpoint, created on first use and deleted at exit.
class Source {
 public:
  static Source& Get() {
    static Source s;
    return s;
  }
  const std::string& dir() const { return dir_; }
  const std::string& root() const { return root_; }
  const std::string& error() const { return error_; }
  uint64_t bytes() const { return bytes_; }
  ~Source() {
    if (!root_.empty()) RemoveAll(root_).IgnoreError();
  }

 private:
  Source() {
    SetBenchThreads();
    char tmpl[] = "/tmp/llama-moe-convert-bench-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      error_ = "mkdtemp failed";
      return;
    }
    root_ = tmpl;
    dir_ = JoinPath(root_, "dense");
    TinyLlamaOptions o;
    o.dtype = DType::kBF16;
    o.seed = 7;
    o.num_shards = 4;
    o.config.vocab_size = 32000;
    o.config.hidden_size = 2048;
    o.config.intermediate_size = 8192;
    o.config.num_hidden_layers = 4;
    o.config.num_attention_heads = 16;
    o.config.num_key_value_heads = 8;
    o.config.head_dim = 128;
    o.config.bos_token_id = 1;
    o.config.eos_token_ids = {2};
    const absl::Status s = WriteTinyLlama(dir_, o);
    if (!s.ok()) {
      error_ = absl::StrCat("creating the checkpoint: ", s.ToString());
      return;
    }
    bytes_ = DirectoryBytes(dir_);
  }

  std::string root_, dir_, error_;
  uint64_t bytes_ = 0;
};

// The copy baseline: read(2)/write(2) through one 8 MiB buffer, then fsync, file by file.
absl::Status CopyFileDurably(const std::string& from, const std::string& to, std::vector<char>& buf) {
  const int in = ::open(from.c_str(), O_RDONLY);
  if (in < 0) return absl::NotFoundError(absl::StrCat("cannot open '", from, "': ", std::strerror(errno)));
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) {
    ::close(in);
    return absl::InternalError(absl::StrCat("cannot create '", to, "': ", std::strerror(errno)));
  }
  absl::Status status;
  for (;;) {
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0) {
      status = absl::DataLossError(absl::StrCat("error reading '", from, "': ", std::strerror(errno)));
      break;
    }
    if (n == 0) break;
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = ::write(out, buf.data() + done, n - done);
      if (w < 0) {
        status = absl::InternalError(absl::StrCat("error writing '", to, "': ", std::strerror(errno)));
        break;
      }
      done += w;
    }
    if (!status.ok()) break;
  }
  if (status.ok() && ::fsync(out) != 0) {
    status = absl::InternalError(absl::StrCat("fsync '", to, "': ", std::strerror(errno)));
  }
  ::close(in);
  ::close(out);
  return status;
}

absl::Status CopyDirectory(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::create_directories(to, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", to, "': ", ec.message()));
  std::vector<char> buf(8 << 20);
  for (const auto& e : fs::directory_iterator(from)) {
    if (!e.is_regular_file()) continue;
    absl::Status s = CopyFileDurably(e.path().string(), JoinPath(to, e.path().filename().string()), buf);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void SetCounters(benchmark::State& state, const Source& src, double written, double seconds) {
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(src.bytes()));
  state.counters["source_bytes"] = double(src.bytes());
  state.counters["written_bytes"] = written;
  state.counters["seconds"] = seconds / double(state.iterations());
}

void BM_Copy(benchmark::State& state) {
  Source& src = Source::Get();
  if (!src.error().empty()) {
    state.SkipWithError(src.error().c_str());
    return;
  }
  const std::string out = JoinPath(src.root(), "copy");
  double written = 0, total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const absl::Status s = CopyDirectory(src.dir(), out);
    const double seconds = Since(t0);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
    state.SetIterationTime(seconds);
    total += seconds;
    written = double(DirectoryBytes(out));
    RemoveAll(out).IgnoreError();
  }
  SetCounters(state, src, written, total);
  state.SetLabel("read/write/fsync");
}

void BM_Hash(benchmark::State& state) {
  Source& src = Source::Get();
  if (!src.error().empty()) {
    state.SkipWithError(src.error().c_str());
    return;
  }
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(src.dir())) {
    if (e.path().extension() == ".safetensors") shards.push_back(e.path().string());
  }
  double total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const std::string& p : shards) {
      absl::StatusOr<std::string> digest = Sha256File(p);
      if (!digest.ok()) {
        state.SkipWithError(digest.status().ToString().c_str());
        return;
      }
      benchmark::DoNotOptimize(*digest);
    }
    const double seconds = Since(t0);
    state.SetIterationTime(seconds);
    total += seconds;
  }
  SetCounters(state, src, 0, total);
  state.SetLabel("sha256");
}

void BM_Convert(benchmark::State& state, Recipe which) {
  Source& src = Source::Get();
  if (!src.error().empty()) {
    state.SkipWithError(src.error().c_str());
    return;
  }
  absl::StatusOr<ConversionRecipe> recipe = ParseRecipe(kDefaultRecipe, "default");
  if (!recipe.ok()) {
    state.SkipWithError(recipe.status().ToString().c_str());
    return;
  }
  if (which == kFrozenOnly) recipe->set_num_learned_experts(0);
  ConvertOptions o;
  o.input_dir = src.dir();
  o.output_dir = JoinPath(src.root(), "moe");
  o.recipe = *recipe;
  double written = 0, total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const absl::StatusOr<ConvertStats> stats = ConvertDenseToMoe(o);
    const double seconds = Since(t0);
    if (!stats.ok()) {
      state.SkipWithError(stats.status().ToString().c_str());
      return;
    }
    state.SetIterationTime(seconds);
    total += seconds;
    written = double(DirectoryBytes(o.output_dir));
    RemoveAll(o.output_dir).IgnoreError();
  }
  SetCounters(state, src, written, total);
  state.SetLabel(which == kDefault ? "8 frozen + 8 learned" : "8 frozen");
}

BENCHMARK(BM_Copy)->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Hash)->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Convert, default, kDefault)->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Convert, frozen_only, kFrozenOnly)->Iterations(2)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llama_moe
