#!/usr/bin/env bash
# End to end continued pretraining on real text (Brown corpus, real Llama 3 tokenizer):
#  A: 1 process, 20 steps (global batch 8 = 2 micro-steps of 4);
#  B: 2 processes launched by `torchrun --no_python` (Gloo), same global batch (micro-batch 2);
#  C: like A but interrupted after 8 steps and resumed from its checkpoint.
# Checks: B's losses equal A's to 1e-5 relative and its two ranks hold identical router biases;
# C's losses equal A's exactly; frozen experts, attention, norms, embeddings and head are
# bit-for-bit unchanged; held-out loss falls; optimizer state per rank halves with 2 ranks;
# D: activation checkpointing gives the same losses; E: a NaN loss stops the run cleanly;
# A keeps only its 2 newest checkpoints; K: distillation toward the dense model (its KL starts at
# ~0 for a conversion that equals the dense model).
set -euo pipefail
prepare="$1"; make_tiny="$2"; convert="$3"; train="$4"; tokenizer="$5"; brown="$(dirname "$6")"
work="${TEST_TMPDIR:-$(mktemp -d)}/train_e2e"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1

"$prepare" --tokenizer "$tokenizer" --input "$brown" --format brown --max_documents 60 \
  --heldout_fraction 0.1 --output "$work/data" >/dev/null
"$make_tiny" --output "$work/dense" --vocab 128256 --hidden 64 --intermediate 128 --layers 2 \
  --heads 4 --kv_heads 2 --seed 3 >/dev/null
"$convert" --input "$work/dense" --output "$work/moe" 2>/dev/null >/dev/null

common="model_dir: \"$work/moe\" data_dir: \"$work/data\" steps: 20 seq_len: 64 global_batch: 8
  warmup_steps: 2 lr: 1e-2 dtype: \"float32\" eval_sequences: 32 log_every: 10"

"$train" --set "$common output_dir: \"$work/A\" micro_batch: 4 eval_every: 20 checkpoint_every: 5 keep_checkpoints: 2" \
  >"$work/A.out" 2>"$work/A.err"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
torchrun --no_python --nproc_per_node=2 --redirects 1 --tee 1 --master_addr 127.0.0.1 --master_port "$port" \
  "$train" --set "$common output_dir: \"$work/B\" micro_batch: 2 eval_every: 20" >"$work/B.out" 2>"$work/B.err" || {
  cat "$work/B.err" "$work/B.out"; exit 1; }

"$train" --set "$common output_dir: \"$work/C\" micro_batch: 4" --stop_after_steps 8 >"$work/C1.out" 2>"$work/C1.err"
"$train" --set "$common output_dir: \"$work/C\" micro_batch: 4" --resume >"$work/C2.out" 2>"$work/C2.err"
# D: activation checkpointing recomputes each layer in the backward pass: same losses.
"$train" --set "$common output_dir: \"$work/D\" micro_batch: 4 activation_checkpointing: true" \
  --stop_after_steps 4 >"$work/D.out" 2>"$work/D.err"

# E: a diverging run (absurd learning rate) stops at the first non-finite loss, naming the step,
# and leaves the last good checkpoint as `latest`.
if "$train" --set "model_dir: \"$work/moe\" data_dir: \"$work/data\" steps: 20 seq_len: 64 global_batch: 8
    dtype: \"float32\" output_dir: \"$work/E\" micro_batch: 8 lr: 1e30 warmup_steps: 0 checkpoint_every: 1" \
    >"$work/E.out" 2>"$work/E.err"; then
  echo "FAIL: a diverging run exited 0"; exit 1
fi
grep -q "train: error: step 2: training loss is nan" "$work/E.err" || { echo "FAIL: no clear NaN message:"; cat "$work/E.err"; exit 1; }
[ "$(cat "$work/E/latest")" = "step-000001" ] || { echo "FAIL: latest is not the last good checkpoint"; exit 1; }
echo "diverging run: $(tail -n 1 "$work/E.err")"

# F: --plan prints the plan and exits; a run whose plan exceeds the memory there is stops before
# allocating, naming the knobs.
"$train" --set "$common output_dir: \"$work/F\" micro_batch: 4" --plan >"$work/F.out" 2>"$work/F.err"
tail -n 1 "$work/F.out" | grep -Eq "^plan: peak per rank [0-9]+ bytes" || { echo "FAIL: --plan:"; cat "$work/F.out" "$work/F.err"; exit 1; }
if "$train" --set "model_dir: \"$work/moe\" data_dir: \"$work/data\" output_dir: \"$work/G\" seq_len: 1000
    global_batch: 100000 micro_batch: 100000 dtype: \"float32\"" \
    >"$work/G.out" 2>"$work/G.err"; then
  echo "FAIL: a run far beyond the machine's memory started"; exit 1
fi
grep -q "the memory plan needs" "$work/G.err" && grep -q "micro_batch" "$work/G.err" || {
  echo "FAIL: no clear refusal:"; cat "$work/G.err"; exit 1; }
echo "plan: $(tail -n 1 "$work/F.out"); refused: $(head -c 200 "$work/G.err")"
if "$train" --set "model_dir: \"$work/moe\" data_dir: \"$work/data\" output_dir: \"$work/H\" seq_len: 2000
    global_batch: 8 micro_batch: 4 dtype: \"float32\"" >"$work/H.out" 2>"$work/H.err"; then
  echo "FAIL: seq_len beyond the context was accepted"; exit 1
fi
grep -q "longer than the context" "$work/H.err" || { echo "FAIL: unclear seq_len error:"; cat "$work/H.err"; exit 1; }

