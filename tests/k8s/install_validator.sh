#!/usr/bin/env bash
# Installs the offline Kubernetes schema validator's one npm dependency into a cache directory
# (default /var/cache/trellis-npm-k8s) and prints the node_modules path. Idempotent.
#   tests/k8s/install_validator.sh [DIR]
set -euo pipefail
dir=${1:-${TRELLIS_K8S_NPM_DIR:-/var/cache/trellis-npm-k8s}}
version=2.0.1
mkdir -p "$dir"
pkg=$dir/node_modules/@kubernetes/client-node/package.json
if [[ ! -f "$pkg" ]] || ! grep -q "\"version\": \"$version\"" "$pkg"; then
  [[ -f "$dir/package.json" ]] || printf '{"name":"trellis-k8s-validate","private":true}\n' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "@kubernetes/client-node@$version" >&2)
fi
echo "$dir/node_modules"
