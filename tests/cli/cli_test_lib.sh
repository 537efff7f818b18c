# Shared by the trellisctl shell tests; POSIX sh. Source it after setting
#   TRELLISCTL   the binary under test
#   TEST_NAME    names the work directory
#   CLI_TIMEOUT  optional bound on one trellisctl run, in seconds (default 120)
# It makes $WORK (removed on exit) and provides fail, run, expect_rc, expect_in, mode_of and
# finish (the last line of every test: exit 1 if any check failed).

WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/$TEST_NAME.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
FAILURES=0

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

# Runs trellisctl (bounded), keeping stdout, stderr and the exit code in $WORK/out, $WORK/err, $RC.
run() {
  timeout "${CLI_TIMEOUT:-120}" "$TRELLISCTL" "$@" >"$WORK/out" 2>"$WORK/err"
  RC=$?
}

expect_rc() {  # expect_rc WANT WHAT
  if [ "$RC" -ne "$1" ]; then
    fail "$2: exit code $RC, want $1; stdout: $(cat "$WORK/out"); stderr: $(cat "$WORK/err")"
  fi
}

expect_in() {  # expect_in FILE TEXT WHAT
  if ! grep -qF -- "$2" "$1"; then
    fail "$3: \"$2\" not in $(basename "$1"): $(cat "$1")"
  fi
}

mode_of() { stat -c %a "$1"; }

finish() {
  if [ "$FAILURES" -ne 0 ]; then
    echo "$FAILURES check(s) failed" >&2
    exit 1
  fi
  echo "PASS"
}