# K: distillation toward the dense model (its identity routing). A COMPLEMENTARY conversion with
# exact learned copies equals the dense model in routed mode, so the first step's KL is ~0; it
# grows as training moves the model, and a step of weight 0 measures none.
"$convert" --input "$work/dense" --output "$work/moe_exact" --set "router_init: COMPLEMENTARY noise_scale: 0" \
  --dtype float32 >/dev/null 2>&1
"$train" --set "model_dir: \"$work/moe_exact\" data_dir: \"$work/data\" output_dir: \"$work/K\" steps: 3 seq_len: 64
  global_batch: 8 micro_batch: 4 warmup_steps: 1 lr: 1e-2 dtype: \"float32\" eval_sequences: 8
  distill_weight: 1.0 distill_weight_end: 0.0" >"$work/K.out" 2>"$work/K.err" || {
  echo "FAIL: distillation run:"; cat "$work/K.err"; exit 1; }
python3 - "$work/K/metrics.jsonl" <<'KD'
import json, math, sys
kl = {d["step"]: d.get("distill_kl") for d in map(json.loads, open(sys.argv[1])) if "loss" in d and "step" in d}
print(f"distillation KL per step: {kl}")
ok = kl[1] is not None and kl[1] < 1e-6 and kl[2] is not None and math.isfinite(kl[2]) and kl[2] > kl[1] and kl[3] is None
sys.exit(0 if ok else 1)
KD
if "$train" --set "model_dir: \"$work/dense\" data_dir: \"$work/data\" output_dir: \"$work/L\" steps: 1 seq_len: 64
    global_batch: 8 micro_batch: 4 trainable: ALL distill_weight: 1.0" >"$work/L.out" 2>"$work/L.err"; then
  echo "FAIL: distillation of a dense model was accepted"; exit 1
fi
grep -q "distill_weight needs an MoE model" "$work/L.err" || { echo "FAIL: unclear distill error:"; cat "$work/L.err"; exit 1; }

PYTHONPATH="$(dirname "$0")" python3 - "$work" <<'PY'
import json, sys
from checkpoint_bytes import tensors
work = sys.argv[1]

def losses(run):
    out = {}
    for line in open(f"{work}/{run}/metrics.jsonl"):
        m = json.loads(line)
        if "loss" in m:
            out[m["step"]] = m["loss"]
    return out

def heldout(run):
    return {m["step"]: m["heldout_loss"] for m in map(json.loads, open(f"{work}/{run}/metrics.jsonl")) if "heldout_loss" in m}

fails = []
A, B, C = losses("A"), losses("B"), losses("C")
assert sorted(A) == list(range(1, 21)), sorted(A)
worst = max(abs(A[s] - B[s]) / abs(A[s]) for s in A)
print(f"2 ranks vs 1: {len(A)} steps, max relative loss difference {worst:.2e}")
if sorted(B) != sorted(A) or worst > 1e-5:
    fails.append(f"2-rank losses differ from 1-rank: {worst}")
sums = [l.split("router bias checksum ")[1].split(",")[0] for l in open(f"{work}/B.out") if "router bias checksum" in l]
print("router bias checksums per rank:", sums)
if len(sums) != 2 or sums[0] != sums[1]:
    fails.append(f"ranks disagree on router biases: {sums}")
opt = [float(l.split("optimizer state ")[1].split(" MB")[0]) for l in open(f"{work}/B.out") if "optimizer state" in l]
opt1 = [float(l.split("optimizer state ")[1].split(" MB")[0]) for l in open(f"{work}/A.out") if "optimizer state" in l]
print(f"optimizer state per rank: 1 rank {opt1} MB, 2 ranks {opt} MB")
if not opt or not opt1 or max(opt) > 0.51 * opt1[0] + 0.01:
    fails.append("optimizer state did not halve with 2 ranks")
import os
kept = sorted(d for d in os.listdir(f"{work}/A") if d.startswith("step-"))
print("checkpoints kept (keep_checkpoints: 2):", kept)
if kept != ["step-000015", "step-000020"]:
    fails.append(f"keep_checkpoints: 2 left {kept}")
print("resume:", "equal" if C == A else "DIFFERENT")
if C != A:
    fails.append("interrupted+resumed losses differ: " + str([(s, A[s], C.get(s)) for s in A if A[s] != C.get(s)][:3]))
D = losses("D")
worst_d = max(abs(A[s] - D[s]) / abs(A[s]) for s in D)
print(f"activation checkpointing: {len(D)} steps, max relative loss difference {worst_d:.2e}")
if sorted(D) != [1, 2, 3, 4] or worst_d > 1e-5:
    fails.append(f"activation checkpointing changes the losses: {worst_d}")
h = heldout("A")
print(f"held-out loss {h.get(0)} -> {h.get(20)}")
if not (0 in h and 20 in h and h[20] < h[0] - 0.3):
    fails.append(f"held-out loss did not fall: {h}")
src, out = tensors(f"{work}/moe"), tensors(f"{work}/A/step-000020")
if set(src) != set(out):
    fails.append("checkpoint tensor names differ from the source")
changed = sorted(k for k in src if src[k] != out.get(k))
frozen_changed = [k for k in changed if "learned_experts" not in k and not k.endswith("router.weight") and not k.endswith("expert_bias")]
print(f"tensors changed by training: {len(changed)} of {len(src)}")
if frozen_changed:
    fails.append(f"tensors that must stay fixed changed: {frozen_changed}")
if not any("learned_experts" in k for k in changed) or not any(k.endswith("router.weight") for k in changed):
    fails.append("learned experts or routers did not change")
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
PY
