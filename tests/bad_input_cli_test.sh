#!/usr/bin/env bash
# Bad input to the command-line tools: each case must end in exactly one error line on stderr
# that names what is wrong, and a non-zero exit, and leave no output behind.
set -u
make_tiny="$1"; convert="$2"; logit_match="$3"; evaluate="$4"; generate="$5"; prepare="$6"; tokenizer="$7"
brown="$(dirname "$8")"
work="${TEST_TMPDIR:-$(mktemp -d)}/bad_input"
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/cli_expect.sh"

"$make_tiny" --output "$work/dense" --seed 1 >/dev/null
"$make_tiny" --output "$work/dense_wide" --vocab 600 --seed 2 >/dev/null
"$convert" --input "$work/dense" --output "$work/moe" >/dev/null 2>&1
"$convert" --input "$work/dense" --output "$work/moe_frozen_only" --set "num_learned_experts: 0" >/dev/null 2>&1
"$prepare" --tokenizer "$tokenizer" --input "$brown" --format brown --max_documents 4 --output "$work/data" >/dev/null

expect_error "convert: negative --seed" "--seed -5 is negative" \
  "$convert" --input "$work/dense" --output "$work/never" --seed -5
[ -e "$work/never" ] && fail "convert wrote an output for a rejected --seed"
expect_error "convert: COMPLEMENTARY router with noisy learned experts" "COMPLEMENTARY needs learned experts that are exact copies" \
  "$convert" --input "$work/dense" --output "$work/never" --set "router_init: COMPLEMENTARY noise_scale: 0.2"
[ -e "$work/never" ] && fail "convert wrote an output for a rejected recipe"
expect_error "logit_match: vocabularies differ" "has vocabulary 512, --dense 600" \
  "$logit_match" --dense "$work/dense_wide" --moe "$work/moe" --tokens 1,2,3
expect_error "generate: learned_only without learned experts" "has no learned experts" \
  "$generate" --model "$work/moe_frozen_only" --routing learned_only --tokens 1,2,3 --max_new_tokens 2
expect_error "evaluate: learned_only without learned experts" "has no learned experts" \
  "$evaluate" --model "$work/moe_frozen_only" --routing learned_only --data "$work/data" --seq_len 16
expect_error "evaluate: data tokenized with a larger vocabulary" "vocabulary of 128256, larger than the model's 512" \
  "$evaluate" --model "$work/moe" --data "$work/data" --seq_len 16
echo "$failures failure(s)"
[ "$failures" -eq 0 ]
