#!/usr/bin/env bash
# Runs every benchmark binary of the repository and writes one JSON file per binary to
# out/benchmarks/<name>.json (Google Benchmark's format), then prints the ratio tables of the MoE,
# decode-bandwidth, decode-linear and conversion benchmarks (benchmarks/summarize.py).
#
#   benchmarks/run_all.sh                       # all benchmarks, 3 repetitions each
#   REPETITIONS=5 benchmarks/run_all.sh moe     # only binaries whose name contains "moe"
#   benchmarks/run_all.sh moe --benchmark_filter=T:512   # extra flags go to every binary
#
# Repetitions are interleaved at random so that a burst of load from other users of the machine
# spreads over all methods instead of biasing one; summarize.py reports medians.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh

only="${1:-}"
[ $# -gt 0 ] && shift
reps="${REPETITIONS:-3}"
out=out/benchmarks
mkdir -p "$out"

# Every lm_cc_benchmark target is tagged "benchmark".
mapfile -t targets < <(bazel query 'attr(tags, "\bbenchmark\b", kind(cc_binary, //benchmarks/...))' 2>/dev/null)
[ -n "$only" ] && mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -- "$only")
run_peer=0
[ -z "$only" ] || [[ "llama_cpp_peer" == *"$only"* ]] && run_peer=1
if [ ${#targets[@]} -eq 0 ] && [ "$run_peer" -eq 0 ]; then
  echo "no benchmark targets match '$only'" >&2
  exit 1
fi
[ ${#targets[@]} -gt 0 ] && bazel build -c opt "${targets[@]}"

for t in "${targets[@]+"${targets[@]}"}"; do
  name="${t##*:}"
  bin="bazel-bin/$(echo "${t#//}" | tr ':' '/')"
  echo "=== $t -> $out/$name.json" >&2
  # Binaries that read data files find their runfiles tree next to /proc/self/exe.
  "$bin" --benchmark_repetitions="$reps" --benchmark_enable_random_interleaving=true \
    --benchmark_out="$out/$name.json" --benchmark_out_format=json "$@"
done

# llama.cpp on the same weights: a script, not a Google Benchmark binary (fresh processes of two
# engines).
if [ "$run_peer" -eq 1 ]; then
  echo "=== benchmarks/llama_cpp_peer.sh -> $out/llama_cpp_peer.json" >&2
  REPETITIONS="$reps" benchmarks/llama_cpp_peer.sh
  echo
fi

# summarize.py picks the tables from the benchmarks each file holds.
for name in moe_benchmark decode_bandwidth_benchmark decode_linear_benchmark convert_benchmark; do
  if [ -f "$out/$name.json" ]; then
    python3 benchmarks/summarize.py "$out/$name.json"
    echo
  fi
done
