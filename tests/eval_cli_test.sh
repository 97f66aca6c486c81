#!/usr/bin/env bash
# End-to-end check of //eval:generate and //eval:logits on a random model from
# //tools:make_tiny_llama: the first greedy token that `generate` prints must be the argmax of the
# last row that `logits` writes, and bad input must end in one error line and a non-zero exit.
set -euo pipefail
BIN="${TEST_SRCDIR}/llama_moe_cc"
TMP="${TEST_TMPDIR}"
"$BIN/tools/make_tiny_llama" --output "$TMP/tiny" --shards 2 --dtype bf16 --seed 3 >/dev/null

TOKENS=5,17,300,42,9,111
"$BIN/eval/logits" --model "$TMP/tiny" --tokens "$TOKENS" --output "$TMP/l.safetensors" --dtype float32
GEN=$("$BIN/eval/generate" --model "$TMP/tiny" --tokens "$TOKENS" --max_new_tokens 5 --dtype float32 2>"$TMP/gen.err")
grep -q "^prefill: 6 tokens" "$TMP/gen.err" || { cat "$TMP/gen.err"; exit 1; }
grep -q "^decode: 4 tokens" "$TMP/gen.err" || { cat "$TMP/gen.err"; exit 1; }

python3 - "$TMP/l.safetensors" "$GEN" <<'PY'
import array, json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
t, v = header["logits"]["shape"]
assert header["logits"]["dtype"] == "F32" and t == 6 and v == 512, header
values = array.array("f")
values.frombytes(data[8 + n:])
last = values[(t - 1) * v:t * v]
argmax = max(range(v), key=lambda i: (last[i], -i))
first = int(sys.argv[2].split(",")[0])
assert argmax == first, (argmax, sys.argv[2])
assert max(last) - min(last) > 1.0, "logits should be far from uniform"
PY

# Errors: one line on stderr, non-zero exit.
if "$BIN/eval/generate" --model "$TMP/tiny" --tokens 1,2,512 2>"$TMP/err"; then exit 1; fi
[ "$(wc -l <"$TMP/err")" -eq 1 ] && grep -q "outside the vocabulary" "$TMP/err" || { cat "$TMP/err"; exit 1; }
if "$BIN/eval/generate" --model "$TMP/tiny" --tokens 1,2,3 --max_context 2 2>"$TMP/err"; then exit 1; fi
grep -q "more than the context of 2 tokens" "$TMP/err" || { cat "$TMP/err"; exit 1; }
if "$BIN/eval/logits" --model "$TMP/missing" --tokens 1 --output "$TMP/x.safetensors" 2>"$TMP/err"; then exit 1; fi
[ "$(wc -l <"$TMP/err")" -eq 1 ] || { cat "$TMP/err"; exit 1; }
echo PASS
