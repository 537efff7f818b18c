#!/bin/bash
# Runs process_test.py (the real trellis-control-plane, end to end) with python3.
# Usage: process_test.sh PROCESS_TEST_PY CONTROL_PLANE TRELLISCTL MAIN_CC
set -u
for tool in openssl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "FAIL: $tool is not on PATH: install $tool (scripts/test does)" >&2
    exit 1
  fi
done
exec python3 "$@"
