#!/bin/bash
# Runs netns_e2e.py (three pods as network namespaces, meshed by trellis-init + trellis-proxy).
# Usage: netns_e2e_test.sh NETNS_E2E_PY NETNS_PODS_PY TRELLIS_INIT TRELLIS_PROXY
# Needs root. The driver cleans up and checks that nothing is left; if python3 itself is killed,
# the EXIT trap's `netns_pods.py sweep` removes its namespaces, links and host rule.
set -u
if [[ $(id -u) -ne 0 ]]; then
  echo "FAIL: needs root (ip netns, iptables); run tests/e2e/netns/run_netns_e2e.sh as root" >&2
  exit 1
fi
export PATH="$PATH:/usr/sbin:/sbin"
# netns_pods.py removes a run whose owner died (e.g. SIGKILLed python3) on `sweep`.
netns_pods=$2
# shellcheck disable=SC2317  # Called through the EXIT trap.
last_resort_cleanup() {
  /usr/bin/python3 "$netns_pods" sweep >/dev/null 2>&1
  return 0
}
# On TERM/INT (bazel's timeout, Ctrl-C) the driver gets the signal and cleans up itself, within
# 15 s; then the EXIT trap sweeps whatever is left.
driver=""
on_signal() {
  local rc=$1 i
  if [[ -n $driver ]]; then
    kill -TERM "$driver" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
      kill -0 "$driver" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$driver" 2>/dev/null
  fi
  exit "$rc"
}
trap last_resort_cleanup EXIT
trap 'on_signal 143' TERM
trap 'on_signal 130' INT
# The driver bounds its own run (TRELLIS_NETNS_DEADLINE, default 240 s); it runs in the background
# so that this shell's traps fire at once.
/usr/bin/python3 "$@" &
driver=$!
wait "$driver"
