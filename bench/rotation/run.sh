#!/usr/bin/env bash
# p99 request latency during certificate rotation next to p99 without rotation, in one run.
# Builds trellis-control-plane, trellisctl and trellis-proxy, then runs bench.py: two phases on a
# fresh mesh each (TTL 1h, then TTL 2s), same fixed-rate keepalive load. See bench/rotation/README.md.
#
# Environment (all optional):
#   RATE=500          requests per second (open loop)
#   CONNS=4           keepalive connections carrying them
#   DURATION=20       seconds of measured load per phase
#   WARMUP=2          seconds of unmeasured load per phase
#   ROTATING_TTL=2s   --requested_ttl of the rotating phase (the control plane runs --min_ttl=1s)
#   BUILD_FLAGS=""    extra bazel build flags, e.g. -c opt
#   OUTPUT_BASE=/var/cache/trellis-bazel/bench-rotation   Bazel --output_base
#   NO_BUILD=0        1: use BIN_DIR's binaries as they are
#   BIN_DIR           where the three binaries are (default: bazel-bin of OUTPUT_BASE)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUTPUT_BASE=${OUTPUT_BASE:-/var/cache/trellis-bazel/bench-rotation}
NO_BUILD=${NO_BUILD:-0}
BUILD_FLAGS=${BUILD_FLAGS:-}

if ! command -v python3 >/dev/null 2>&1; then
  echo "bench/rotation: python3 is needed (apt-get install python3)" >&2
  exit 1
fi

if [[ "$NO_BUILD" != 1 ]]; then
  # shellcheck disable=SC2086
  bazel --output_base="$OUTPUT_BASE" build $BUILD_FLAGS \
    //control-plane:trellis-control-plane //cli:trellisctl //proxy:trellis-proxy >&2
  BIN_DIR=${BIN_DIR:-$(bazel --output_base="$OUTPUT_BASE" info $BUILD_FLAGS bazel-bin 2>/dev/null)}
fi
BIN_DIR=${BIN_DIR:?set BIN_DIR (the directory holding control-plane/, cli/ and proxy/ binaries)}

export TEST_TMPDIR=${TEST_TMPDIR:-$(mktemp -d /tmp/bench-rotation.XXXXXX)}
echo "bench/rotation: binaries from $BIN_DIR, work files in $TEST_TMPDIR" >&2
exec python3 "$ROOT/bench/rotation/bench.py" \
  "$BIN_DIR/control-plane/trellis-control-plane" "$BIN_DIR/cli/trellisctl" "$BIN_DIR/proxy/trellis-proxy"
