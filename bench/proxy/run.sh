#!/usr/bin/env bash
# Sidecar-pair benchmark: trellis-proxy vs nginx (stream), HAProxy and stunnel pairs, plus a direct baseline.
# See bench/proxy/README.md.
#
#   bench/proxy/run.sh                      # all kinds, DURATION=10 s per phase
#   DURATION=30 KINDS=direct,nginx bench/proxy/run.sh
#   TRELLIS_PROXY=bazel-bin/proxy/trellis-proxy bench/proxy/run.sh
#
# Environment: DURATION (s per phase, default 10), KINDS (comma list; default direct,nginx,haproxy,stunnel
# plus trellis when the binary exists), TRELLIS_PROXY (path), RATE (fixed-rate phase, default 2000),
# IDLE_CONNS (default 2000), KEEPALIVE_CONNS (wrk -c, default 32), NEWCONN_CONNS (default 16),
# RESULTS (JSON output path; default bench/proxy/results/run-<timestamp>.json), NO_INSTALL=1 (skip apt-get),
# KEEP_WORK=1 (keep the temporary directory with configs, certificates and proxy logs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export DURATION="${DURATION:-10}"
export TRELLIS_PROXY="${TRELLIS_PROXY:-$REPO/bazel-bin/proxy/trellis-proxy}"

WORK="$(mktemp -d /tmp/trellis-bench-proxy.XXXXXX)"
export WORK
PY_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$PY_PID" ]] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    wait "$PY_PID" 2>/dev/null || true
  fi
  # Everything the harness started runs in its own process group whose ids it records here.
  if [[ -f "$WORK/pgids" ]]; then
    while read -r pg; do kill -KILL -- "-$pg" 2>/dev/null || true; done < "$WORK/pgids"
  fi
  if [[ -n "${KEEP_WORK:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. packages ---------------------------------------------------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
command -v wrk >/dev/null || need+=(wrk)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v g++ >/dev/null || need+=(g++)
[[ -f /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  if [[ -n "${NO_INSTALL:-}" ]]; then echo "missing packages: ${need[*]}" >&2; exit 1; fi
  echo "installing: ${need[*]}"
  # Do not let package scripts start the daemons (no-op where there is no init system).
  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
  apt-get install -y -q "${need[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
fi

# --- 2. tools ------------------------------------------------------------------------------------------
mkdir -p "$WORK/bin" "$WORK/certs" "$WORK/run"
g++ -O2 -std=c++17 -o "$WORK/bin/loadgen" "$HERE/loadgen.cc"
g++ -O2 -std=c++17 -o "$WORK/bin/hsfloor" "$HERE/hsfloor.cc" -lssl -lcrypto

# --- 3. certificates: one ECDSA P-256 root, two SPIFFE leaves (EKU serverAuth+clientAuth) --------------
C="$WORK/certs"
openssl ecparam -name prime256v1 -genkey -noout -out "$C/root.key" 2>/dev/null
openssl req -x509 -new -key "$C/root.key" -sha256 -days 2 -subj "/O=trellis-bench/CN=bench root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$C/root.crt" 2>/dev/null
for who in client server; do
  openssl ecparam -name prime256v1 -genkey -noout -out "$C/$who.ec.key" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$C/$who.ec.key" -out "$C/$who.key"
  openssl req -new -key "$C/$who.key" -subj "/O=trellis-bench" -out "$C/$who.csr" 2>/dev/null
  # Exactly one URI SAN (the SPIFFE ID); a DNS SAN too, because nginx, HAProxy and stunnel can only
  # check a peer's name against DNS SANs (X.509-SVIDs may carry other SAN types).
  cat > "$C/$who.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/$who,DNS:$who.bench.svc.cluster.local
EOF
  openssl x509 -req -in "$C/$who.csr" -CA "$C/root.crt" -CAkey "$C/root.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 1 -sha256 -extfile "$C/$who.ext" -out "$C/$who.crt" 2>/dev/null
  cat "$C/$who.crt" "$C/$who.key" > "$C/$who.pem"   # HAProxy wants certificate and key in one file
done
openssl verify -CAfile "$C/root.crt" "$C/client.crt" "$C/server.crt" >/dev/null

# --- 4. run --------------------------------------------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$HERE/results"
export RESULTS="${RESULTS:-$HERE/results/run-$(date +%Y%m%d-%H%M%S).json}"
PY="$(command -v /usr/bin/python3 || command -v python3)"
"$PY" "$HERE/bench.py" &
PY_PID=$!
wait "$PY_PID"
