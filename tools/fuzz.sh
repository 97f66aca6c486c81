#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang (libFuzzer + ASan + UBSan) and runs it for a
# bounded time, seeded with the malformed corpus and a valid file.
#   tools/fuzz.sh [SECONDS]        (default 60)
# Exits non-zero if the fuzzer finds a crash, leak or invariant violation (reproducer: crash-*).
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${FUZZ_WORKDIR:-$(mktemp -d)}"
mkdir -p "$work/corpus"
CLANG="${CLANG:-clang++-14}"
bin="$work/safetensors_header_fuzzer"
"$CLANG" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root" "$root/model/fuzz/safetensors_header_fuzzer.cc" "$root/model/safetensors_header.cc" \
  -labsl_statusor -labsl_status -labsl_strings -labsl_str_format_internal -labsl_cord \
  -labsl_cordz_info -labsl_cord_internal -labsl_cordz_functions -labsl_cordz_handle \
  -labsl_raw_logging_internal -labsl_throw_delegate -labsl_int128 -labsl_strings_internal \
  -labsl_base -labsl_spinlock_wait -labsl_synchronization -labsl_time -labsl_time_zone \
  -labsl_stacktrace -labsl_symbolize -labsl_malloc_internal -labsl_debugging_internal \
  -labsl_demangle_internal -labsl_graphcycles_internal -labsl_exponential_biased \
  -labsl_hash -labsl_city -labsl_low_level_hash -labsl_raw_hash_set -labsl_bad_optional_access \
  -o "$bin"
find "$root/tests/malformed" -name '*.safetensors' -size -64k -exec cp {} "$work/corpus/" \;
echo "fuzzing for ${seconds}s in $work"
cd "$work"
"$bin" -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1 corpus \
  2>&1 | tail -n 25
