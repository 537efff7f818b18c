#!/usr/bin/env bash
# The REAL k8s/ manifests and the REAL trellis-control-plane against a REAL kube-apiserver (1.20.2,
# scripts/lib/kube.sh) and etcd:
#   1. the k8s/ base is applied through a kustomize overlay (caBundle = roots.crt, the real
#      trellis-mesh ConfigMap) and every object of it exists server-side (the server's schema
#      rejects a wrong field);
#   2. two trellis-control-plane replicas run on this host with the container args of the
#      Deployment as the API server stored it (only paths and listen addresses substituted), each
#      with a pod's in-cluster configuration in a private mount namespace (as root; else the
#      API server by --kube_* flags), with the CA files read
#      back from the trellis-ca Secret and, as its credentials, a TokenRequest token of the
#      trellis-control-plane service account: its permissions are exactly k8s/rbac.yaml's;
#   3. Endpoints for the trellis-control-plane Service point at this host's non-loopback IP (no
#      kubelet or endpoint controller runs), so the API server (--enable-aggregator-routing)
#      calls the webhook through the Service, verifying the serving certificate for
#      trellis-control-plane.trellis-system.svc against caBundle;
#   4. pods: injected in a labelled namespace, not in an unlabelled one, not when opted out, and
#      refused with the webhook's reason on a malformed annotation; with the control plane
#      stopped, a pod in the labelled namespace is refused (failurePolicy Fail); the shipped
#      --inject_sidecar_mode=auto reads 1.20 from /version and injects classic sidecars (a pod
#      forcing native is refused by 1.20);
#   5. a trellis-proxy with the injected container's flags (the synced roots.crt, a TokenRequest
#      token with audience trellis) gets its certificate: the control plane authenticated it
#      through TokenReview; a token for another audience is refused;
#   6. the mesh ConfigMap: created in a labelled namespace (and a newly labelled one) within a
#      bounded wait, never in others, never over a ConfigMap it does not manage, and updated with
#      the new root after `trellisctl ca rotate prepare` reaches the Secret's files, the two
#      replicas racing without a single error.
# Pods stay Pending (no scheduler, no kubelet).
#
# Args: trellis-control-plane trellisctl trellis-proxy. Needs TRELLIS_KUBE_BIN like the other
# tests here; it never skips. Root is needed for the in-cluster mount namespaces (optional), and
# if this host has no non-loopback IPv4 address: then a private /32 goes on a dummy interface
# (or on lo, without the dummy driver), removed on exit.
set -euo pipefail

work=
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  local log
  for log in "$work"/cp[0-9].log; do
    [[ -n "$work" && -f "$log" ]] || continue
    echo "--- last lines of ${log##*/}:" >&2
    tail -n 25 "$log" >&2
  done
  exit 1
}
bin=${TRELLIS_KUBE_BIN:-}
how="run scripts/test (stage e), or: source scripts/lib/kube.sh && bazel test --test_env=TRELLIS_KUBE_BIN=\$(trellis_kube_binaries) //tests/e2e/kube/manifests:manifests_e2e_test"
[[ -n "$bin" ]] || fail "TRELLIS_KUBE_BIN is not set, so there is no kube-apiserver to test against: $how"
[[ -x "$bin/kube-apiserver" ]] || fail "no executable kube-apiserver in TRELLIS_KUBE_BIN=$bin: $how"
for tool in etcd kubectl openssl base64 curl ip python3; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH ($PATH): $how"
done
cp_bin=$PWD/${1:?usage: manifests_e2e_test.sh CONTROL_PLANE TRELLISCTL PROXY}
trellisctl=$PWD/${2:?}
proxy_bin=$PWD/${3:?}
for b in "$cp_bin" "$trellisctl" "$proxy_bin"; do [[ -x "$b" ]] || fail "missing $b"; done

# shellcheck source=tests/e2e/kube/kube_harness.sh
source tests/e2e/kube/kube_harness.sh

