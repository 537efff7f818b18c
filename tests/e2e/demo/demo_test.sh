#!/bin/bash
# Runs demo_test.py (the local mesh demo, end to end) with python3.
# Usage: demo_test.sh DEMO_TEST_PY MODE DEMO_PY CONTROL_PLANE PROXY TRELLISCTL TRELLIS_INIT
set -u
if ! command -v python3 >/dev/null 2>&1; then
  echo "FAIL: python3 is not on PATH: install python3 (scripts/test does)" >&2
  exit 1
fi
exec python3 "$@"
