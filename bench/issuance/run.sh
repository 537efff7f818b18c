#!/usr/bin/env bash
# The control plane's issuance benchmark, end to end: builds trellisctl, trellis-control-plane and
# issuance_load (-c opt), makes a CA and a JWKS in a temporary directory, starts the real control
# plane on 127.0.0.1 (free ports), runs the floor / issue / renewal-burst modes against it, and
# prints a summary. See bench/issuance/README.md.
#
# Environment (all optional):
#   DURATION=10        seconds of load per `issue` run
#   CLIENTS=32         concurrent clients for `issue`
#   RENEWALS=10000     renewals in the burst
#   BURST_CLIENTS=100  clients holding a certificate in the burst
#   FRESH_RENEWALS=2000  renewals in a third burst where every renewal opens a new TLS connection
#                      (a full handshake with the client certificate); 0 skips it
#   RENEWAL_CHAIN=full the client chain renewals present: full (leaf + intermediate, what a
#                      proxy sends), leaf, or leaf-twice (leaf, leaf, intermediate; kept for
#                      comparison with older figures, see README)
#   IDENTITIES=1024    distinct service accounts (one token each) for `issue`
#   PIN=1              1: control plane on CPU 0, load generator on the other CPUs (taskset);
#                      0: no pinning
#   CP_FLAGS=""        extra flags for trellis-control-plane
#   PERF=0             1: `perf record` the control plane during the best `issue` run
#   OUTPUT_BASE=/var/cache/trellis-bazel/bench-issuance   Bazel --output_base
#   BIN_DIR=""         use prebuilt binaries from this bazel-bin directory (cli/trellisctl,
#                      control-plane/trellis-control-plane, bench/issuance/issuance_load) instead of
#                      building: for A/B runs of two commits in the same conditions
#   KEEP=0             1: keep the temporary directory (logs, CA) for inspection
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
RENEWALS=${RENEWALS:-10000}
BURST_CLIENTS=${BURST_CLIENTS:-100}
IDENTITIES=${IDENTITIES:-1024}
FRESH_RENEWALS=${FRESH_RENEWALS:-2000}
RENEWAL_CHAIN=${RENEWAL_CHAIN:-full}
PIN=${PIN:-1}
CP_FLAGS=${CP_FLAGS:-}
PERF=${PERF:-0}
OUTPUT_BASE=${OUTPUT_BASE:-/var/cache/trellis-bazel/bench-issuance}
KEEP=${KEEP:-0}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

log() { echo "[bench/issuance] $*" >&2; }

command -v jq >/dev/null || { log "jq is required (apt-get install jq)"; exit 1; }

# --- build --------------------------------------------------------------------------------------
BIN_DIR=${BIN_DIR:-}
if [[ -n "$BIN_DIR" ]]; then
  log "using prebuilt binaries from $BIN_DIR"
  BIN=$BIN_DIR
else
  log "building (-c opt, output base $OUTPUT_BASE)"
  timeout 1800 bazel --output_base="$OUTPUT_BASE" build -c opt --symlink_prefix=/ \
    //cli:trellisctl //control-plane:trellis-control-plane //bench/issuance:issuance_load >&2
  BIN=$(bazel --output_base="$OUTPUT_BASE" info -c opt bazel-bin 2>/dev/null)
fi
TRELLISCTL=$BIN/cli/trellisctl
CP=$BIN/control-plane/trellis-control-plane
LOAD=$BIN/bench/issuance/issuance_load

