#!/usr/bin/env bash
# Chat-format fine-tuning end to end on real text: conversations built from Brown corpus sentences
# (tools/brown_chat.py) become token shards in the Llama 3 chat format with a loss mask; the
# shipped model (dense, every parameter) and its MoE conversion (learned experts and routers) are
# fine-tuned on them; evaluation scores the assistant's tokens only. Bad chat data is refused.
set -euo pipefail
prepare="$1"; convert="$2"; train="$3"; evaluate="$4"; brown_chat="$5"; llama3_tokenizer="$6"
model="$(dirname "$7")"; brown="$(dirname "$8")"
work="${TEST_TMPDIR:-$(mktemp -d)}/chat_finetune"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1
source "$(dirname "$0")/cli_expect.sh"

python3 "$brown_chat" --brown "$brown" --files ca01,ca02,ca03,ca04,ca05,ca06 --conversations 200 \
  --output "$work/chat.jsonl"

# The real Llama 3 tokenizer (its chat tokens are the ones Llama 3 Instruct was trained with).
"$prepare" --tokenizer "$llama3_tokenizer" --format chat --heldout_fraction 0.1 --output "$work/data_llama3" \
  "$work/chat.jsonl" >"$work/prep3.out"
grep -Eq "^train +[0-9]+ documents .* [0-9]+ assistant tokens in the loss" "$work/prep3.out" || {
  fail "no assistant-token count:"; cat "$work/prep3.out"; }
# The shipped model's tokenizer, for the training runs below.
"$prepare" --tokenizer "$model/tokenizer.json" --format chat --heldout_fraction 0.1 --output "$work/data" \
  "$work/chat.jsonl" >"$work/prep.out"
cat "$work/prep.out"
heldout_assistant=$(awk '$1 == "heldout" {print $(NF-5)}' "$work/prep.out")
python3 - "$work/data/manifest.json" "$work/data_llama3/manifest.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    m = json.load(open(path))
    assert m["loss_mask"] is True and m["input_format"] == "chat", path
    assert m["splits"]["train"]["num_documents"] + m["splits"]["heldout"]["num_documents"] == 200, path
PY

"$convert" --input "$model" --output "$work/moe" >/dev/null 2>&1
common="data_dir: \"$work/data\" steps: 12 seq_len: 128 global_batch: 8 micro_batch: 4 warmup_steps: 2
  lr: 3e-4 dtype: \"float32\" eval_sequences: 64 eval_every: 12 log_every: 6"
"$train" --set "$common model_dir: \"$model\" output_dir: \"$work/dense_ft\" trainable: ALL" \
  >"$work/dense.out" 2>"$work/dense.err" || { cat "$work/dense.err"; exit 1; }
"$train" --set "$common model_dir: \"$work/moe\" output_dir: \"$work/moe_ft\"" \
  >"$work/moe.out" 2>"$work/moe.err" || { cat "$work/moe.err"; exit 1; }
grep -q "assistant tokens)" "$work/moe.err" || fail "the held-out note does not say it scores assistant tokens"
for run in dense_ft moe_ft; do
  python3 - "$work/$run/metrics.jsonl" "$heldout_assistant" "$run" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = [l for l in lines if "loss" in l]
evals = [l for l in lines if "heldout_loss" in l]
# Every step counts only assistant targets: fewer than the 8 x 128 it reads.
assert len(steps) == 12 and all(0 < l["loss_targets"] < 8 * 128 for l in steps), steps[0]
# The held-out split's assistant tokens, all of them scored (64 windows cover the split).
assert all(e["heldout_tokens"] == int(sys.argv[2]) for e in evals), (evals, sys.argv[2])
first, last = evals[0]["heldout_loss"], evals[-1]["heldout_loss"]
print("%s: held-out assistant-token loss %.4f -> %.4f over 12 steps (%d targets)" % (
    sys.argv[3], first, last, evals[-1]["heldout_tokens"]))
assert last < first, (first, last)
PY
done

# Evaluation on the chat split scores the same assistant tokens and says so.
"$evaluate" --model "$work/dense_ft/$(cat "$work/dense_ft/latest")" --data "$work/data" --seq_len 128 --max_windows 0 \
  --output "$work/eval.json" >/dev/null 2>"$work/eval.err" || { cat "$work/eval.err"; exit 1; }
python3 - "$work/eval.json" "$heldout_assistant" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
assert e["loss_mask"] is True and e["tokens"] == int(sys.argv[2]), (e["loss_mask"], e["tokens"])
PY

# Bad chat data: one line naming the file, the line and the problem; no output directory.
printf '%s\n' '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}' \
  '{"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}]}' >"$work/bad_role.jsonl"
printf '%s\n' '{"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]}' >"$work/no_reply.jsonl"
printf '%s\n' '{"messages": [{"role": "user", "content": "a"}' >"$work/truncated.jsonl"
expect_error "unknown role" "bad_role.jsonl' line 2: message 0 has role 'human'" \
  "$prepare" --tokenizer "$model/tokenizer.json" --format chat --output "$work/never1" "$work/bad_role.jsonl"
expect_error "no assistant turn" "no_reply.jsonl' line 1: the conversation has no assistant turn" \
  "$prepare" --tokenizer "$model/tokenizer.json" --format chat --output "$work/never2" "$work/no_reply.jsonl"
expect_error "truncated line" "truncated.jsonl' line 1 is not valid JSON" \
  "$prepare" --tokenizer "$model/tokenizer.json" --format chat --output "$work/never3" "$work/truncated.jsonl"
ls "$work" | grep -q "\.tmp-" && fail "a temporary directory was left behind"
[ "$failures" -eq 0 ] || exit 1
echo "chat fine-tuning: ok"
