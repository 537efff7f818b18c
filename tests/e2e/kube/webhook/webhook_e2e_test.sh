#!/usr/bin/env bash
# The injection webhook against a REAL kube-apiserver (1.20.2, scripts/lib/kube.sh) and etcd:
# the API server calls webhook_e2e_server over TLS (registered by url:, caBundle = our test CA)
# for pods created in a namespace labelled trellis.io/inject=enabled; the stored pod is injected,
# a pod in an unlabelled namespace and an opted-out pod are not, and a pod whose injection fails
# is refused (failurePolicy Fail, with the webhook's message). Classic sidecar mode: 1.20 predates
# native sidecars (it forbids probes on init containers).
#
# Needs TRELLIS_KUBE_BIN like tokenreview_e2e_test; it never skips.
set -euo pipefail

fail() {
  printf 'FAIL: %s\n' "$*" >&2
  [[ -n "${work:-}" && -f "$work/webhook.log" ]] && sed 's/^/webhook: /' "$work/webhook.log" >&2
  exit 1
}
bin=${TRELLIS_KUBE_BIN:-}
how="run scripts/test (stage e), or: source scripts/lib/kube.sh && bazel test --test_env=TRELLIS_KUBE_BIN=\$(trellis_kube_binaries) //tests/e2e/kube/webhook:webhook_e2e_test"
[[ -n "$bin" ]] || fail "TRELLIS_KUBE_BIN is not set, so there is no kube-apiserver to test against: $how"
[[ -x "$bin/kube-apiserver" ]] || fail "no executable kube-apiserver in TRELLIS_KUBE_BIN=$bin: $how"
for tool in etcd kubectl openssl base64; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH ($PATH): $how"
done

# shellcheck source=tests/e2e/kube/kube_harness.sh
source tests/e2e/kube/kube_harness.sh
server=$PWD/tests/e2e/kube/webhook/webhook_e2e_server
[[ -x "$server" ]] || fail "missing $server"

work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/webhook-e2e.XXXXXX")
webhook_pid=
cleanup() {
  if [[ -n "$webhook_pid" ]]; then
    kill "$webhook_pid" 2>/dev/null || true
    wait "$webhook_pid" 2>/dev/null || true
  fi
  trellis_stop_kube_apiserver
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
check() {
  passed=$((passed + 1))
  printf 'ok %d - %s\n' "$passed" "$1"
}

# --- the webhook's TLS: a test CA and a serving certificate for 127.0.0.1 ------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=webhook-e2e-ca" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null || fail "test CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null || fail "CSR"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
  -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null || fail "serving certificate"

"$server" --cert="$work/tls.crt" --key="$work/tls.key" --port-file="$work/port" --classic \
  2>"$work/webhook.log" &
webhook_pid=$!
for _ in $(seq 50); do [[ -s "$work/port" ]] && break; sleep 0.1; done
[[ -s "$work/port" ]] || fail "webhook server did not start"
port=$(cat "$work/port")
check "webhook serving TLS on 127.0.0.1:$port"

trellis_start_kube_apiserver "$work/kube" "$bin" || fail "could not start etcd + kube-apiserver"
export HOME=$work
k() { timeout 30 kubectl --request-timeout=20s "$@"; }

cat >"$work/webhook.yaml" <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: trellis-sidecar-injector}
webhooks:
  - name: inject.trellis.io
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
    namespaceSelector:
      matchLabels: {trellis.io/inject: enabled}
    rules:
      - operations: ["CREATE"]
        apiGroups: [""]
        apiVersions: ["v1"]
        resources: ["pods"]
    clientConfig:
      url: https://127.0.0.1:$port/inject
      caBundle: $(base64 -w0 "$work/ca.crt")
EOF
k apply -f "$work/webhook.yaml" >/dev/null || fail "cannot register the webhook"
k create namespace meshed >/dev/null
k label namespace meshed trellis.io/inject=enabled >/dev/null
k create namespace plain >/dev/null
for ns in meshed plain; do k -n "$ns" create serviceaccount web >/dev/null; done