work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/manifests-e2e.XXXXXX")
cp_pids=()
proxy_pid=
dummy_if=
lo_addr=
stop_pid() { # stop_pid PID: TERM, up to 10 s, then KILL
  [[ -n "$1" ]] || return 0
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop_pid "$proxy_pid"
  local pid
  for pid in "${cp_pids[@]}"; do stop_pid "$pid"; done
  trellis_stop_kube_apiserver
  [[ -z "$dummy_if" ]] || ip link del "$dummy_if" 2>/dev/null || true
  [[ -z "$lo_addr" ]] || ip addr del "$lo_addr/32" dev lo 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The whole test is bounded by Bazel's timeout; every wait below by its own.

passed=0
check() {
  passed=$((passed + 1))
  printf 'ok %d - %s\n' "$passed" "$1"
}
# wait_for SECONDS CMD...: CMD every 0.25 s until it succeeds; false when time runs out.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

# --- this host's non-loopback IPv4 address (Endpoints may not be loopback or link-local) --------
host_ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n1)
# TRELLIS_E2E_DUMMY_IP=1 takes the dummy-interface path anyway (to test it on hosts with an address).
if [[ -z "$host_ip" || "$host_ip" == 127.* || "$host_ip" == 169.254.* || -n "${TRELLIS_E2E_DUMMY_IP:-}" ]]; then
  [[ $(id -u) -eq 0 ]] || fail "no non-loopback IPv4 address and not root (a dummy interface needs root)"
  dummy_if="trl$$"
  dummy_if=${dummy_if:0:15}
  for _ in $(seq 20); do
    host_ip="10.254.$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))"
    grep -q " $host_ip/" <<<"$(ip -4 -o addr)" || break
  done
  if ip link add "$dummy_if" type dummy 2>/dev/null; then
    { ip addr add "$host_ip/32" dev "$dummy_if" && ip link set "$dummy_if" up; } || fail "cannot configure $dummy_if"
  else
    # No dummy driver (containers): the private /32 on lo serves as well (not a loopback address).
    dummy_if=
    ip addr add "$host_ip/32" dev lo || fail "cannot add $host_ip/32 to lo"
    lo_addr=$host_ip
  fi
fi
check "this host's address for the Endpoints: $host_ip${dummy_if:+ (dummy interface $dummy_if)}${lo_addr:+ (added to lo)}"

trellis_start_kube_apiserver "$work/kube" "$bin" || fail "could not start etcd + kube-apiserver"
export HOME=$work # kubectl's cache
k() { timeout 30 kubectl --request-timeout=20s "$@"; }

# --- 1. the CA, the overlay, kubectl apply -k ---------------------------------------------------
ca=$work/trellis-ca
"$trellisctl" ca init --dir "$ca" --trust-domain cluster.local --kubernetes >"$work/ca-init.out" 2>&1 \
  || fail "trellisctl ca init --kubernetes failed: $(cat "$work/ca-init.out")"
for f in trellis-ca-secret.yaml trellis-mesh-configmap.yaml; do
  [[ -s "$ca/kubernetes/$f" ]] || fail "trellisctl ca init --kubernetes wrote no kubernetes/$f"
done

overlay=$work/overlay
mkdir -p "$overlay"
# kustomize does not follow Bazel's runfiles symlinks: a real copy of the base.
cp -rL k8s "$overlay/base"
cp "$ca/kubernetes/trellis-mesh-configmap.yaml" "$overlay/"
cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [base]
patches:
  # The real trellis-mesh (roots.crt, trust domain, address) over the base's placeholder.
  - path: trellis-mesh-configmap.yaml
  - target: {kind: MutatingWebhookConfiguration, name: trellis-sidecar-injector}
    patch: |-
      - op: replace
        path: /webhooks/0/clientConfig/caBundle
        value: $(base64 -w0 "$ca/roots.crt")
EOF
kubectl kustomize "$overlay" >"$work/rendered.yaml" 2>"$work/kustomize.err" \
  || fail "kubectl kustomize of the overlay failed: $(cat "$work/kustomize.err")"
# The one change for this API server: 1.20 serves PodDisruptionBudget as policy/v1beta1 only
# (policy/v1 is 1.21+, and the base targets current clusters). Everything else as rendered.
sed 's#^apiVersion: policy/v1$#apiVersion: policy/v1beta1#' "$work/rendered.yaml" >"$work/apply.yaml"
objects=$(grep -c '^kind: ' "$work/apply.yaml")
((objects >= 9)) || fail "the overlay renders only $objects objects"
k apply --validate=strict -f "$work/apply.yaml" >"$work/apply.out" 2>&1 \
  || fail "kubectl apply of the k8s/ base failed: $(cat "$work/apply.out")"
k get -f "$work/apply.yaml" -o name >"$work/got.out" 2>&1 || fail "objects of the base missing server-side: $(cat "$work/got.out")"
[[ $(wc -l <"$work/got.out") -eq $objects ]] || fail "expected $objects objects server-side, got: $(cat "$work/got.out")"
check "kubectl apply of k8s/ (overlay: caBundle, trellis-mesh): all $objects objects exist server-side ($(tr '\n' ' ' <"$work/got.out"))"

# The server's schema is really checked: an unknown field in the same Deployment is refused.
sed 's/^\(\s*\)readOnlyRootFilesystem: true$/\1readOnlyRootFilesystm: true/' "$work/apply.yaml" >"$work/typo.yaml"
! cmp -s "$work/apply.yaml" "$work/typo.yaml" || fail "could not plant a typo"
if k apply --validate=strict --dry-run=server -f "$work/typo.yaml" >"$work/typo.out" 2>&1; then
  fail "a Deployment with an unknown field was accepted"
fi
grep -q 'readOnlyRootFilesystm' "$work/typo.out" || fail "the refusal does not name the field: $(cat "$work/typo.out")"
check "an unknown field is refused by validation against the server's schema"

