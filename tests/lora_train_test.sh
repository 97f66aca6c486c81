#!/usr/bin/env bash
# LoRA on the frozen experts end to end, on the shipped model and Brown corpus text:
#  L1: trainable LORA_ADAPTERS: only the adapter tensors change (frozen, learned experts, routers
#      and their selection biases, attention, norms, embeddings, head bit-for-bit as converted),
#      and the held-out loss falls;
#  L2: trainable LORA_AND_LEARNED: adapters, learned experts, routers change; frozen experts do not;
#  L3: distillation with adapters: the teacher is the dense model without them, so the first
#      step's KL is ~0 for a conversion whose routed model equals the dense one;
#  bad input: ranks that do not fit, LoRA training of a model without adapters.
set -euo pipefail
prepare="$1"; convert="$2"; train="$3"; model="$(dirname "$4")"; brown="$(dirname "$5")"
work="${TEST_TMPDIR:-$(mktemp -d)}/lora_train"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_expect.sh"

"$prepare" --tokenizer "$model/tokenizer.json" --input "$brown" --format brown --max_documents 40 \
  --heldout_fraction 0.1 --output "$work/data" >/dev/null
"$convert" --input "$model" --output "$work/moe" --dtype float32 --set "lora_rank: 8" >/dev/null 2>&1
shape="data_dir: \"$work/data\" seq_len: 128 global_batch: 8 micro_batch: 4 warmup_steps: 1 lr: 2e-3
  dtype: \"float32\" log_every: 4"
common="$shape steps: 8 eval_sequences: 16 eval_every: 8"
"$train" --set "$common model_dir: \"$work/moe\" output_dir: \"$work/L1\" trainable: LORA_ADAPTERS" \
  >"$work/L1.out" 2>"$work/L1.err" || { cat "$work/L1.err"; exit 1; }
"$train" --set "$common model_dir: \"$work/moe\" output_dir: \"$work/L2\" trainable: LORA_AND_LEARNED" \
  >"$work/L2.out" 2>"$work/L2.err" || { cat "$work/L2.err"; exit 1; }
"$convert" --input "$model" --output "$work/moe_exact" --dtype float32 \
  --set "lora_rank: 4 router_init: COMPLEMENTARY noise_scale: 0" >/dev/null 2>&1
"$train" --set "$shape model_dir: \"$work/moe_exact\" output_dir: \"$work/L3\" trainable: LORA_AND_LEARNED steps: 2
  eval_sequences: 4 distill_weight: 1.0" >"$work/L3.out" 2>"$work/L3.err" || { cat "$work/L3.err"; exit 1; }

PYTHONPATH="$(dirname "$0")" python3 - "$work" <<'PY'
import json, sys
from checkpoint_bytes import tensors
work = sys.argv[1]

def final(run):
    return f"{work}/{run}/" + open(f"{work}/{run}/latest").read().strip()

def heldout(run):
    return [json.loads(l)["heldout_loss"] for l in open(f"{work}/{run}/metrics.jsonl") if "heldout_loss" in l]

fails = []
src = tensors(f"{work}/moe")
adapters = {k for k in src if ".frozen_lora." in k}
if len(adapters) != 4 * 6:
    fails.append(f"expected 6 adapter tensors in each of 4 layers, found {len(adapters)}")
for run, must_change, may_change in [
        ("L1", adapters, set()),
        ("L2", adapters | {k for k in src if "learned_experts" in k or k.endswith("router.weight")},
         {k for k in src if k.endswith("expert_bias")})]:
    out = tensors(final(run))
    if set(out) != set(src):
        fails.append(f"{run}: checkpoint tensor names differ from the source")
        continue
    changed = {k for k in src if src[k] != out[k]}
    h = heldout(run)
    print(f"{run}: {len(changed)} of {len(src)} tensors changed; held-out loss {h[0]:.4f} -> {h[-1]:.4f}")
    if changed - must_change - may_change:
        fails.append(f"{run}: tensors that must stay fixed changed: {sorted(changed - must_change - may_change)[:5]}")
    if must_change - changed:
        fails.append(f"{run}: tensors that should train did not change: {sorted(must_change - changed)[:5]}")
    # 8 steps at this rate: the adapters alone must already lower the loss.
    if run == "L1" and not h[-1] < h[0]:
        fails.append(f"{run}: held-out loss did not fall: {h}")
kl = [json.loads(l)["distill_kl"] for l in open(f"{work}/L3/metrics.jsonl") if "distill_kl" in l]
print(f"L3: distillation KL per step {kl}")
if not (kl and abs(kl[0]) < 1e-6):
    fails.append(f"L3: the first step's KL to the dense model is not ~0: {kl}")
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
PY

# Bad input: one line each, nothing written.
expect_error "rank above the matrix size" "lora_rank 257 must be between 1 and 128" \
  "$convert" --input "$model" --output "$work/never1" --set "lora_rank: 257"
expect_error "negative rank" "lora_rank must be >= 0" \
  "$convert" --input "$model" --output "$work/never2" --set "lora_rank: -1"
expect_error "alpha without a rank" "lora_alpha is set but lora_rank is 0" \
  "$convert" --input "$model" --output "$work/never3" --set "lora_alpha: 16"
"$convert" --input "$model" --output "$work/moe_plain" --dtype float32 >/dev/null 2>&1
expect_error "LoRA training without adapters" "nothing to train in .* with trainable: LORA_ADAPTERS" \
  "$train" --set "$common model_dir: \"$work/moe_plain\" output_dir: \"$work/never4\" trainable: LORA_ADAPTERS"
cp -r "$work/moe" "$work/moe_rank0" && chmod -R u+w "$work/moe_rank0"
sed -i 's/"lora_rank": *8/"lora_rank": 0/' "$work/moe_rank0/config.json"
expect_error "config.json with rank 0" "'moe.lora_rank' is 0" \
  "$train" --set "$common model_dir: \"$work/moe_rank0\" output_dir: \"$work/never5\" trainable: LORA_ADAPTERS"
[ "$failures" -eq 0 ] || exit 1
echo "LoRA: ok"