pod() { # pod NAME NAMESPACE [ANNOTATIONS, flow-mapping body]
  printf '%s\n' \
    "apiVersion: v1" "kind: Pod" "metadata:" "  name: $1" "  namespace: $2" "  annotations: {${3:-}}" \
    "spec:" "  serviceAccountName: web" "  automountServiceAccountToken: false" "  containers:" \
    "    - name: app" "      image: example.invalid/app:1" \
    "      ports: [{name: http, containerPort: 8080}]" \
    "      readinessProbe:" "        httpGet: {path: /ready, port: http}"
}

# The first webhook call may race the API server's informers: retry the first create briefly.
created=0
for _ in 1 2 3 4 5; do
  if pod web-0 meshed | k apply -f - >"$work/apply.out" 2>&1; then created=1; break; fi
  sleep 1
done
((created)) || fail "pod in the labelled namespace not created: $(cat "$work/apply.out")"
k -n meshed get pod web-0 -o json >"$work/web-0.json"
containers=$(k -n meshed get pod web-0 -o jsonpath='{.spec.containers[*].name}')
inits=$(k -n meshed get pod web-0 -o jsonpath='{.spec.initContainers[*].name}')
[[ "$containers" == "trellis-proxy app" ]] || fail "stored pod containers: $containers"
[[ "$inits" == "trellis-init" ]] || fail "stored pod init containers: $inits"
check "the stored pod in the labelled namespace is injected (init: $inits; containers: $containers)"
[[ "$(k -n meshed get pod web-0 -o jsonpath='{.metadata.annotations.trellis\.io/injected}')" == classic ]] \
  || fail "no injected marker"
[[ "$(k -n meshed get pod web-0 -o jsonpath='{.spec.volumes[?(@.name=="trellis-token")].projected.sources[0].serviceAccountToken.audience}')" == trellis ]] \
  || fail "no projected token volume: $(cat "$work/web-0.json")"
[[ "$(k -n meshed get pod web-0 -o jsonpath='{.spec.containers[1].readinessProbe.httpGet.path}')" == /app-health/app/readyz ]] \
  || fail "probe not rewritten"
[[ "$(k -n meshed get pod web-0 -o jsonpath='{.spec.initContainers[0].securityContext.capabilities.add[0]}')" == NET_ADMIN ]] \
  || fail "trellis-init without NET_ADMIN"
check "marker, projected token (audience trellis), probe rewrite and NET_ADMIN init container stored"

pod web-0 plain | k apply -f - >/dev/null || fail "pod in the unlabelled namespace not created"
[[ "$(k -n plain get pod web-0 -o jsonpath='{.spec.containers[*].name}')" == app ]] \
  || fail "pod in the unlabelled namespace was changed"
[[ -z "$(k -n plain get pod web-0 -o jsonpath='{.spec.initContainers}')" ]] || fail "unlabelled pod got init containers"
check "a pod in an unlabelled namespace is not injected"

pod opted-out meshed '"trellis.io/inject": "false"' | k apply -f - >/dev/null || fail "opted-out pod not created"
[[ "$(k -n meshed get pod opted-out -o jsonpath='{.spec.containers[*].name}')" == app ]] || fail "opted-out pod injected"
check "trellis.io/inject: \"false\" opts a pod out"

if pod bad meshed '"trellis.io/exclude-inbound-ports": "http"' | k apply -f - >"$work/bad.out" 2>&1; then
  fail "a pod whose injection fails was created (failurePolicy Fail)"
fi
grep -q 'trellis.io/exclude-inbound-ports' "$work/bad.out" || fail "refusal does not say why: $(cat "$work/bad.out")"
check "a pod whose injection fails is refused with the reason: $(tr '\n' ' ' <"$work/bad.out")"

printf 'PASS: %d checks\n' "$passed"