# Step 2 of k8s/README.md: the CA Secret (and trellis-mesh again, unchanged) from ca init.
k apply -f "$ca/kubernetes/" >"$work/apply-ca.out" 2>&1 || fail "kubectl apply -f DIR/kubernetes/ failed: $(cat "$work/apply-ca.out")"
grep -q 'secret/trellis-ca created' "$work/apply-ca.out" || fail "no Secret created: $(cat "$work/apply-ca.out")"
grep -q 'configmap/trellis-mesh unchanged' "$work/apply-ca.out" || fail "the overlay's trellis-mesh differs from ca init's: $(cat "$work/apply-ca.out")"
[[ "$(k -n trellis-system get configmap trellis-mesh -o go-template='{{index .data "roots.crt"}}')" == "$(cat "$ca/roots.crt")" ]] \
  || fail "trellis-system/trellis-mesh does not hold roots.crt"
check "CA Secret and trellis-mesh from \`trellisctl ca init --kubernetes\` applied (kubectl apply -f DIR/kubernetes/)"
# README step 2's caBundle patch, as written there, over the base's placeholder (a patch of a
# wrong path is accepted as "no change": only the result tells).
placeholder=$(sed -n 's/^ *caBundle: \([A-Za-z0-9+/=]*\)$/\1/p' k8s/webhook.yaml)
[[ -n "$placeholder" ]] || fail "no caBundle placeholder in k8s/webhook.yaml"
k patch mutatingwebhookconfiguration trellis-sidecar-injector --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$placeholder\"}]" >/dev/null \
  || fail "cannot put the placeholder caBundle back"
readme_patch=$(grep -o '"\[{.*caBundle.*}\]"' k8s/README.md | head -n1)
[[ -n "$readme_patch" ]] || fail "no caBundle patch in k8s/README.md"
# Unquoted and expanded ($(base64 -w0 ./trellis-ca/roots.crt)) from the directory the README runs in.
readme_patch=$(cd "$work" && set -o pipefail && eval "printf '%s' $readme_patch") || fail "cannot expand $readme_patch"
(cd "$work" && k patch mutatingwebhookconfiguration trellis-sidecar-injector --type=json -p "$readme_patch") \
  >"$work/patch.out" 2>&1 || fail "k8s/README.md's caBundle patch fails: $(cat "$work/patch.out")"
[[ "$(k get mutatingwebhookconfiguration trellis-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" == "$(base64 -w0 "$ca/roots.crt")" ]] \
  || fail "caBundle is not roots.crt"
check "k8s/README.md's caBundle patch applies: $(cat "$work/patch.out")"

# --- 2. RBAC of the control plane's service account: k8s/rbac.yaml, least privilege -------------
sa_user=system:serviceaccount:trellis-system:trellis-control-plane
can() { [[ "$(k auth can-i "$@" --as="$sa_user" 2>/dev/null || true)" == yes ]]; }
can create tokenreviews.authentication.k8s.io || fail "the control plane cannot create tokenreviews"
can list namespaces || fail "the control plane cannot list namespaces"
can create configmaps -n some-namespace || fail "the control plane cannot create configmaps"
can update configmaps/trellis-mesh -n some-namespace || fail "the control plane cannot update trellis-mesh"
! can list secrets --all-namespaces || fail "the control plane can list secrets"
! can get secrets/trellis-ca -n trellis-system || fail "the control plane can read the CA Secret through the API"
! can get configmaps/other -n some-namespace || fail "the control plane can read other ConfigMaps"
! can update configmaps/other -n some-namespace || fail "the control plane can update other ConfigMaps"
! can delete configmaps/trellis-mesh -n some-namespace || fail "the control plane can delete ConfigMaps"
! can create pods -n some-namespace || fail "the control plane can create pods"
can update mutatingwebhookconfigurations/trellis-sidecar-injector || fail "the control plane cannot update its webhook's caBundle"
! can update mutatingwebhookconfigurations/other || fail "the control plane can update other webhook configurations"
! can delete mutatingwebhookconfigurations/trellis-sidecar-injector || fail "the control plane can delete its webhook configuration"
check "the service account's RBAC (k8s/rbac.yaml): tokenreviews, namespaces list, trellis-mesh and its own webhook's caBundle only; no secrets, no deletes"

# The control plane keeps the caBundle itself (--webhook_configuration): put the placeholder back
# (as a re-applied k8s/ would) and let it repair it once it runs.
k patch mutatingwebhookconfiguration trellis-sidecar-injector --type=json \
  -p "[{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$placeholder\"}]" >/dev/null \
  || fail "cannot put the placeholder caBundle back"

