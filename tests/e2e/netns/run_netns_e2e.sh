#!/usr/bin/env bash
# Runs the network-namespace e2e test (//tests/e2e/netns:netns_e2e_test): three pods as network
# namespaces meshed by trellis-init + trellis-proxy. It is tagged manual, so `bazel test //...`
# skips it; this runner (or scripts/test) runs it by name. Needs root, iproute2, iptables,
# openssl and tcpdump (installed here with apt-get when missing).
#
#   tests/e2e/netns/run_netns_e2e.sh [BAZEL_STARTUP_OPTION...] [-- BAZEL_TEST_ARG...]
#   e.g. tests/e2e/netns/run_netns_e2e.sh --output_base=/var/cache/trellis-bazel/netns
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
if [[ $(id -u) -ne 0 ]]; then
  echo "run_netns_e2e.sh: needs root (it creates network namespaces and iptables rules)" >&2
  exit 1
fi
missing=()
for pair in ip:iproute2 iptables-restore:iptables tcpdump:tcpdump openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "run_netns_e2e.sh: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
startup=()
while (($#)) && [[ $1 != -- ]]; do startup+=("$1"); shift; done
(($#)) && shift
exec bazel "${startup[@]}" test --test_output=errors "$@" //tests/e2e/netns:netns_e2e_test