# --- workspace and cleanup ----------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trellis-bench-issuance.XXXXXX")
CP_PID=""
PERF_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$PERF_PID" ]] && kill -0 "$PERF_PID" 2>/dev/null; then kill -INT "$PERF_PID" || true; fi
  if [[ -n "$CP_PID" ]] && kill -0 "$CP_PID" 2>/dev/null; then
    kill -TERM "$CP_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$CP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CP_PID" 2>/dev/null || true
  fi
  if [[ "$KEEP" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT INT TERM

NCPU=$(nproc)
CP_PIN=()
LOAD_PIN=()
if [[ "$PIN" == 1 && "$NCPU" -ge 2 ]] && command -v taskset >/dev/null; then
  CP_PIN=(taskset -c 0)
  LOAD_PIN=(taskset -c "1-$((NCPU - 1))")
  PINNING="control plane on CPU 0, load generator on CPUs 1-$((NCPU - 1)) (taskset)"
else
  PINNING="not pinned: control plane and load generator share $NCPU CPUs"
fi
log "$PINNING"

# --- CA, JWKS, tokens ---------------------------------------------------------------------------
"$TRELLISCTL" ca init --dir "$WORK/ca" >"$WORK/ca-init.log" 2>&1 || {
  mkdir -p "$WORK/ca" && "$TRELLISCTL" ca init --dir "$WORK/ca" >"$WORK/ca-init.log" 2>&1
}
"$LOAD" --mode=mint --work_dir="$WORK" 2>>"$WORK/ca-init.log"

# --- the control plane --------------------------------------------------------------------------
# The per-identity rate limit is raised so that it is not what is measured (each simulated
# service account would otherwise get 1/s); everything else is the default.
mkdir -p "$WORK/state"
"${CP_PIN[@]}" "$CP" --ca_dir="$WORK/ca" --jwks_file="$WORK/jwks.json" \
  --grpc_address=127.0.0.1:0 --admin_address=127.0.0.1:0 --state_dir="$WORK/state" \
  --per_identity_rate=1000000 --per_identity_burst=1000000 $CP_FLAGS \
  >"$WORK/cp.stdout" 2>"$WORK/cp.log" &
CP_PID=$!
GRPC_PORT=""
for _ in $(seq 100); do
  if line=$(grep -m1 '"listening"' "$WORK/cp.log" 2>/dev/null); then
    GRPC_PORT=$(jq -r '.grpc_port' <<<"$line")
    ADMIN_PORT=$(jq -r '.admin_port' <<<"$line")
    break
  fi
  kill -0 "$CP_PID" 2>/dev/null || { log "control plane exited:"; cat "$WORK/cp.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$GRPC_PORT" ]] || { log "no 'listening' line from the control plane"; cat "$WORK/cp.log" >&2; exit 1; }
log "control plane pid $CP_PID, gRPC 127.0.0.1:$GRPC_PORT, admin 127.0.0.1:$ADMIN_PORT"

cpu_of() {  # utime+stime of a pid, in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
TICKS=$(getconf CLK_TCK)

COMMON=(--ca_dir="$WORK/ca" --issuer_key="$WORK/issuer.key" --target="127.0.0.1:$GRPC_PORT"
        --server_pid="$CP_PID")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

run_mode() {  # name, then issuance_load flags; appends the JSON line with the outer CPU reading
  local name=$1; shift
  local c0 c1 out
  c0=$(cpu_of "$CP_PID")
  out=$(timeout 600 "${LOAD_PIN[@]}" "$LOAD" "${COMMON[@]}" "$@")
  c1=$(cpu_of "$CP_PID")
  grep -v '^{"bench"' <<<"$out" >&2
  grep '^{"bench"' <<<"$out" | jq -c --arg name "$name" \
    --argjson outer "$(awk -v a="$c0" -v b="$c1" -v t="$TICKS" 'BEGIN{printf "%.2f", (b-a)/t}')" \
    '. + {run: $name, server_cpu_s_whole_mode: $outer}' >>"$RESULTS"
}

# --- 1. floor (in the load generator's process, one thread, pinned like the control plane) -----
log "mode floor"
c0=$(cpu_of "$CP_PID")
"${CP_PIN[@]}" "$LOAD" --mode=floor --ca_dir="$WORK/ca" --jwks_file="$WORK/jwks.json" \
  --issuer_key="$WORK/issuer.key" >"$WORK/floor.out"
grep -v '^{"bench"' "$WORK/floor.out" >&2
grep '^{"bench"' "$WORK/floor.out" | jq -c '. + {run: "floor"}' >>"$RESULTS"

# --- 2. issue, one channel per client and one shared channel ------------------------------------
log "mode issue, $CLIENTS clients, channel per client, ${DURATION}s"
run_mode issue-per-client --mode=issue --clients="$CLIENTS" --duration="$DURATION" \
  --identities="$IDENTITIES" --channel=per-client
log "mode issue, $CLIENTS clients, one shared channel, ${DURATION}s"
run_mode issue-shared --mode=issue --clients="$CLIENTS" --duration="$DURATION" \
  --identities="$IDENTITIES" --channel=shared

BEST=$(jq -s -c '[.[] | select(.mode == "issue")] | max_by(.certs_per_s)' "$RESULTS")
BEST_CHANNEL=$(jq -r '.channel' <<<"$BEST")

if [[ "$PERF" == 1 ]] && command -v perf >/dev/null; then
  log "perf: recording the control plane during one more issue run ($BEST_CHANNEL)"
  perf record -F 999 -g -p "$CP_PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.5
  run_mode issue-perf --mode=issue --clients="$CLIENTS" --duration="$DURATION" \
    --identities="$IDENTITIES" --channel="$BEST_CHANNEL"
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | grep '%' | head -40 >"$WORK/perf-top.txt" || true
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2>/dev/null \
    | grep -v '^#' | grep '%' | head -15 >"$WORK/perf-dso.txt" || true
  echo "--- control plane CPU by library (perf, issue run) ---" >&2
  cat "$WORK/perf-dso.txt" >&2
  echo "--- top symbols ---" >&2
  cat "$WORK/perf-top.txt" >&2
  cp "$WORK/perf-top.txt" "${TMPDIR:-/tmp}/trellis-bench-issuance-perf-top.txt" 2>/dev/null || true
  cp "$WORK/perf-dso.txt" "${TMPDIR:-/tmp}/trellis-bench-issuance-perf-dso.txt" 2>/dev/null || true
fi

# --- 3. renewal burst: raw outcome, then with retry hints honored --------------------------------
log "mode renewal-burst, $RENEWALS renewals from $BURST_CLIENTS clients, raw"
run_mode burst-raw --mode=renewal-burst --clients="$BURST_CLIENTS" --renewals="$RENEWALS" \
  --renewal_chain="$RENEWAL_CHAIN"
log "mode renewal-burst, $RENEWALS renewals from $BURST_CLIENTS clients, retry hints honored"
run_mode burst-honored --mode=renewal-burst --clients="$BURST_CLIENTS" --renewals="$RENEWALS" \
  --renewal_chain="$RENEWAL_CHAIN" --honor_retry
if [[ "$FRESH_RENEWALS" -gt 0 ]]; then
  log "mode renewal-burst, $FRESH_RENEWALS renewals, a fresh TLS connection per renewal, raw"
  run_mode burst-fresh --mode=renewal-burst --clients="$BURST_CLIENTS" \
    --renewals="$FRESH_RENEWALS" --renewal_chain="$RENEWAL_CHAIN" --renewal_connection=fresh
fi

# --- cross-check with the control plane's own metrics -------------------------------------------
METRICS=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" || true)
echo "--- /metrics: trellis_cp_issuances_total (non-zero) ---" >&2
grep '^trellis_cp_issuances_total' <<<"$METRICS" | awk '$2 != 0' >&2 || true
CP_OK=$(grep '^trellis_cp_issuances_total{result="ok"' <<<"$METRICS" | awk '{s += $2} END {print s + 0}')
CLIENT_OK=$(jq -s '[.[] | select(.mode != "floor") | .by_code.OK // 0] | add' "$RESULTS")
echo "metrics cross-check: control plane counted $CP_OK successful issuances; the clients saw $CLIENT_OK OK in measured windows (plus warm-up, setup and calls finishing after a window)" >&2

# --- summary --------------------------------------------------------------------------------------
cp "$RESULTS" "${RESULTS_OUT:-/tmp/trellis-bench-issuance-results.jsonl}" 2>/dev/null || true
jq -s -r --arg pin "$PINNING" --arg clients "$CLIENTS" --arg nproc "$NCPU" '
  def n0: ((. // 0) | round | tostring) as $s | ($s | length) as $l
           | [range(0; $l) as $i | (if $i > 0 and (($l - $i) % 3 == 0) and ($s[$i-1:$i] != "-") then "," else "" end) + $s[$i:$i+1]] | join("");
  def f1: (. * 10 | round / 10 | tostring);
  def f2: (. * 100 | round / 100 | tostring);
  (map(select(.run == "floor"))[0]) as $floor
  | (map(select(.mode == "issue" and .run != "issue-perf")) | max_by(.certs_per_s)) as $best
  | (map(select(.run == "burst-raw"))[0]) as $raw
  | (map(select(.run == "burst-honored"))[0]) as $hon
  | (map(select(.run == "burst-fresh"))[0]) as $fresh
  | "",
    "=== issuance benchmark (\($nproc) CPUs; \($pin)) ===",
    "",
    "| measure | value |",
    "|---|---|",
    "| crypto floor per issuance (CSR verify + ES256 token + P-256 sign) | \($floor.floor_us | f1) us = \($floor.floor_per_core_per_s | n0)/s per core |",
    "|   CSR parse+verify / token authenticate / sign | \($floor.csr_parse_verify_us | f1) / \($floor.jwt_authenticate_us | f1) / \($floor.sign_leaf_us | f1) us |",
    "| crypto floor per renewal (CSR + client-cert PEM + verify + sign) | \($floor.renewal_floor_us | f1) us = \($floor.renewal_floor_per_core_per_s | n0)/s per core |",
    (map(select(.mode == "issue" and .run != "issue-perf"))[] |
     "| issue, \(.clients) clients, \(.channel) channel | \(.certs_per_s | n0)/s, \(.certs_per_cpu_s | n0) per CP CPU-second (\(.server_cores_busy | f2) cores busy), p99 \(.latency.p99_ms | f2) ms |"),
    "| renewal burst \($raw.renewals | n0), \($raw.clients) clients, raw | \($raw.seconds | f2) s, OK \($raw.ok | n0), refused \($raw.refused | n0) (hinted: \($raw.every_refusal_hinted)), p50/p99/max \($raw.latency_ok.p50_ms | f2)/\($raw.latency_ok.p99_ms | f2)/\($raw.latency_ok.max_ms | f2) ms |",
    "| renewal burst, retry hints honored | \($hon.seconds | f2) s, OK \($hon.ok | n0), retries \($hon.retries | n0), gave up \($hon.gave_up), p50/p99/max \($hon.latency_ok.p50_ms | f2)/\($hon.latency_ok.p99_ms | f2)/\($hon.latency_ok.max_ms | f2) ms |",
    (if $fresh then "| renewal burst \($fresh.renewals | n0), new TLS connection per renewal, raw | \($fresh.seconds | f2) s, OK \($fresh.ok | n0), refused \($fresh.refused | n0), \($fresh.renewals_per_cpu_s | n0) per CP CPU-second, p99 \($fresh.latency_ok.p99_ms | f2) ms |" else empty end),
    "",
    "issuance: \($best.certs_per_cpu_s | n0) certs/s per control-plane core = \($best.certs_per_cpu_s / $floor.floor_per_core_per_s | f2) x crypto floor (\($floor.floor_per_core_per_s | n0)/s); \($best.certs_per_s | n0) certs/s total, p99 \($best.latency.p99_ms | f2) ms at \($best.clients) clients (\($best.channel) channel); renewal burst \($raw.renewals | n0): p99 \($raw.latency_ok.p99_ms | f2) ms, \($raw.failed) not renewed without retry (\($raw.refused) refused, all hinted: \($raw.every_refusal_hinted)), \($hon.failed) with retry hints honored (p99 \($hon.latency_ok.p99_ms | f2) ms, \($hon.seconds | f2) s)",
    "target: >= 5,000 certs/s per core: \(if $best.certs_per_cpu_s >= 5000 then "met" else "NOT met" end)"
' "$RESULTS"
