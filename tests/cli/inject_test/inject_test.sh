#!/usr/bin/env bash
# `trellisctl inject` as an operator runs it: multi-document YAML in, valid YAML out.
set -euo pipefail
trellisctl=$1
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
passed=0
check() {
  passed=$((passed + 1))
  printf 'ok %d - %s\n' "$passed" "$1"
}
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/inject-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

cat >"$work/app.yaml" <<'YAML'
# The app: a Deployment, a Service and a CronJob.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx
          env:
            - {name: FLAG, value: "yes"}
            - {name: MODE, value: "0755"}
          livenessProbe:
            httpGet: {path: /healthz, port: 8080}
---
apiVersion: v1
kind: Service   # passed through, comment and all
metadata:
  name: web
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  annotations: {trellis.io/inject: "false"}
spec:
  containers: [{name: a, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata:
  name: node-agent
spec:
  hostNetwork: true
  containers: [{name: a, image: busybox}]
YAML

"$trellisctl" inject -f "$work/app.yaml" >"$work/out.yaml" 2>"$work/err" || fail "inject failed: $(cat "$work/err")"
[[ $(grep -c '^---$' "$work/out.yaml") == 4 ]] || fail "expected 5 documents out: $(cat "$work/out.yaml")"
check "5 documents in, 5 out"
# Valid YAML that reads back as the same objects: trellisctl parses its own output.
"$trellisctl" inject -f "$work/out.yaml" >"$work/out2.yaml" 2>/dev/null || fail "output is not readable YAML"
cmp -s "$work/out.yaml" "$work/out2.yaml" || fail "injecting twice changed the output: $(diff "$work/out.yaml" "$work/out2.yaml")"
check "the output is valid YAML and injecting it again changes nothing"
if command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null; then
  python3 - "$work/out.yaml" <<'PY' || fail "python yaml disagrees with the output"
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
assert len(docs) == 5, len(docs)
web = docs[0]["spec"]["template"]
names = [c["name"] for c in web["spec"]["initContainers"]]
assert names == ["trellis-init", "trellis-proxy"], names
env = {e["name"]: e["value"] for e in web["spec"]["containers"][0]["env"]}
assert env == {"FLAG": "yes", "MODE": "0755"}, env  # strings stay strings (YAML 1.1 reader)
assert docs[2]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]["trellis.io/injected"] == "native"
assert "initContainers" not in docs[3]["spec"]
assert "hostNetwork" in docs[4]["metadata"]["annotations"]["trellis.io/inject-skipped"]
PY
  check "a YAML 1.1 reader (PyYAML) sees the same types and the injected pod templates"
fi
grep -q "^kind: Service   # passed through, comment and all$" "$work/out.yaml" \
  || fail "the Service was not passed through unchanged"
check "unchanged kinds pass through byte for byte"
grep -q "warning: document 5 (line .*, Pod \"node-agent\"): hostNetwork" "$work/err" \
  || fail "no hostNetwork warning naming the document: $(cat "$work/err")"
check "hostNetwork pod skipped with a warning naming the document"

# stdin, and --classic
"$trellisctl" inject --classic -f - <"$work/app.yaml" >"$work/classic.yaml" 2>/dev/null || fail "inject -f - failed"
grep -q "trellis.io/injected: classic" "$work/classic.yaml" || fail "--classic not applied"
check "-f - reads stdin; --classic makes a classic sidecar"

# Errors: non-zero, the message names the document index and kind, nothing on stdout.
cat >"$work/bad.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: ok}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  template:
    metadata:
      annotations: {trellis.io/exclude-inbound-ports: "postgres"}
    spec:
      containers: [{name: db, image: postgres}]
YAML
if "$trellisctl" inject -f "$work/bad.yaml" >"$work/bad.out" 2>"$work/bad.err"; then fail "bad input accepted"; fi
grep -q 'document 2 (line 5, StatefulSet "db"): spec.template.metadata.annotations\["trellis.io/exclude-inbound-ports"\]' \
  "$work/bad.err" || fail "error does not name the document: $(cat "$work/bad.err")"
[[ ! -s "$work/bad.out" ]] || fail "something was written on error"
check "bad annotation: exit non-zero naming document 2 and its kind: $(cat "$work/bad.err")"

printf 'apiVersion: v1\nkind: ConfigMap\n---\nkind: Pod\nspec: [unclosed\n' >"$work/broken.yaml"
if "$trellisctl" inject -f "$work/broken.yaml" >/dev/null 2>"$work/broken.err"; then fail "broken YAML accepted"; fi
grep -q "document 2 (line 4): invalid YAML at line [456]" "$work/broken.err" || fail "YAML error not located: $(cat "$work/broken.err")"
check "invalid YAML: exit non-zero naming the document and line"

printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n' >"$work/notemplate.yaml"
if "$trellisctl" inject -f "$work/notemplate.yaml" >/dev/null 2>"$work/nt.err"; then fail "Deployment without template accepted"; fi
grep -q 'document 1 (line 1, Deployment "d"): spec.template' "$work/nt.err" || fail "$(cat "$work/nt.err")"
check "a Deployment without a pod template is an error naming it"

"$trellisctl" inject >/dev/null 2>&1 && fail "no -f accepted"
rc=0; "$trellisctl" inject >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "missing -f: exit $rc, want 2"
"$trellisctl" inject -f "$work/missing.yaml" >/dev/null 2>&1 && fail "missing file accepted"
"$trellisctl" inject --help | grep -q "trellisctl inject -f" || fail "--help"
check "usage errors exit 2; a missing file fails; --help documents the command"
printf 'PASS: %d checks\n' "$passed"
