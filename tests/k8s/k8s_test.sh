#!/usr/bin/env bash
# Offline Kubernetes checks (no cluster):
#  1. `kubectl kustomize k8s/` and `k8s/examples/` render, with the objects the install needs;
#  2. every rendered object validates against the Kubernetes 1.36 schema (unknown fields and
#     wrong types rejected), and the validator itself rejects an unknown field and a wrong type;
#  3. `trellisctl inject` output (native and --classic) of the example app validates;
#  4. the webhook's AdmissionReview answer for a fixture pod: its JSONPatch applied with
#     `kubectl patch --local --type=json` gives a pod that validates and is injected.
# The validator's npm package lives in TRELLIS_K8S_NODE_MODULES (default
# /var/cache/trellis-npm-k8s/node_modules); tests/k8s/install_validator.sh installs it.
set -euo pipefail

trellisctl=$1
review_tool=$2
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
passed=0
check() {
  passed=$((passed + 1))
  printf 'ok %d - %s\n' "$passed" "$1"
}

modules=${TRELLIS_K8S_NODE_MODULES:-/var/cache/trellis-npm-k8s/node_modules}
[[ -f "$modules/@kubernetes/client-node/dist/gen/models/all.js" ]] \
  || fail "no @kubernetes/client-node in $modules: run tests/k8s/install_validator.sh (scripts/test does)"
for tool in kubectl node base64; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH ($PATH)"
done
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/k8s-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HOME=$work
validate() { node tests/k8s/validate.mjs "$modules" "$@"; }

# --- 1. kustomize renders ------------------------------------------------------------------
# kustomize does not follow Bazel's runfiles symlinks: render a real copy.
cp -rL k8s "$work/k8s"
kubectl kustomize "$work/k8s" >"$work/base.yaml" || fail "kubectl kustomize k8s/ failed"
for want in "kind: Namespace" "kind: Deployment" "kind: Service" "kind: ServiceAccount" \
  "kind: ClusterRole" "kind: ClusterRoleBinding" "kind: ConfigMap" "kind: PodDisruptionBudget" \
  "kind: MutatingWebhookConfiguration"; do
  grep -q "^$want\$" "$work/base.yaml" || fail "k8s/ renders no $want"
done
grep -q -- "- --tokenreview" "$work/base.yaml" || fail "the control plane does not run with --tokenreview"
grep -q "trellis.io/inject: enabled" "$work/base.yaml" || fail "webhook namespaceSelector missing"
grep -q -- "- --mesh_configmap_sync" "$work/base.yaml" \
  || fail "the control plane does not keep trellis-mesh in injected namespaces (--mesh_configmap_sync)"
check "kubectl kustomize k8s/ renders the 9 kinds of the install"
kubectl kustomize "$work/k8s/examples" >"$work/examples.yaml" || fail "kubectl kustomize k8s/examples/ failed"
check "kubectl kustomize k8s/examples/ renders"
# The control plane makes trellis-mesh in injected namespaces; a copy shipped with an app would not
# carry its managed-by label, so it would be left alone and never follow a root rotation.
! grep -q "name: trellis-mesh" "$work/examples.yaml" || fail "k8s/examples/ ships its own trellis-mesh ConfigMap"
check "k8s/examples/ leaves trellis-mesh to the control plane"

# --- 2. schema validation, and the validator's own negative cases ---------------------------
out=$(validate "$work/base.yaml") || fail "k8s/ does not validate: $out"
check "k8s/ validates against the Kubernetes schema: $out"
out=$(validate "$work/examples.yaml") || fail "k8s/examples/ does not validate: $out"
check "k8s/examples/ validates: $out"

cat >"$work/unknown.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: bad}}
  template:
    metadata: {labels: {app: bad}}
    spec:
      containers:
        - name: app
          image: x
          imagePullPolicyy: Always
YAML
if out=$(validate "$work/unknown.yaml"); then fail "validator accepted an unknown field: $out"; fi
[[ "$out" == *"spec.template.spec.containers[0].imagePullPolicyy: unknown field"* ]] \
  || fail "validator did not name the unknown field: $out"
