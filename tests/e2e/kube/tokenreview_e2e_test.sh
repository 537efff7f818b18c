#!/usr/bin/env bash
# TokenReviewAuthenticator against a REAL kube-apiserver (Debian's 1.20.2 source, built and cached
# by scripts/lib/kube.sh) and etcd, both started here on free 127.0.0.1 ports and stopped on any
# exit. The authenticator runs as "trellis-control-plane", a user whose only RBAC permission is
# `create tokenreviews`; workload tokens are minted with the real TokenRequest API.
#
# Needs TRELLIS_KUBE_BIN (the directory holding kube-apiserver): scripts/test passes it. Without it
# the test fails, saying how to get it; it never skips.
set -euo pipefail

fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

bin=${TRELLIS_KUBE_BIN:-}
how="run scripts/test (stage e builds and caches kube-apiserver), or: source scripts/lib/kube.sh && bazel test --test_env=TRELLIS_KUBE_BIN=\$(trellis_kube_binaries) //tests/e2e/kube:tokenreview_e2e_test"
[[ -n "$bin" ]] || fail "TRELLIS_KUBE_BIN is not set, so there is no kube-apiserver to test against: $how"
[[ -x "$bin/kube-apiserver" ]] || fail "no executable kube-apiserver in TRELLIS_KUBE_BIN=$bin: $how"
for tool in etcd kubectl openssl curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH ($PATH): $how"
done

# shellcheck source=tests/e2e/kube/kube_harness.sh
source tests/e2e/kube/kube_harness.sh
probe=$PWD/tests/e2e/kube/tokenreview_probe
[[ -x "$probe" ]] || fail "missing $probe"

