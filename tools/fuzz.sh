#!/usr/bin/env bash
# Builds libFuzzer targets over the parsers of user input with clang (libFuzzer + ASan + UBSan)
# and runs each for a bounded time from its seed corpus.
#   tools/fuzz.sh [TARGET|all] [SECONDS]      (default: all, 60 s per target)
# Targets: safetensors_header, safetensors_index, config, tokenizer, recipe, train_config,
# token_shards, corpus_reader. Seeds: tests/fuzz_corpus/<target>/ (tools/make_fuzz_corpus.py) and, for the
# safetensors header, tests/malformed/. New corpus entries stay in the work directory
# (FUZZ_WORKDIR, default a fresh temporary one). Prints one line per target with the number of
# executions; exits non-zero if a target finds a crash, leak, timeout or invariant violation
# (reproducer: <workdir>/<target>/crash-*).
set -euo pipefail
target="${1:-all}"
seconds="${2:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${FUZZ_WORKDIR:-$(mktemp -d)}"
CLANG="${CLANG:-clang++-14}"
all_targets=(safetensors_header safetensors_index config tokenizer recipe train_config token_shards
  corpus_reader)

absl_libs=(-labsl_statusor -labsl_status -labsl_strings -labsl_str_format_internal -labsl_cord
  -labsl_cordz_info -labsl_cord_internal -labsl_cordz_functions -labsl_cordz_handle
  -labsl_raw_logging_internal -labsl_throw_delegate -labsl_int128 -labsl_strings_internal
  -labsl_base -labsl_spinlock_wait -labsl_synchronization -labsl_time -labsl_time_zone
  -labsl_stacktrace -labsl_symbolize -labsl_malloc_internal -labsl_debugging_internal
  -labsl_demangle_internal -labsl_graphcycles_internal -labsl_exponential_biased
  -labsl_hash -labsl_city -labsl_low_level_hash -labsl_raw_hash_set -labsl_bad_optional_access)

# Echoes "sources|protos|extra link flags|max_len" for a target.
target_spec() {
  case "$1" in
    safetensors_header)
      echo "model/fuzz/safetensors_header_fuzzer.cc model/safetensors_header.cc model/json_util.cc|||4096" ;;
    safetensors_index)
      echo "model/fuzz/safetensors_index_fuzzer.cc model/safetensors_index.cc model/json_util.cc|||4096" ;;
    config)
      echo "moe/fuzz/config_fuzzer.cc model/llama_config.cc model/file_util.cc model/json_util.cc moe/moe_config.cc|||4096" ;;
    tokenizer)
      echo "model/fuzz/tokenizer_fuzzer.cc model/tokenizer.cc model/json_util.cc||-lpcre2-8|8192" ;;
    recipe)
      echo "convert/fuzz/recipe_fuzzer.cc convert/recipe.cc model/llama_config.cc model/file_util.cc model/json_util.cc moe/moe_config.cc|convert/recipe.proto|-lprotobuf|4096" ;;
    train_config)
      echo "train/fuzz/train_config_fuzzer.cc train/train_config.cc model/file_util.cc|train/train_config.proto|-lprotobuf|4096" ;;
    token_shards)
      echo "train/fuzz/token_shards_fuzzer.cc train/token_shards.cc model/file_util.cc model/json_util.cc|||4096" ;;
    corpus_reader)
      echo "train/fuzz/corpus_reader_fuzzer.cc train/corpus_reader.cc model/file_util.cc model/json_util.cc|||4096" ;;
    *)
      echo "tools/fuzz.sh: unknown target '$1' (one of: ${all_targets[*]}, all)" >&2
      return 1 ;;
  esac
}

run_target() {
  local name="$1" spec srcs protos libs max_len dir gen bin log execs
  spec="$(target_spec "$name")"
  IFS='|' read -r srcs protos libs max_len <<<"$spec"
  dir="$work/$name"
  gen="$dir/gen"
  mkdir -p "$dir/corpus" "$gen"
  local sources=()
  for s in $srcs; do sources+=("$root/$s"); done
  for p in $protos; do
    # Generated code for the protobuf the target parses, as Bazel's cc_proto_library makes it.
    protoc --proto_path="$root" --cpp_out="$gen" "$root/$p"
    sources+=("$gen/${p%.proto}.pb.cc")
  done
  bin="$dir/${name}_fuzzer"
  # shellcheck disable=SC2086
  "$CLANG" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DPCRE2_CODE_UNIT_WIDTH=8 -I"$root" -I"$gen" "${sources[@]}" $libs "${absl_libs[@]}" -o "$bin" ||
    { echo "$name: the fuzzer does not build"; return 1; }
  if [[ -d "$root/tests/fuzz_corpus/$name" ]]; then cp "$root/tests/fuzz_corpus/$name"/* "$dir/corpus/"; fi
  if [[ "$name" == safetensors_header ]]; then
    find "$root/tests/malformed" -name '*.safetensors' -size -64k -exec cp {} "$dir/corpus/" \;
  fi
  log="$dir/fuzz.log"
  local rc=0
  (cd "$dir" && "$bin" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 corpus >"$log" 2>&1) || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  if [[ $rc -ne 0 ]]; then
    tail -n 40 "$log"
    echo "$name: FAILED after ${execs:-?} executions (exit $rc); reproducer and log in $dir"
    return 1
  fi
  echo "$name: ${execs} executions in ${seconds} s, no crash ($(find "$dir/corpus" -type f | wc -l) corpus entries)"
}

targets=("$target")
if [[ "$target" == all ]]; then targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do target_spec "$t" >/dev/null; done
echo "fuzzing ${targets[*]} for ${seconds} s each in $work"
failed=0
for t in "${targets[@]}"; do run_target "$t" || failed=1; done
exit "$failed"
