# shellcheck shell=bash
# Starts and stops a real kube-apiserver + etcd on 127.0.0.1 for tests. Sourced by
# scripts/lib/kube.sh (which also builds the binary: trellis_kube_binaries) and by the e2e tests in
# this directory. Defines functions only.
#
#   trellis_start_kube_apiserver DIR [BIN_DIR]
#       BIN_DIR (default $TRELLIS_KUBE_BIN, else $TRELLIS_KUBE_CACHE) holds kube-apiserver; etcd
#       and kubectl come from PATH. Starts etcd (data in DIR/etcd) and kube-apiserver on free
#       127.0.0.1 ports, with RBAC, a static token file and service-account signing keys generated
#       into DIR, waits (bounded: 20 s for etcd, 60 s for /readyz, 3 attempts each) and creates
#       the ClusterRole/Binding that lets "trellis-control-plane" create tokenreviews. Exports
#       (and writes to DIR/env, for other processes to source):
#         TRELLIS_KUBE_DIR, TRELLIS_KUBE_URL (https://127.0.0.1:PORT), TRELLIS_KUBE_CA (the API
#         server's self-signed serving certificate), TRELLIS_KUBE_ADMIN_TOKEN_FILE (user
#         "trellis-admin", group system:masters), TRELLIS_KUBE_CP_TOKEN_FILE (user
#         "trellis-control-plane": RBAC lets it create tokenreviews and nothing else),
#         KUBECONFIG (DIR/kubeconfig, the admin), TRELLIS_KUBE_ETCD_PID,
#         TRELLIS_KUBE_APISERVER_PID.
#       With --enable-aggregator-routing the API server reaches a Service-registered admission
#       webhook (and aggregated APIs) through the Service's Endpoints, not its ClusterIP (not
#       routable here; there is no kube-proxy): a test creates the Endpoints itself.
#       Service-account tokens are signed with DIR/pki/sa.key, issuer
#       https://kubernetes.default.svc.cluster.local, API audiences that issuer and "trellis".
#       Callers should `trap trellis_stop_kube_apiserver EXIT` first (it is idempotent).
#
#   trellis_stop_kube_apiserver
#       Stops both processes (TERM, KILL after 10 s) and removes TRELLIS_KUBE_DIR.

TRELLIS_KUBE_CACHE="${TRELLIS_KUBE_CACHE:-/var/cache/trellis-kube/${TRELLIS_KUBE_VERSION:-v1.20.2}}"
# The ClusterRole(Binding) that lets the control plane create TokenReviews (as k8s/ grants it).
TRELLIS_KUBE_TOKENREVIEW_ROLE=trellis-tokenreview

_trellis_kube_log() { printf 'kube: %s\n' "$*" >&2; }