# --- 3. the control plane, with the Deployment's own args ---------------------------------------
deploy() { k -n trellis-system get deployment trellis-control-plane -o go-template="$1"; }
mapfile -t args < <(deploy '{{range (index .spec.template.spec.containers 0).args}}{{.}}{{"\n"}}{{end}}')
((${#args[@]} > 5)) || fail "no args in the stored Deployment: ${args[*]}"
ca_mount=$(deploy '{{range (index .spec.template.spec.containers 0).volumeMounts}}{{if eq .name "ca"}}{{.mountPath}}{{end}}{{end}}')
ca_secret=$(deploy '{{range .spec.template.spec.volumes}}{{if eq .name "ca"}}{{.secret.secretName}}{{end}}{{end}}')
[[ "$ca_secret" == trellis-ca ]] || fail "the Deployment mounts Secret \"$ca_secret\", not trellis-ca"

# The Secret's files as the kubelet would mount them (defaultMode 0400).
mkdir -m 700 "$work/ca-mount" "$work/state" "$work/sa"
materialize_secret() {
  local key
  for key in ca.crt ca.key roots.crt; do
    k -n trellis-system get secret trellis-ca -o go-template="{{index .data \"$key\"}}" | base64 -d >"$work/ca-mount/.$key" \
      || fail "the Secret has no $key"
    chmod 0400 "$work/ca-mount/.$key"
    mv -f "$work/ca-mount/.$key" "$work/ca-mount/$key"
  done
}
materialize_secret
# The control plane's credentials: a TokenRequest token of its service account.
(umask 077 && k -n trellis-system create token trellis-control-plane --duration 1h >"$work/sa/token") \
  || fail "TokenRequest for trellis-control-plane failed"

cp_args=()
seen=" "
for a in "${args[@]}"; do
  name=${a%%=*}
  seen+="$name "
  case "$a" in
    --ca_dir=*)
      [[ "${a#*=}" == "$ca_mount" ]] || fail "--ca_dir=${a#*=} is not where the Deployment mounts the CA Secret ($ca_mount)"
      cp_args+=("--ca_dir=$work/ca-mount") ;;
    --state_dir=*) cp_args+=("--state_dir=$work/state") ;;
    --grpc_address=*) cp_args+=("--grpc_address=$host_ip:0") ;;
    --webhook_address=*) cp_args+=("--webhook_address=$host_ip:0") ;;
    --admin_address=*) cp_args+=("--admin_address=127.0.0.1:0") ;;
    *=/* | *0.0.0.0* | *127.0.0.1*) fail "the Deployment has an arg with a path or address this test does not know how to substitute: $a" ;;
    *) cp_args+=("$a") ;;
  esac
done
for want in --tokenreview --webhook_address --mesh_configmap_sync --inject_proxy_image; do
  [[ "$seen" == *" $want "* ]] || fail "the Deployment's args lack $want: ${args[*]}"
done
proxy_image=$(printf '%s\n' "${args[@]}" | sed -n 's/^--inject_proxy_image=//p')
# The in-cluster configuration, as in a pod: KUBERNETES_SERVICE_HOST/PORT and the service account
# directory. As root, each replica gets a private mount namespace whose /var/run/secrets/
# kubernetes.io/serviceaccount holds the API server's CA and the minted token, so it runs with
# exactly the Deployment's args; otherwise the same by --kube_* flags.
cp "$TRELLIS_KUBE_CA" "$work/sa/ca.crt"
printf 'trellis-system' >"$work/sa/namespace"
in_cluster=0
# (Not when the work directory is under /run: the private tmpfs would hide it.)
if [[ $(id -u) -eq 0 && "$(readlink -f "$work")/" != "$(readlink -f /var/run)/"* ]] \
  && unshare --mount --propagation private true 2>/dev/null; then
  in_cluster=1
else
  cp_args+=("--kube_api_server=$TRELLIS_KUBE_URL" "--kube_ca_file=$work/sa/ca.crt" "--kube_token_file=$work/sa/token")
fi
api_hostport=${TRELLIS_KUBE_URL#https://}
# run_in_pod_env CMD...: becomes CMD (exec: the caller's $! is CMD's pid) with the in-cluster
# environment of a pod (see above).
run_in_pod_env() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  KUBERNETES_SERVICE_HOST=${api_hostport%:*} KUBERNETES_SERVICE_PORT=${api_hostport##*:} \
    exec unshare --mount --propagation private -- bash -c '
      run=$(readlink -f /var/run) && mount -t tmpfs -o mode=755 trellis-e2e "$run" \
        && mkdir -p /var/run/secrets/kubernetes.io/serviceaccount \
        && cp "$0"/ca.crt "$0"/token "$0"/namespace /var/run/secrets/kubernetes.io/serviceaccount/ \
        && exec "$@"' "$work/sa" "$@"
}

# Two replicas, as the Deployment runs them (each its own state dir and ports; one CA Secret).
grpc_ports=()
admin_ports=()
webhook_ports=()
start_replica() { # start_replica N
  local n=$1 log="$work/cp$1.log" state="$work/state$1" a run=()
  mkdir -m 700 "$state"
  for a in "${cp_args[@]}"; do
    [[ "$a" == --state_dir=* ]] && a="--state_dir=$state"
    run+=("$a")
  done
  if ((in_cluster)); then
    run_in_pod_env "$cp_bin" "${run[@]}" >"$log" 2>&1 &
  else
    "$cp_bin" "${run[@]}" >"$log" 2>&1 &
  fi
  cp_pids[n]=$!
  wait_for 20 grep -q '"msg":"listening"' "$log" || fail "control plane replica $n did not start"
  grpc_ports[n]=$(grep -o '"grpc_port":[0-9]*' "$log" | tail -n1 | cut -d: -f2)
  admin_ports[n]=$(grep -o '"admin_port":[0-9]*' "$log" | tail -n1 | cut -d: -f2)
  webhook_ports[n]=$(grep -o '"webhook_port":[0-9]*' "$log" | tail -n1 | cut -d: -f2)
  [[ -n "${grpc_ports[n]}" && -n "${admin_ports[n]}" && -n "${webhook_ports[n]}" ]] || fail "no ports in $log"
}
start_replica 0
start_replica 1
grpc_port=${grpc_ports[0]}
metrics() { curl -fsS --max-time 5 "http://127.0.0.1:${admin_ports[${1:-0}]}/metrics"; }
check "2 trellis-control-plane replicas run with the Deployment's args: ${cp_args[*]//$work/\$WORK} ($( ((in_cluster)) && echo "in-cluster configuration: KUBERNETES_SERVICE_HOST/PORT and a mounted service-account directory" || echo "API server by flags: not root"))"
for log in "$work"/cp[01].log; do
  ! grep -qF "$(cat "$work/sa/token")" "$log" || fail "the control plane logged its own token"
done
ca_bundle() { k get mutatingwebhookconfiguration trellis-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}'; }
bundle_is() { [[ "$(ca_bundle)" == "$(base64 -w0 "$1")" ]]; }
wait_for 30 bundle_is "$ca/roots.crt" || fail "the control plane did not set the webhook's caBundle to roots.crt within 30 s"
check "the control plane replaced the placeholder caBundle with the live trust bundle (--webhook_configuration)"

# --- 4. Endpoints: the Service -> this host -----------------------------------------------------
webhook_svc_port=$(k get mutatingwebhookconfiguration trellis-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.service.port}')
webhook_port_name=$(k -n trellis-system get service trellis-control-plane -o jsonpath="{.spec.ports[?(@.port==$webhook_svc_port)].name}")
[[ -n "$webhook_port_name" ]] || fail "the Service has no port $webhook_svc_port for the webhook"
# One subset per replica (same address, own ports): the API server picks one per call.
{
  printf '%s\n' "apiVersion: v1" "kind: Endpoints" \
    "metadata: {name: trellis-control-plane, namespace: trellis-system}" "subsets:"
  for n in 0 1; do
    printf '%s\n' "  - addresses: [{ip: \"$host_ip\"}]" "    ports:" \
      "      - {name: $webhook_port_name, port: ${webhook_ports[n]}, protocol: TCP}" \
      "      - {name: grpc, port: ${grpc_ports[n]}, protocol: TCP}"
  done
} >"$work/endpoints.yaml"
k apply -f "$work/endpoints.yaml" >/dev/null || fail "cannot create the Endpoints: $(cat "$work/endpoints.yaml")"
check "Endpoints trellis-system/trellis-control-plane -> $host_ip ($webhook_port_name: ${webhook_ports[*]}; grpc: ${grpc_ports[*]})"

# --- 5. the mesh ConfigMap in injected namespaces -----------------------------------------------
k create namespace meshed >/dev/null
k label namespace meshed trellis.io/inject=enabled >/dev/null
k create namespace plain >/dev/null
for ns in meshed plain; do k -n "$ns" create serviceaccount web >/dev/null; done
cm_roots() { k -n "$1" get configmap trellis-mesh -o go-template='{{index .data "roots.crt"}}' 2>/dev/null; }
roots_equal() { [[ "$(cm_roots "$1")" == "$(cat "$2")" ]]; }
wait_for 30 roots_equal meshed "$ca/roots.crt" || fail "no trellis-mesh with roots.crt in namespace meshed within 30 s"
[[ "$(k -n meshed get configmap trellis-mesh -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}')" == trellis-control-plane ]] \
  || fail "the synced ConfigMap lacks the managed-by label"
[[ "$(k -n meshed get configmap trellis-mesh -o jsonpath='{.data.trust-domain}')" == cluster.local ]] || fail "trust-domain"
[[ "$(k -n meshed get configmap trellis-mesh -o jsonpath='{.data.control-plane-address}')" == trellis-control-plane.trellis-system.svc:15012 ]] \
  || fail "control-plane-address"
check "the control plane created trellis-mesh in the labelled namespace (roots.crt = the CA's roots.crt)"
! k -n plain get configmap trellis-mesh >/dev/null 2>&1 || fail "trellis-mesh created in an unlabelled namespace"
check "no trellis-mesh in the unlabelled namespace"

# A namespace labelled later gets it too; a hand-made ConfigMap of that name is left alone.
k create namespace late >/dev/null
k create namespace handmade >/dev/null
k -n handmade create configmap trellis-mesh --from-literal=roots.crt=hand-copied >/dev/null
k label namespace late trellis.io/inject=enabled >/dev/null
k label namespace handmade trellis.io/inject=enabled >/dev/null
wait_for 30 roots_equal late "$ca/roots.crt" || fail "no trellis-mesh in the newly labelled namespace within 30 s"
check "a newly labelled namespace gets trellis-mesh within the bounded wait"
wait_for 30 grep -q '"msg":"mesh ConfigMap sync: a ConfigMap of that name exists but is not managed.*"namespace":"handmade"' "$work/cp0.log" \
  || fail "no warning about the unmanaged ConfigMap"
[[ "$(cm_roots handmade)" == hand-copied ]] || fail "the control plane overwrote a ConfigMap it does not manage"
grep -q '^trellis_mesh_configmap_unmanaged_namespaces 1$' <<<"$(metrics)" || fail "unmanaged gauge: $(metrics | grep unmanaged)"
check "a ConfigMap not managed by the control plane is left alone, with a warning and a metric"

# --- 6. pods through the real webhook over TLS --------------------------------------------------
pod() { # pod NAME NAMESPACE [ANNOTATIONS, flow-mapping body]
  printf '%s\n' \
    "apiVersion: v1" "kind: Pod" "metadata:" "  name: $1" "  namespace: $2" \
    "  annotations: {${3:-}}" \
    "spec:" "  serviceAccountName: web" "  automountServiceAccountToken: false" "  containers:" \
    "    - name: app" "      image: example.invalid/app:1" \
    "      ports: [{name: http, containerPort: 8080}]" \
    "      readinessProbe:" "        httpGet: {path: /ready, port: http}"
}
# The API server's Service/Endpoints informers may lag the objects by a moment: retry briefly.
created=0
for _ in $(seq 10); do
  if pod web-0 meshed | k apply -f - >"$work/apply-pod.out" 2>&1; then created=1; break; fi
  sleep 1
done
((created)) || fail "pod in the labelled namespace not created: $(cat "$work/apply-pod.out")"
jp() { k -n "$1" get pod "$2" -o jsonpath="$3"; }
[[ "$(jp meshed web-0 '{.spec.containers[*].name}')" == "trellis-proxy app" ]] || fail "containers: $(jp meshed web-0 '{.spec.containers[*].name}')"
[[ "$(jp meshed web-0 '{.spec.initContainers[*].name}')" == trellis-init ]] || fail "init containers: $(jp meshed web-0 '{.spec.initContainers[*].name}')"
[[ "$(jp meshed web-0 '{.metadata.annotations.trellis\.io/injected}')" == classic ]] || fail "no injected marker"
[[ "$(jp meshed web-0 '{.spec.containers[0].image}')" == "$proxy_image" ]] || fail "proxy image is not the Deployment's --inject_proxy_image"
[[ "$(jp meshed web-0 '{.spec.volumes[?(@.name=="trellis-mesh")].configMap.name}')" == trellis-mesh ]] || fail "no trellis-mesh volume"
[[ "$(jp meshed web-0 '{.spec.volumes[?(@.name=="trellis-token")].projected.sources[0].serviceAccountToken.audience}')" == trellis ]] \
  || fail "no projected token volume with audience trellis"
check "the stored pod in the labelled namespace is injected by the control plane (trellis-init, trellis-proxy $proxy_image, mesh volume, token audience trellis)"
# The API server's calls came to this process: its connection to the webhook port is there.
[[ -n "$(ss -Htn state established "( sport = :${webhook_ports[0]} or sport = :${webhook_ports[1]} )")" ]] \
  || fail "no connection to the control plane's webhook ports ${webhook_ports[*]}"
check "the API server is connected to the control plane's webhook port ($host_ip: ${webhook_ports[*]})"

pod web-0 plain | k apply -f - >/dev/null || fail "pod in the unlabelled namespace not created"
[[ "$(jp plain web-0 '{.spec.containers[*].name}')" == app && -z "$(jp plain web-0 '{.spec.initContainers}')" ]] \
  || fail "the pod in the unlabelled namespace was changed"
check "a pod in an unlabelled namespace is not injected"
pod opted-out meshed '"trellis.io/inject": "false"' | k apply -f - >/dev/null || fail "opted-out pod not created"
[[ "$(jp meshed opted-out '{.spec.containers[*].name}')" == app ]] || fail "the opted-out pod was injected"
check "trellis.io/inject: \"false\" opts a pod out"
if pod bad meshed '"trellis.io/exclude-inbound-ports": "http"' | k apply -f - >"$work/bad.out" 2>&1; then
  fail "a pod with a malformed exclude annotation was created"
fi
grep -q 'admission webhook "inject.trellis.io" denied the request' "$work/bad.out" || fail "not refused by the webhook: $(cat "$work/bad.out")"
grep -q 'trellis.io/exclude-inbound-ports' "$work/bad.out" || fail "refusal does not say why: $(cat "$work/bad.out")"
check "a malformed trellis.io/exclude-inbound-ports is refused with the webhook's reason: $(tr '\n' ' ' <"$work/bad.out")"
# What the operator sees on the control plane's side: counts by result and the refusal's log line.
webhook_count() { # webhook_count RESULT: summed over both replicas
  local total=0 n v
  for n in 0 1; do
    v=$(metrics "$n" | sed -n "s/^trellis_webhook_requests_total{result=\"$1\"} \([0-9]*\)$/\1/p")
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
(($(webhook_count injected) >= 1 && $(webhook_count refused) >= 1)) \
  || fail "webhook metrics: injected=$(webhook_count injected) refused=$(webhook_count refused)"
grep -h '"result":"refused"' "$work"/cp[01].log | grep '"pod":"meshed/bad"' | grep -q 'exclude-inbound-ports' \
  || fail "no refusal line naming meshed/bad and the annotation in the control plane's log"
check "trellis_webhook_requests_total counts injected $(webhook_count injected) and refused $(webhook_count refused); the refusal is logged with the pod and the reason"

# The shipped Deployment says --inject_sidecar_mode=auto: the control plane read 1.20 from
# /version and injected classic sidecars (the pods above carry no sidecar-mode annotation).
grep 'sidecar mode chosen from the API server' "$work/cp0.log" | grep '"kubernetes_version":"1.20"' | grep -q '"sidecar_mode":"classic"' \
  || fail "the control plane did not choose classic sidecars for 1.20: $(grep -h 'sidecar mode' "$work"/cp*.log)"
check "--inject_sidecar_mode=auto: the control plane read 1.20 from /version and injected classic sidecars"
# Forcing native on 1.20 gets the result refused by the API server: the reason auto exists.
printf '%s\n' "apiVersion: v1" "kind: Pod" \
  "metadata: {name: native, namespace: meshed, annotations: {trellis.io/sidecar-mode: native}}" \
  "spec: {serviceAccountName: web, automountServiceAccountToken: false, containers: [{name: app, image: example.invalid/app:1}]}" \
  >"$work/native.yaml"
if k apply -f "$work/native.yaml" >"$work/native.out" 2>&1; then
  fail "a natively injected pod was accepted by a 1.20 API server: $(jp meshed native '{.spec.initContainers[*].name}')"
fi
grep -q 'initContainers\[1\]' "$work/native.out" || fail "unexpected refusal of the native sidecar: $(cat "$work/native.out")"
check "trellis.io/sidecar-mode: native on 1.20 is refused by the API server ($(grep -o 'spec.initContainers\[1\]\.[A-Za-z]*' "$work/native.out" | sort -u | tr '\n' ' ')invalid)"

# --- 7. TokenReview: a proxy with the injected flags gets its certificate -----------------------
mapfile -t injected_args < <(jp meshed web-0 '{range .spec.containers[0].args[*]}{@}{"\n"}{end}')
cm_roots meshed >"$work/mesh-roots.crt"
mint() { # mint AUDIENCE FILE
  (umask 077 && k -n meshed create token web --audience "$1" --duration 10m >"$2") || fail "TokenRequest (audience $1) failed"
}
mint trellis "$work/web.jwt"
mint api "$work/api.jwt"
run_proxy() { # run_proxy TOKEN_FILE LOG: the injected args, paths and addresses substituted
  local a out=()
  for a in "${injected_args[@]}"; do
    case "$a" in
      --control_plane_address=*) out+=("--control_plane_address=$host_ip:$grpc_port") ;;
      --root_file=*) out+=("--root_file=$work/mesh-roots.crt") ;; # the ConfigMap's roots.crt
      --token_file=*) out+=("--token_file=$1") ;;
      --admin_address=*) out+=("--admin_address=127.0.0.1:0") ;;
      # No iptables here: the capture listeners on free loopback ports.
      --outbound_capture_port=* | --inbound_capture_port=*) out+=("${a%%=*}=$(_trellis_kube_free_port)") ;;
      *) out+=("$a") ;;
    esac
  done
  out+=(--capture_bind_host=127.0.0.1)
  "$proxy_bin" "${out[@]}" >"$2" 2>&1 &
  proxy_pid=$!
}
run_proxy "$work/web.jwt" "$work/proxy.log"
wait_for 20 grep -q '"admin_port"' "$work/proxy.log" || fail "the proxy did not start: $(tail -n 5 "$work/proxy.log")"
proxy_admin=$(grep -o '"admin_port":[0-9]*' "$work/proxy.log" | head -n1 | cut -d: -f2)
certs() { curl -fsS --max-time 5 "http://127.0.0.1:$proxy_admin/certs"; }
has_cert() { [[ "$(certs)" == *"spiffe://cluster.local/ns/meshed/sa/web"* ]]; }
wait_for 30 has_cert \
  || fail "the proxy got no certificate for spiffe://cluster.local/ns/meshed/sa/web: $(certs || true); proxy: $(tail -n 5 "$work/proxy.log")"
grep -Eq '^trellis_cp_issuances_total\{result="ok",authenticator="tokenreview"\} [1-9]' <<<"$(metrics)" \
  || fail "no successful tokenreview issuance counted: $(metrics | grep issuances_total)"
check "a TokenRequest token (audience trellis) of meshed/web is authenticated by the control plane through TokenReview: the proxy holds spiffe://cluster.local/ns/meshed/sa/web"
stop_pid "$proxy_pid"
proxy_pid=
run_proxy "$work/api.jwt" "$work/proxy-api.log"
refused_by_tokenreview() {
  local refused
  refused=$(grep '"msg":"issuance refused"' "$work/cp0.log" | grep '"authenticator":"tokenreview"' || true)
  [[ "$refused" == *'"result":"unauthenticated"'* ]]
}
wait_for 30 refused_by_tokenreview \
  || fail "a token for audience \"api\" was not refused by TokenReview"
stop_pid "$proxy_pid"
proxy_pid=
for f in "$work/cp0.log" "$work/cp1.log" "$work/proxy.log" "$work/proxy-api.log"; do
  for t in "$work/web.jwt" "$work/api.jwt" "$work/sa/token"; do
    ! grep -qF "$(cat "$t")" "$f" || fail "$f contains a token"
  done
done
check "a token minted for audience \"api\" is refused (TokenReview); no log holds a token"

# --- 8. root rotation reaches every injected namespace -----------------------------------------
# Someone else's key in our ConfigMap must survive our update.
k -n meshed patch configmap trellis-mesh --type=merge -p '{"data":{"operator-note":"keep me"}}' >/dev/null \
  || fail "cannot add a key to meshed/trellis-mesh"
"$trellisctl" ca rotate prepare --dir "$ca" >"$work/rotate.out" 2>&1 || fail "ca rotate prepare failed: $(cat "$work/rotate.out")"
[[ $(grep -c 'BEGIN CERTIFICATE' "$ca/roots.crt") -eq 2 ]] || fail "rotate prepare did not add a second root"
k -n trellis-system create secret generic trellis-ca --from-file="$ca/ca.crt" --from-file="$ca/ca.key" \
  --from-file="$ca/roots.crt" --dry-run=client -o yaml | k replace -f - >/dev/null || fail "cannot update the Secret"
materialize_secret # what the kubelet does for a mounted Secret
for ns in meshed late; do
  wait_for 30 roots_equal "$ns" "$ca/roots.crt" || fail "trellis-mesh in $ns still lacks the new root 30 s after the rotation"
done
[[ "$(cm_roots handmade)" == hand-copied ]] || fail "the rotation touched the unmanaged ConfigMap"
[[ "$(k -n meshed get configmap trellis-mesh -o jsonpath='{.data.operator-note}')" == "keep me" ]] \
  || fail "the update dropped a key the control plane does not own"
# Both replicas raced for the same writes: every loss is a 409, retried; never an error.
updates=0
conflicts=0
for n in 0 1; do
  m=$(metrics "$n")
  grep -q '^trellis_mesh_configmap_errors_total 0$' <<<"$m" || fail "replica $n counted sync errors: $(grep errors_total <<<"$m")"
  updates=$((updates + $(sed -n 's/^trellis_mesh_configmap_writes_total{operation="update"} //p' <<<"$m")))
  conflicts=$((conflicts + $(sed -n 's/^trellis_mesh_configmap_conflicts_total //p' <<<"$m")))
done
((updates >= 2)) || fail "expected at least 2 counted updates (meshed, late), got $updates"
! grep -q '"level":"error"' "$work/cp0.log" "$work/cp1.log" || fail "an error was logged: $(grep -h '"level":"error"' "$work"/cp[01].log | head -n 3)"
check "after ca rotate prepare, trellis-mesh in every injected namespace holds both roots, other keys kept ($updates updates, $conflicts 409s between the replicas, 0 errors)"
wait_for 30 bundle_is "$ca/roots.crt" || fail "the webhook's caBundle does not hold both roots 30 s after the rotation"
grep -q '^trellis_webhook_ca_bundle_updates_total{result="error"} 0$' <<<"$(metrics 0)" || fail "webhook caBundle errors: $(metrics 0 | grep webhook_ca_bundle)"
check "after ca rotate prepare, the webhook's caBundle holds both roots (the API server keeps trusting the webhook through the rotation)"

# --- 9. failurePolicy Fail: with the control plane gone, meshed pods are refused ----------------
for pid in "${cp_pids[@]}"; do stop_pid "$pid"; done
cp_pids=()
if pod web-1 meshed | k apply -f - >"$work/down.out" 2>&1; then
  fail "a pod in the labelled namespace was created while the webhook was down"
fi
grep -q 'failed calling webhook "inject.trellis.io"' "$work/down.out" || fail "unexpected refusal: $(cat "$work/down.out")"
check "with the control plane stopped, the API server refuses the meshed pod (failed calling webhook)"

printf 'PASS: %d checks against a real kube-apiserver %s\n' "$passed" "$("$bin/kube-apiserver" --version | cut -d' ' -f2)"
