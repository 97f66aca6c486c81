#!/usr/bin/env bash
# The full test suite: every test target except benchmarks, then one line "N passed, N failed"
# counted over test cases. Extra arguments go to `bazel test` (e.g. --config=asan).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh
targets=$(bazel query --noshow_progress 'tests(//...) except attr(tags, "benchmark", //...)' 2>/dev/null)
if [ -z "$targets" ]; then
  echo "bazel query found no test targets"
  echo "0 passed, 1 failed"
  exit 1
fi
# shellcheck disable=SC2086
bazel test "$@" $targets
rc=$?
python3 tools/count_tests.py "$(bazel info "$@" bazel-testlogs 2>/dev/null)" "$rc" $targets
