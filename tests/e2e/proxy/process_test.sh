#!/bin/bash
# Runs process_test.py (the real trellis-proxy, end to end) with python3.
# Usage: process_test.sh PROCESS_TEST_PY TRELLIS_PROXY MAIN_CC
set -u
for tool in openssl curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "FAIL: $tool is not on PATH: install openssl/curl (scripts/test does)" >&2
    exit 1
  fi
done
exec python3 "$@"