work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/tokenreview-e2e.XXXXXX")
cleanup() {
  trellis_stop_kube_apiserver
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The whole test is bounded by Bazel's timeout (medium: 300 s); each step by its own as well.

trellis_start_kube_apiserver "$work/kube" "$bin" || fail "could not start etcd + kube-apiserver"
export HOME=$work  # kubectl's cache
k() { timeout 30 kubectl --request-timeout=20s "$@"; }

passed=0
check() { # check NAME: records a passed assertion
  passed=$((passed + 1))
  printf 'ok %d - %s\n' "$passed" "$1"
}

# run_probe CREDENTIAL_FILE: the authenticator's one-line answer (never fails the script).
run_probe() {
  timeout 30 "$probe" --url="$TRELLIS_KUBE_URL" --ca="$TRELLIS_KUBE_CA" \
    --own-token-file="$TRELLIS_KUBE_CP_TOKEN_FILE" --credential-file="$1" "${@:2}" || true
}

# expect NAME CREDENTIAL_FILE REGEX [PROBE ARGS...]
expect() {
  local name=$1 cred=$2 regex=$3 out
  out=$(run_probe "$cred" "${@:4}")
  [[ "$out" =~ $regex ]] || fail "$name: expected /$regex/, got: $out"
  # The answer never carries the credential or the control plane's own token.
  [[ "$out" != *"$(cat "$cred")"* ]] || fail "$name: the answer contains the credential"
  [[ "$out" != *"$(cat "$TRELLIS_KUBE_CP_TOKEN_FILE")"* ]] || fail "$name: the answer contains our own token"
  check "$name: $out"
}

ns=trellis-e2e
sa=web

# --- the harness: RBAC of the control plane's user is exactly `create tokenreviews` -------------
[[ "$(k auth can-i create tokenreviews.authentication.k8s.io --as=trellis-control-plane)" == yes ]] \
  || fail "trellis-control-plane cannot create tokenreviews"
[[ "$(k auth can-i list secrets --all-namespaces --as=trellis-control-plane || true)" == no ]] \
  || fail "trellis-control-plane can list secrets"
check "trellis-control-plane may create tokenreviews and may not list secrets"

k create namespace "$ns" >/dev/null
k -n "$ns" create serviceaccount "$sa" >/dev/null

# mint AUDIENCE FILE [kubectl create token args...]: a TokenRequest token into FILE.
mint() {
  local audience=$1 file=$2
  (umask 077 && k -n "$ns" create token "$sa" --audience "$audience" --duration 10m "${@:3}" >"$file") \
    || fail "TokenRequest (kubectl create token $sa --audience $audience) failed"
  [[ -s "$file" ]] || fail "TokenRequest gave an empty token"
}

mint trellis "$work/trellis.jwt"
expect "a trellis-audience service-account token authenticates" "$work/trellis.jwt" \
  "^OK spiffe://cluster\.local/ns/$ns/sa/$sa detail=\$"
expect "the trust domain is an option" "$work/trellis.jwt" \
  "^OK spiffe://prod\.example\.org/ns/$ns/sa/$sa " --trust-domain=prod.example.org

# A token bound to a Pod carries the pod's name (status.user.extra) into the detail. With no
# scheduler the Pod stays Pending, which is all TokenRequest needs.
cat >"$work/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: $ns}
spec:
  serviceAccountName: $sa
  automountServiceAccountToken: false
  containers: [{name: app, image: example.invalid/app:1}]
EOF
k apply -f "$work/pod.yaml" >/dev/null
mint trellis "$work/pod.jwt" --bound-object-kind Pod --bound-object-name web-0
expect "a pod-bound token names its pod" "$work/pod.jwt" \
  "^OK spiffe://cluster\.local/ns/$ns/sa/$sa detail=web-0\$"

mint api "$work/api.jwt"
expect "a token minted for audience \"api\" is refused" "$work/api.jwt" "^UNAUTHENTICATED: .*"
expect "a token whose audience is not ours is refused even if we ask for it" "$work/trellis.jwt" \
  "^UNAUTHENTICATED: " --audience=api

printf 'not-a-token.%s' "$(openssl rand -hex 16)" >"$work/garbage"
expect "a garbage token is refused" "$work/garbage" "^UNAUTHENTICATED: .*invalid bearer token"

# A valid token of a user that is not a service account (the admin's static token).
expect "a non-service-account user is denied" "$TRELLIS_KUBE_ADMIN_TOKEN_FILE" \
  "^PERMISSION_DENIED: .*trellis-admin.*not a service account"

# Deleting the service account invalidates its tokens (the API server looks it up).
k -n "$ns" delete pod web-0 --wait=false >/dev/null
k -n "$ns" create serviceaccount doomed >/dev/null
(umask 077 && k -n "$ns" create token doomed --audience trellis --duration 10m >"$work/doomed.jwt")
expect "a live service account's token authenticates" "$work/doomed.jwt" "^OK spiffe://cluster\.local/ns/$ns/sa/doomed "
k -n "$ns" delete serviceaccount doomed >/dev/null
deadline=$((SECONDS + 15))
until [[ "$(run_probe "$work/doomed.jwt")" == UNAUTHENTICATED:* ]]; do
  ((SECONDS < deadline)) || fail "the token of a deleted service account still authenticates: $(run_probe "$work/doomed.jwt")"
  sleep 0.5
done
check "the token of a deleted service account is refused"

# Unreachable API server: a closed port. UNAVAILABLE, quickly.
closed_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out=$(timeout 30 "$probe" --url="https://127.0.0.1:$closed_port" --ca="$TRELLIS_KUBE_CA" \
  --own-token-file="$TRELLIS_KUBE_CP_TOKEN_FILE" --credential-file="$work/trellis.jwt" || true)
[[ "$out" == UNAVAILABLE:*"cannot reach the API server"* ]] || fail "closed port: got: $out"
check "an unreachable API server is UNAVAILABLE"

# Take the control plane's RBAC away: its own requests are now forbidden -> UNAVAILABLE naming RBAC.
k delete clusterrolebinding "$TRELLIS_KUBE_TOKENREVIEW_ROLE" >/dev/null
deadline=$((SECONDS + 15))
until [[ "$(run_probe "$work/trellis.jwt")" == UNAVAILABLE:* ]]; do
  ((SECONDS < deadline)) || fail "still not UNAVAILABLE 15 s after removing the RBAC binding: $(run_probe "$work/trellis.jwt")"
  sleep 0.5
done
expect "without \`create tokenreviews\` RBAC the answer is UNAVAILABLE naming RBAC" "$work/trellis.jwt" \
  "^UNAVAILABLE: .*HTTP 403.*RBAC is missing \`create tokenreviews\`"

echo "PASSED: $passed checks against a real kube-apiserver $("$bin/kube-apiserver" --version | cut -d' ' -f2)"