check "validator rejects an unknown field"
cat >"$work/wrongtype.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  ports:
    - port: "eighty"
YAML
if out=$(validate "$work/wrongtype.yaml"); then fail "validator accepted a wrong type: $out"; fi
[[ "$out" == *"spec.ports[0].port: expected a number"* ]] || fail "validator did not name the wrong type: $out"
check "validator rejects a wrong type"
printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b}]\n  hostNetwork: "true"\n' \
  >"$work/wrongbool.yaml"
if out=$(validate "$work/wrongbool.yaml"); then fail "validator accepted a string for a boolean: $out"; fi
check "validator rejects a string where a boolean is required"

# --- 3. trellisctl inject output validates -----------------------------------------------------
"$trellisctl" inject -f "$work/examples.yaml" >"$work/injected.yaml" 2>"$work/inject.err" \
  || fail "trellisctl inject failed: $(cat "$work/inject.err")"
[[ $(grep -c "name: trellis-proxy" "$work/injected.yaml") == 2 ]] || fail "expected 2 injected Deployments"
out=$(validate "$work/injected.yaml") || fail "injected examples do not validate: $out"
check "trellisctl inject output (native sidecar) validates: $out"
"$trellisctl" inject --classic -f "$work/examples.yaml" >"$work/classic.yaml" 2>/dev/null \
  || fail "trellisctl inject --classic failed"
out=$(validate "$work/classic.yaml") || fail "classic-injected examples do not validate: $out"
check "trellisctl inject --classic output validates: $out"
"$trellisctl" inject -f "$work/injected.yaml" >"$work/twice.yaml" 2>/dev/null || fail "re-inject failed"
cmp -s "$work/injected.yaml" "$work/twice.yaml" || fail "injecting twice changed the output"
check "injecting the injected output changes nothing"

# --- 4. the webhook's patch, applied by kubectl, gives a valid injected pod ---------------------
review=tests/k8s/testdata/admission_review.json
"$review_tool" <"$review" >"$work/response.json" || fail "webhook refused the fixture: $(cat "$work/response.json")"
node -e '
  const fs = require("fs");
  const r = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
  const q = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  if (r.apiVersion !== "admission.k8s.io/v1" || r.kind !== "AdmissionReview") throw new Error("not an AdmissionReview v1");
  if (r.response.uid !== q.request.uid) throw new Error("uid not echoed");
  if (r.response.allowed !== true || r.response.patchType !== "JSONPatch") throw new Error("not allowed with a JSONPatch");
  const pod = q.request.object; pod.metadata.name = "checkout-7d4b9c8f6-x1y2z";
  fs.writeFileSync(process.argv[3], JSON.stringify(pod));
  fs.writeFileSync(process.argv[4], Buffer.from(r.response.patch, "base64").toString());
' "$work/response.json" "$review" "$work/pod.json" "$work/patch.json" || fail "bad webhook response"
check "webhook answers AdmissionReview v1 with the uid, allowed and a JSONPatch"
kubectl patch --local --type=json -f "$work/pod.json" -p "$(cat "$work/patch.json")" -o yaml \
  >"$work/patched.yaml" 2>"$work/patch.err" || fail "kubectl patch --local failed: $(cat "$work/patch.err")"
out=$(validate "$work/patched.yaml") || fail "the patched pod does not validate: $out"
check "kubectl patch --local applies the webhook's patch; the pod validates: $out"
for want in "name: trellis-init" "name: trellis-proxy" "restartPolicy: Always" "audience: trellis" \
  "path: /app-health/checkout/livez" "--exclude-outbound-ports=5432" "name: migrate"; do
  grep -q -- "$want" "$work/patched.yaml" || fail "patched pod lacks \"$want\""
done
check "the patched pod is injected (init, native sidecar, token, probe rewrite, exclusions kept)"

printf 'PASS: %d checks\n' "$passed"
