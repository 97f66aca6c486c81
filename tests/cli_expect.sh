# Shared by the command-line bad-input tests (sourced): a failure count, and the check that a
# command fails cleanly. Needs $work; outputs a case must never write are named $work/never*.
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect_error WHAT PATTERN COMMAND...: the command exits non-zero with exactly one stderr line,
# matching PATTERN, and writes nothing named $work/never*.
expect_error() {
  local what="$1" pattern="$2"; shift 2
  if "$@" >"$work/out" 2>"$work/err"; then
    fail "$what: exit status 0"
  elif [ "$(grep -c . "$work/err")" -ne 1 ] || ! grep -q -- "$pattern" "$work/err"; then
    fail "$what: stderr is not one line matching '$pattern':"; cat "$work/err"
  else
    echo "ok   $what: $(cat "$work/err")"
  fi
  if ls "$work" | grep -q "^never"; then fail "$what: something was written"; fi
  return 0
}
