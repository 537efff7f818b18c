#!/bin/bash
# Runs app_probes_test.py (the real trellis-proxy serving app probes) with python3.
# Usage: app_probes_test.sh APP_PROBES_TEST_PY TRELLIS_PROXY
set -u
for tool in openssl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "FAIL: $tool is not on PATH: install openssl/python3 (scripts/test does)" >&2
    exit 1
  fi
done
exec python3 "$@"
