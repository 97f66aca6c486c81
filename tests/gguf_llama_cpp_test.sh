#!/usr/bin/env bash
# GGUF export checked in llama.cpp itself: each exported file must load in llama.cpp and give this
# project's tokens (Brown corpus text), logits (float32: <= 1e-4 relative) and 32 greedy tokens.
#   - the shipped model (dense, its own small BPE vocabulary);
#   - a tiny dense model with the real Llama 3 tokenizer, llama3 RoPE scaling, a tied head and two
#     shards;
#   - the shipped model converted to an MoE with the default recipe (llama architecture);
#   - that MoE trained for a few steps, so its selection bias is non-zero (ernie4_5-moe);
#   - f16 and bf16 exports (looser: llama.cpp rounds activations to the weights' type).
# Then the bad inputs: each one clean error line, a non-zero exit, nothing written.
set -u
export_bin="$1"; check="$2"; convert="$3"; make_tiny="$4"; prepare="$5"; train="$6"; shipped="$(dirname "$7")"
llama3_tokenizer="$8"; brown="$(dirname "$9")"; backends="$(dirname "${10}")"; train_config="${11}"
work="${TEST_TMPDIR:-$(mktemp -d)}/gguf"
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/cli_expect.sh"

# Brown corpus text without its tags, one sentence per line: ca01..ca03.
python3 - "$brown" "$work/brown.txt" <<'PY'
import os, sys
words = []
for name in ("ca01", "ca02", "ca03"):
    words += [w.rsplit("/", 1)[0] for w in open(os.path.join(sys.argv[1], name)).read().split()]
text = " ".join(words).replace(" . ", ".\n").replace(" , ", ", ")
open(sys.argv[2], "w").write(text)
PY

# check NAME MODEL_DIR EXPORT_FLAGS... -- CHECK_FLAGS...
check() {
  local name="$1" dir="$2"; shift 2
  local eflags=() cflags=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do eflags+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  cflags=("$@")
  if ! "$export_bin" --model "$dir" --format gguf --output "$work/$name.gguf" "${eflags[@]}" >"$work/$name.export" 2>&1; then
    fail "$name: export failed"; cat "$work/$name.export"; return
  fi
  if "$check" --gguf "$work/$name.gguf" --model "$dir" --backend_dir "$backends" --text_file "$work/brown.txt" \
      "${cflags[@]}" >"$work/$name.check" 2>&1; then
    echo "ok   $name: $(head -n1 "$work/$name.export")"; sed 's/^/       /' "$work/$name.check"
  else
    fail "$name"; cat "$work/$name.export" "$work/$name.check"
  fi
}

check shipped_f32 "$shipped" --dtype f32
"$make_tiny" --output "$work/tiny128k" --vocab 128256 --hidden 64 --intermediate 128 --layers 2 --shards 2 --tie \
  --tokenizer "$llama3_tokenizer" >/dev/null
check llama3_tokenizer_f32 "$work/tiny128k" --dtype f32
grep -q "as llama" "$work/llama3_tokenizer_f32.export" || fail "tiny128k: not exported as llama"

"$convert" --input "$shipped" --output "$work/moe" --dtype float32 >/dev/null 2>&1 || fail "convert"
check moe_f32 "$work/moe" --dtype f32
grep -q "as llama" "$work/moe_f32.export" || fail "converted MoE: not exported as llama"

"$prepare" --tokenizer "$shipped/tokenizer.json" --input "$brown" --format brown --max_documents 20 \
  --heldout_fraction 0.1 --output "$work/data" >/dev/null 2>&1 || fail "prepare_data"
"$train" --config "$train_config" --set "model_dir: \"$work/moe\" data_dir: \"$work/data\" output_dir: \"$work/train\"
  steps: 3 eval_every: 3 global_batch: 8 micro_batch: 8 warmup_steps: 1 eval_sequences: 4" >"$work/train.log" 2>&1 ||
  { fail "train"; cat "$work/train.log"; }
