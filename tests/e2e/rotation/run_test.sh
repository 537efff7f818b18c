#!/bin/bash
# Runs one of the rotation end-to-end tests (a python3 script, standard library only).
# Usage: run_test.sh TEST_PY CONTROL_PLANE TRELLISCTL PROXY
set -u
if ! command -v python3 >/dev/null 2>&1; then
  echo "FAIL: python3 is not on PATH: install python3 (scripts/test does)" >&2
  exit 1
fi
exec python3 "$@"