# _trellis_kube_free_port: prints a TCP port that is free on 127.0.0.1 right now.
_trellis_kube_free_port() {
  python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# _trellis_kube_wait SECONDS CMD...: runs CMD every 0.5 s until it succeeds or time runs out.
_trellis_kube_wait() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

trellis_start_kube_apiserver() {
  local dir=${1:?usage: trellis_start_kube_apiserver DIR [BIN_DIR]} bin=${2:-${TRELLIS_KUBE_BIN:-$TRELLIS_KUBE_CACHE}}
  local etcd_client etcd_peer secure_port admin_token cp_token attempt
  if [[ ! -x "$bin/kube-apiserver" ]]; then
    _trellis_kube_log "no kube-apiserver in $bin: run scripts/test (or source scripts/lib/kube.sh && trellis_kube_binaries)"
    return 1
  fi
  command -v etcd >/dev/null || {
    _trellis_kube_log "no etcd on PATH: apt-get install etcd-server (scripts/test does)"
    return 1
  }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  export TRELLIS_KUBE_DIR=$dir
  mkdir -p "$dir/etcd" "$dir/certs" "$dir/pki"
  chmod 700 "$dir/etcd"

  # --- etcd -----------------------------------------------------------------------------------
  for attempt in 1 2 3; do
    etcd_client=$(_trellis_kube_free_port)
    etcd_peer=$(_trellis_kube_free_port)
    etcd --name trellis-test --data-dir "$dir/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_client" \
      --advertise-client-urls "http://127.0.0.1:$etcd_client" \
      --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
      --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
      --initial-cluster "trellis-test=http://127.0.0.1:$etcd_peer" \
      --log-level warn >"$dir/etcd.log" 2>&1 &
    export TRELLIS_KUBE_ETCD_PID=$!
    if _trellis_kube_wait 20 curl -fsS "http://127.0.0.1:$etcd_client/health"; then
      break
    fi
    _trellis_kube_log "etcd did not come up (attempt $attempt); last lines of $dir/etcd.log:"
    tail -n 5 "$dir/etcd.log" >&2
    kill "$TRELLIS_KUBE_ETCD_PID" 2>/dev/null || true
    wait "$TRELLIS_KUBE_ETCD_PID" 2>/dev/null || true
    unset TRELLIS_KUBE_ETCD_PID
    rm -rf "$dir/etcd"/*
    ((attempt < 3)) || return 1
  done

  # --- credentials ----------------------------------------------------------------------------
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/pki/sa.key" 2>/dev/null
  openssl pkey -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
  admin_token=$(openssl rand -hex 24)
  cp_token=$(openssl rand -hex 24)
  (umask 077 && printf '%s' "$admin_token" >"$dir/admin.token" && printf '%s' "$cp_token" >"$dir/control-plane.token")
  (umask 077 && cat >"$dir/tokens.csv" <<EOF
$admin_token,trellis-admin,uid-trellis-admin,"system:masters"
$cp_token,trellis-control-plane,uid-trellis-control-plane
EOF
  )

  # --- kube-apiserver -------------------------------------------------------------------------
  for attempt in 1 2 3; do
    secure_port=$(_trellis_kube_free_port)
    "$bin/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$etcd_client" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
      --secure-port="$secure_port" --insecure-port=0 \
      --cert-dir="$dir/certs" \
      --token-auth-file="$dir/tokens.csv" \
      --authorization-mode=RBAC \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$dir/pki/sa.pub" \
      --service-account-signing-key-file="$dir/pki/sa.key" \
      --api-audiences=https://kubernetes.default.svc.cluster.local,trellis \
      --service-cluster-ip-range=10.96.0.0/16 \
      --endpoint-reconciler-type=none \
      --enable-priority-and-fairness=false \
      --enable-aggregator-routing=true \
      >"$dir/kube-apiserver.log" 2>&1 &
    export TRELLIS_KUBE_APISERVER_PID=$!
    export TRELLIS_KUBE_URL="https://127.0.0.1:$secure_port"
    if _trellis_kube_wait 60 _trellis_kube_ready "$admin_token"; then
      break
    fi
    _trellis_kube_log "kube-apiserver not ready within 60 s (attempt $attempt); last lines of $dir/kube-apiserver.log:"
    tail -n 15 "$dir/kube-apiserver.log" >&2
    kill "$TRELLIS_KUBE_APISERVER_PID" 2>/dev/null || true
    wait "$TRELLIS_KUBE_APISERVER_PID" 2>/dev/null || true
    unset TRELLIS_KUBE_APISERVER_PID
    ((attempt < 3)) || return 1
  done
  # The self-signed serving certificate kube-apiserver generated (CN localhost, SAN 127.0.0.1)
  # is its own CA.
  export TRELLIS_KUBE_CA="$dir/certs/apiserver.crt"
  export TRELLIS_KUBE_ADMIN_TOKEN_FILE="$dir/admin.token"
  export TRELLIS_KUBE_CP_TOKEN_FILE="$dir/control-plane.token"
  export KUBECONFIG="$dir/kubeconfig"
  cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: trellis-test
  cluster:
    server: $TRELLIS_KUBE_URL
    certificate-authority: $TRELLIS_KUBE_CA
users:
- name: trellis-admin
  user:
    tokenFile: $TRELLIS_KUBE_ADMIN_TOKEN_FILE
contexts:
- name: trellis-test
  context: {cluster: trellis-test, user: trellis-admin}
current-context: trellis-test
EOF
  chmod 600 "$KUBECONFIG"

  # --- RBAC for the control plane: create tokenreviews, nothing else --------------------------
  if ! {
    kubectl --request-timeout=20s create clusterrole "$TRELLIS_KUBE_TOKENREVIEW_ROLE" \
      --verb=create --resource=tokenreviews.authentication.k8s.io \
      && kubectl --request-timeout=20s create clusterrolebinding "$TRELLIS_KUBE_TOKENREVIEW_ROLE" \
        --clusterrole="$TRELLIS_KUBE_TOKENREVIEW_ROLE" --user=trellis-control-plane
  } >"$dir/rbac.log" 2>&1; then
    _trellis_kube_log "creating the tokenreview ClusterRole/Binding failed:"
    cat "$dir/rbac.log" >&2
    return 1
  fi

  cat >"$dir/env" <<EOF
export TRELLIS_KUBE_DIR='$dir'
export TRELLIS_KUBE_URL='$TRELLIS_KUBE_URL'
export TRELLIS_KUBE_CA='$TRELLIS_KUBE_CA'
export TRELLIS_KUBE_ADMIN_TOKEN_FILE='$TRELLIS_KUBE_ADMIN_TOKEN_FILE'
export TRELLIS_KUBE_CP_TOKEN_FILE='$TRELLIS_KUBE_CP_TOKEN_FILE'
export KUBECONFIG='$KUBECONFIG'
export TRELLIS_KUBE_ETCD_PID='$TRELLIS_KUBE_ETCD_PID'
export TRELLIS_KUBE_APISERVER_PID='$TRELLIS_KUBE_APISERVER_PID'
EOF
  _trellis_kube_log "kube-apiserver ready at $TRELLIS_KUBE_URL (etcd 127.0.0.1:$etcd_client, dir $dir)"
}

# _trellis_kube_ready TOKEN: /readyz answers "ok" (the process must still be alive).
_trellis_kube_ready() {
  kill -0 "$TRELLIS_KUBE_APISERVER_PID" 2>/dev/null || return 1
  [[ -f "$TRELLIS_KUBE_DIR/certs/apiserver.crt" ]] || return 1
  [[ "$(curl -sS --max-time 3 --cacert "$TRELLIS_KUBE_DIR/certs/apiserver.crt" \
    -H "Authorization: Bearer $1" "$TRELLIS_KUBE_URL/readyz")" == ok ]]
}

# _trellis_kube_kill PID: TERM, up to 10 s, then KILL.
_trellis_kube_kill() {
  local pid=$1
  [[ -n "$pid" ]] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

trellis_stop_kube_apiserver() {
  _trellis_kube_kill "${TRELLIS_KUBE_APISERVER_PID:-}"
  _trellis_kube_kill "${TRELLIS_KUBE_ETCD_PID:-}"
  unset TRELLIS_KUBE_APISERVER_PID TRELLIS_KUBE_ETCD_PID
  if [[ -n "${TRELLIS_KUBE_DIR:-}" && -d "$TRELLIS_KUBE_DIR" ]]; then
    rm -rf "$TRELLIS_KUBE_DIR"
  fi
  unset TRELLIS_KUBE_DIR
}
