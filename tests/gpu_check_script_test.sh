#!/usr/bin/env bash
# tools/gpu_check.sh on bad input, on a machine without a GPU: a pack folder that lacks a package
# or the training data, and --pack without a folder, each end in one clear line and exit 2 before
# anything is built.
set -u
script="$1"
work="${TEST_TMPDIR:-$(mktemp -d)}/gpu_check"
rm -rf "$work" && mkdir -p "$work/empty" "$work/debs_only"
failures=0
expect() {  # WHAT PATTERN COMMAND...
  local what="$1" pattern="$2"; shift 2
  "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  if [ "$rc" -ne 2 ]; then
    echo "FAIL $what: exit status $rc, expected 2"; cat "$work/err"; failures=$((failures + 1))
  elif [ "$(grep -c . "$work/err")" -ne 1 ] || ! grep -q -- "$pattern" "$work/err"; then
    echo "FAIL $what: stderr is not one line matching '$pattern':"; cat "$work/err"; failures=$((failures + 1))
  else
    echo "ok   $what: $(cat "$work/err")"
  fi
}
expect "empty pack" "empty has no libabsl-dev_\*.deb (run tools/gpu_check.sh --pack" \
  env GPU_CHECK_BUILD="$work/build" bash "$script" "$work/empty"
for p in libabsl-dev libabsl20220623 libprotobuf-dev libprotobuf32 protobuf-compiler libprotoc32 \
  nlohmann-json3-dev libpcre2-dev libpcre2-8-0 libssl-dev libssl3 libgloo-dev; do
  : >"$work/debs_only/${p}_1_amd64.deb"
done
expect "pack without data" "debs_only/data lacks tokenizer.json or brown/" \
  env GPU_CHECK_BUILD="$work/build" bash "$script" "$work/debs_only"
expect "--pack without a folder" "usage: tools/gpu_check.sh --pack DIR" bash "$script" --pack
if [ -e "$work/build" ]; then
  echo "FAIL: a build folder was created"; failures=$((failures + 1))
fi
[ "$failures" -eq 0 ] && echo "PASS" || { echo "$failures failure(s)"; exit 1; }
