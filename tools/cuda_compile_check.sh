#!/usr/bin/env bash
# Compiles (does not link) every source with a CUDA branch the way a CUDA LibTorch build compiles
# it: LLAMA_MOE_WITH_CUDA and USE_C10D_NCCL defined, LibTorch's CUDA and c10d NCCL headers, the
# CUDA toolkit's cuda_runtime and nccl.h (bazel --config=cuda_compile). Code that only a GPU build
# sees cannot rot unseen. Branches behind a LibTorch version guard (model/torch_features.h) above
# the installed LibTorch are not seen by this check; the GPU check (tools/gpu_check.sh) builds them.
#   tools/cuda_compile_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh
mapfile -t files < <(grep -rlE 'LLAMA_MOE_WITH_CUDA|USE_C10D_NCCL' --include='*.cc' model moe convert train eval benchmarks tools | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "cuda_compile_check: no source has a CUDA branch" >&2
  exit 1
fi
targets=()
for f in "${files[@]}"; do
  pkg="$(dirname "$f")"
  t="$(bazel query --noshow_progress "kind('cc_(library|binary|test)', attr(srcs, '//$pkg:$(basename "$f")[],]', //$pkg:all))" 2>/dev/null)"
  if [ -z "$t" ]; then
    echo "cuda_compile_check: no target compiles $f" >&2
    exit 1
  fi
  targets+=($t)
done
mapfile -t targets < <(printf '%s\n' "${targets[@]}" | sort -u)
bazel build --noshow_progress --config=cuda_compile "${targets[@]}"
echo "cuda_compile_check: ${#files[@]} sources with CUDA branches compiled (${targets[*]})"
