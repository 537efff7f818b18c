#!/usr/bin/env bash
# `trellisctl ca init --kubernetes` output against the Kubernetes schema, offline, with the
# validator of tests/k8s (unknown fields and wrong types rejected); and the validator does reject
# a tampered copy of the same Secret, so the check can fail.
# Usage: ca_init_kubernetes_schema_test.sh TRELLISCTL VALIDATE_MJS
set -euo pipefail
trellisctl=$1
validator=$2
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
modules=${TRELLIS_K8S_NODE_MODULES:-/var/cache/trellis-npm-k8s/node_modules}
[[ -f "$modules/@kubernetes/client-node/dist/gen/models/all.js" ]] \
  || fail "no @kubernetes/client-node in $modules: run tests/k8s/install_validator.sh (scripts/test does)"
command -v node >/dev/null || fail "node is not on PATH ($PATH)"
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/ca-init-k8s.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$trellisctl" ca init --dir "$work/trellis-ca" --kubernetes --trust-domain example.org \
  >"$work/out" 2>&1 || fail "trellisctl ca init --kubernetes failed: $(cat "$work/out")"
kube=$work/trellis-ca/kubernetes
out=$(node "$validator" "$modules" "$kube/trellis-ca-secret.yaml" "$kube/trellis-mesh-configmap.yaml") \
  || fail "the manifests do not validate: $out"
[[ "$out" == "valid: 2 object(s)" ]] || fail "expected 2 valid objects, got: $out"
echo "ok - the Secret and the ConfigMap validate against the Kubernetes schema: $out"

# The same Secret with a misspelt field and a number where a string belongs must be refused.
sed -e 's/^type: Opaque$/typ: Opaque/' "$kube/trellis-ca-secret.yaml" >"$work/bad-secret.yaml"
sed -e 's/^  trust-domain: .*/  trust-domain: 42/' "$kube/trellis-mesh-configmap.yaml" >"$work/bad-configmap.yaml"
if out=$(node "$validator" "$modules" "$work/bad-secret.yaml"); then
  fail "the validator accepted a Secret with an unknown field: $out"
fi
[[ "$out" == *"typ: unknown field"* ]] || fail "the validator did not name the unknown field: $out"
if out=$(node "$validator" "$modules" "$work/bad-configmap.yaml"); then
  fail "the validator accepted a ConfigMap with a number as a value: $out"
fi
[[ "$out" == *"trust-domain"*"expected a string"* ]] || fail "the validator did not name the wrong type: $out"
echo "ok - a misspelt field and a wrong type in the same objects are rejected"
echo PASS