trained="$work/train/$(cat "$work/train/latest")"
check trained_moe_f32 "$trained" --dtype f32
grep -q "as ernie4_5-moe" "$work/trained_moe_f32.export" || fail "trained MoE: not exported as ernie4_5-moe"
check moe_f16 "$work/moe" --dtype f16 -- --tolerance 2e-3 --greedy_tokens 0
check moe_bf16 "$work/moe" --dtype bf16 -- --tolerance 0.2 --greedy_tokens 0

# LoRA adapters trained on the frozen experts (nothing else moves, the selection bias included):
# llama.cpp has no per-expert adapters, so the export merges them into the frozen experts.
"$convert" --input "$shipped" --output "$work/moe_lora" --dtype float32 --set "lora_rank: 8" >/dev/null 2>&1 ||
  fail "convert with LoRA"
"$train" --config "$train_config" --set "model_dir: \"$work/moe_lora\" data_dir: \"$work/data\"
  output_dir: \"$work/train_lora\" trainable: LORA_ADAPTERS lr: 1e-3 steps: 3 eval_every: 3 global_batch: 8
  micro_batch: 8 warmup_steps: 1 eval_sequences: 4" >"$work/train_lora.log" 2>&1 ||
  { fail "train LoRA"; cat "$work/train_lora.log"; }
check lora_moe_f32 "$work/train_lora/$(cat "$work/train_lora/latest")" --dtype f32
grep -q "LoRA adapters (rank 8, alpha 16) merged" "$work/lora_moe_f32.export" || fail "LoRA export: no merge note"

# Bad input.
expect_error "unknown format" "unknown export format 'onnx'" \
  "$export_bin" --model "$shipped" --format onnx --output "$work/never.onnx"
expect_error "existing output" "exists (pass --overwrite" \
  "$export_bin" --model "$shipped" --format gguf --output "$work/shipped_f32.gguf"
expect_error "malformed source: no weights" "has neither model.safetensors" \
  "$export_bin" --model "$work/data" --format gguf --output "$work/never.gguf"
mkdir -p "$work/bad_config" && cp "$shipped"/* "$work/bad_config/" && chmod -R u+w "$work/bad_config"
echo '{"hidden_size": 256,' >"$work/bad_config/config.json"
expect_error "malformed source: truncated config.json" "config.json" \
  "$export_bin" --model "$work/bad_config" --format gguf --output "$work/never.gguf"
cp "$shipped/config.json" "$work/bad_config/config.json" && chmod u+w "$work/bad_config/config.json"
echo '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []' >"$work/bad_config/tokenizer.json"
expect_error "malformed source: truncated tokenizer.json" "tokenizer.json" \
  "$export_bin" --model "$work/bad_config" --format gguf --output "$work/never.gguf"
expect_error "missing source" "does not exist" \
  "$export_bin" --model "$work/nonexistent" --format gguf --output "$work/never.gguf"
expect_error "hf_mixtral of a dense model" "hf_mixtral holds MoE models only" \
  "$export_bin" --model "$shipped" --format hf_mixtral --output "$work/never_mixtral"
expect_error "hf_mixtral of a biased model" "non-zero selection bias" \
  "$export_bin" --model "$trained" --format hf_mixtral --output "$work/never_mixtral"
# No exact GGUF form: a trained bias together with llama3 RoPE factors.
cp -r "$trained" "$work/rope_trained"
python3 - "$work/rope_trained/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 256}
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
expect_error "approximate without --allow_approximate" "Pass --allow_approximate" \
  "$export_bin" --model "$work/rope_trained" --format gguf --output "$work/never.gguf"
if "$export_bin" --model "$work/rope_trained" --format gguf --output "$work/approx.gguf" --allow_approximate \
    >"$work/approx.out" 2>&1 && grep -q "approximate" "$work/approx.out" && grep -q "KL" "$work/approx.out"; then
  echo "ok   approximate with --allow_approximate: $(tail -n1 "$work/approx.out")"
else
  fail "approximate export"; cat "$work/approx.out"
fi
ls "$work" | grep -q "\.tmp-" && fail "a temporary file was left behind"

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
