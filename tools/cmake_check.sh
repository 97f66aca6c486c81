#!/usr/bin/env bash
# The CMake build against the installed LibTorch, as people without Bazel use it: checks that
# CMakeLists.txt is what tools/gen_cmake.py makes of the BUILD files, builds every library, tool
# and test, and runs the tests with ctest. Compiles go through ccache when it is installed, with
# its cache beside Bazel's disk cache (~/.cache/llama-moe-cc/ccache), so a rebuild of unchanged
# sources costs seconds.
#   tools/cmake_check.sh [BUILD_DIR]      (default build-cmake, ignored by git)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh
python3 tools/gen_cmake.py --check
build="${1:-build-cmake}"
launcher=()
if command -v ccache >/dev/null; then
  # BASEDIR makes paths relative in the cache key, so clones in other folders share the cache.
  export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/llama-moe-cc/ccache}" CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
  export CCACHE_BASEDIR="$PWD"
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >"$build/configure.log" 2>&1 ||
  { tail -30 "$build/configure.log"; exit 1; }
ninja -C "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure -j "$(nproc)"
