#!/usr/bin/env bash
# The main job on the shipped default model: the most complete pipeline that exists so far.
# Each stage says what it checks and stops the script if the check fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh
out="${DEMO_OUT:-$PWD/out/demo}"
rm -rf "$out" && mkdir -p "$out"

stage() { printf '\n== %s\n' "$*"; }

stage "build"
bazel build //tools:make_tiny_llama //tools:inspect
bin=bazel-bin

stage "write a random Llama 3 checkpoint (bf16, 3 shards, GQA 4/2, llama3 RoPE scaling)"
"$bin/tools/make_tiny_llama" --output "$out/tiny" --dtype bf16 --shards 3 --seed 7

stage "inspect --verify: every tensor read and checked against config.json"
"$bin/tools/inspect" --model "$out/tiny" --verify | tail -n 3

echo
echo "demo: all stages passed; outputs in $out"
