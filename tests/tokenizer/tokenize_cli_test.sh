#!/bin/bash
# End-to-end test of //tools:tokenize: its ids for the generated texts must equal tiktoken's
# (reference_ids.js), for both tokenizer formats; plain-text mode and error exits are checked too.
set -u
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
TOKENIZE="$(abs "$1")"; TOKENIZER_JSON="$(abs "$2")"; TIKTOKEN="$(abs "$3")"
TEXTS="$(abs "$4")"; EXPECTED="$(abs "$5")"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

for tok in "$TOKENIZER_JSON" "$TIKTOKEN"; do
  if ! "$TOKENIZE" --tokenizer "$tok" --input "$TEXTS" --jsonl > "$TMP/ids.txt"; then
    fail "tokenize --jsonl with $tok exited non-zero"
  elif ! cmp -s "$TMP/ids.txt" "$EXPECTED"; then
    fail "ids from $tok differ from tiktoken's:"
    diff "$TMP/ids.txt" "$EXPECTED" | head -6
  fi
done
echo "compared $(wc -l < "$EXPECTED") texts with each tokenizer format"

# Plain mode: one array per line; the final newline does not add an empty line; "\r" is text.
printf 'Hello world\n\n<|eot_id|>\r\nx' > "$TMP/plain.txt"
"$TOKENIZE" --tokenizer "$TOKENIZER_JSON" --input "$TMP/plain.txt" > "$TMP/plain_ids.txt" || fail "plain mode exited non-zero"
printf '[9906,1917]\n[]\n[27,91,68,354,851,91,29,201]\n[87]\n' > "$TMP/plain_expected.txt"
cmp -s "$TMP/plain_ids.txt" "$TMP/plain_expected.txt" || { fail "plain mode output"; cat "$TMP/plain_ids.txt"; }

# Relative paths resolve against BUILD_WORKING_DIRECTORY, as under `bazel run`.
(cd / && BUILD_WORKING_DIRECTORY="$TMP" "$TOKENIZE" --tokenizer "$TOKENIZER_JSON" --input plain.txt > "$TMP/rel.txt") \
  || fail "relative --input under BUILD_WORKING_DIRECTORY"
cmp -s "$TMP/rel.txt" "$TMP/plain_expected.txt" || fail "relative --input output"

# Errors: non-zero exit and one line on stderr naming the problem.
expect_error() {  # expect_error WHAT PATTERN ARGS...
  local what="$1" pattern="$2"; shift 2
  if "$TOKENIZE" "$@" > /dev/null 2> "$TMP/err.txt"; then
    fail "$what: exit status 0"
  elif [ "$(wc -l < "$TMP/err.txt")" -ne 1 ] || ! grep -q -- "$pattern" "$TMP/err.txt"; then
    fail "$what: stderr is not one line matching '$pattern':"; cat "$TMP/err.txt"
  fi
}
echo '"ok"' > "$TMP/good.jsonl"
printf '"ok"\n{"a": 1}\n' > "$TMP/object.jsonl"
printf '"ok"\nnot json\n' > "$TMP/bad.jsonl"
echo 'not a tokenizer' > "$TMP/bad_tokenizer.model"
expect_error "missing tokenizer" "$TMP/none.json" --tokenizer "$TMP/none.json" --input "$TMP/good.jsonl"
expect_error "missing input" "$TMP/none.txt" --tokenizer "$TOKENIZER_JSON" --input "$TMP/none.txt"
expect_error "bad tokenizer" "bad_tokenizer.model" --tokenizer "$TMP/bad_tokenizer.model" --input "$TMP/good.jsonl"
expect_error "jsonl object" "line 2: expected a JSON string" --tokenizer "$TOKENIZER_JSON" --input "$TMP/object.jsonl" --jsonl
expect_error "jsonl syntax" "line 2: not valid JSON" --tokenizer "$TOKENIZER_JSON" --input "$TMP/bad.jsonl" --jsonl
expect_error "no flags" "required"

if [ "$failures" -ne 0 ]; then echo "$failures failure(s)"; exit 1; fi
echo "PASS"
