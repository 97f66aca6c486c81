#!/usr/bin/env bash
# Runs `inspect --verify` on every case of tests/malformed and checks that each fails cleanly:
# exit code 1 or 2 (not a signal or sanitizer abort), exactly one error line on stderr that
# contains the expected substrings (file and tensor names), and that the valid controls (a dense
# and an MoE directory) pass.
set -u
inspect="$1"
corpus="$(dirname "$2")"
fails=0
cases=0
while IFS=$'\t' read -r name subs; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  cases=$((cases + 1))
  err=$("$inspect" --model "$corpus/$name" --verify 2>&1 >/dev/null)
  rc=$?
  if [[ $rc -ne 1 && $rc -ne 2 ]]; then
    echo "FAIL $name: exit code $rc (expected 1 or 2); stderr: $err"
    fails=$((fails + 1))
    continue
  fi
  lines=$(printf '%s\n' "$err" | grep -c .)
  if [[ $lines -ne 1 || "$err" != "inspect: error: "* ]]; then
    echo "FAIL $name: expected one 'inspect: error:' line, got $lines: $err"
    fails=$((fails + 1))
    continue
  fi
  IFS=$'\t' read -r -a parts <<<"$subs"
  for s in "${parts[@]}"; do
    if [[ "$err" != *"$s"* ]]; then
      echo "FAIL $name: message lacks '$s': $err"
      fails=$((fails + 1))
    fi
  done
  echo "ok   $name: $err"
done <"$corpus/EXPECTED"
for control in valid_control valid_moe_control; do
  if ! out=$("$inspect" --model "$corpus/$control" --verify 2>&1); then
    echo "FAIL $control: $out"
    fails=$((fails + 1))
  fi
done
echo "$cases malformed cases, $fails failures"
[[ $cases -ge 20 && $fails -eq 0 ]]
