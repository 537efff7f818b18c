#!/usr/bin/env python3
"""(b) The control plane is killed (-9) for longer than a renewal interval, then comes back.

Both proxies ask for 6 s certificates (renewal at ~3 s). Right after both have rotated, the
control plane is SIGKILLed and stays down OUTAGE seconds (> the renewal interval, < the lifetime).
Checks: keepalive and new-connection traffic never fails; /certs shows rotation.last_error while
the control plane is down; after a restart on the same gRPC port with the same CA directory,
renewal resumes (rotation_count grows, the serial changes, last_error clears).

Usage: control_plane_outage_test.py CONTROL_PLANE TRELLISCTL PROXY
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh as m  # noqa: E402 pylint: disable=wrong-import-position

TTL = "6s"
# The control plane answers refresh_after at about half the lifetime (+/- jitter: 2.4-3.6 s for 6 s
# certificates). Killed right after a renewal, 4 s of outage misses the next renewal and leaves
# ~2 s of validity to come back in (the proxy retries at least every quarter of what is left).
OUTAGE = 4.0
# OUTAGE_TEST_SECONDS=12 (target control_plane_long_outage_test): the outage outlasts the
# certificates. Traffic is then expected to fail while they are expired; what is checked is that
# the proxies get new certificates within RESUME_AFTER_EXPIRY s of the control plane's return.
LONG = float(os.environ.get("OUTAGE_TEST_SECONDS", "0"))
# Without a valid certificate the proxy retries at most every 5 s +/- 50% (RetryDelay's
# retry_cap_without_certificate), so the next attempt after the return is at most 7.5 s away; the
# rest is slack for a loaded 2-core CI machine.
RESUME_AFTER_EXPIRY = 12.0
if LONG:
    OUTAGE = LONG
KEEPALIVE = 3


def certs(p):
    c = p.certs()
    if not c or not c.get("serial"):
        raise m.Fatal(f"{p.name}: /certs has no certificate: {c}")
    return c


def test(mesh):
    mesh.start_all(requested_ttl=TTL, min_ttl="1s")
    traffic = m.Traffic(mesh.out_port, keepalive=KEEPALIVE, newconn=2).start()
    time.sleep(2)

    # Kill right after both proxies renewed, so the outage fits in the certificates' lifetime.
    before = {p.name: certs(p)["serial"] for p in mesh.proxies()}
    changed = m.wait_for(lambda: all(certs(p)["serial"] != before[p.name] for p in mesh.proxies()), 10, 0.05)
    m.check(changed, "the proxies did not renew within 10 s before the outage")
    grpc_port = mesh.cp.grpc_port
    mesh.cp.kill9()
    killed_at = time.monotonic()
    # Read after the kill: a renewal in flight at the kill may still have landed.
    at_kill = {p.name: certs(p) for p in mesh.proxies()}
    m.log(f"control plane killed (-9); serials {[c['serial'] for c in at_kill.values()]}, "
          f"not_after {[c['not_after'] for c in at_kill.values()]}, traffic {traffic.snapshot()}")

    # While it is down (checks bounded so the restart happens on time): last_error appears,
    # traffic goes on, the certificate stays and /ready stays 200.
    restart_at = killed_at + OUTAGE

    def errors_set():
        return all((p.certs() or {}).get("rotation", {}).get("last_error") for p in mesh.proxies())
    m.check(m.wait_for(errors_set, max(0.1, restart_at - time.monotonic() - 0.2), 0.1),
            f"rotation.last_error not set on both proxies during the outage: "
            f"{[p.certs() for p in mesh.proxies()]}")
    for p in mesh.proxies():
        c = p.certs()
        m.log(f"{p.name} during outage: {c['rotation']}")
        m.check(c["serial"] == at_kill[p.name]["serial"],
                f"{p.name}: the certificate changed while the control plane was down?")
        if time.monotonic() < restart_at - 0.3 and not LONG:
            status, body = p.get("/ready", timeout=1)
            m.check(status == 200, f"{p.name}: /ready {status} {body!r} during the outage (certificate still valid)")
    remaining = restart_at - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    during = traffic.snapshot()
    m.log(f"after {time.monotonic() - killed_at:.1f} s of outage: traffic {during}")
    if not LONG:
        m.check(during["failures"] == 0, f"requests failed during the outage: {traffic.failures[:5]}")

    # Restart on the same port, same CA directory.
    mesh.start_cp(min_ttl="1s", grpc_port=grpc_port)
    restarted_at = time.monotonic()
    m.check(mesh.cp.grpc_port == grpc_port, f"restarted control plane on {mesh.cp.grpc_port}, want {grpc_port}")

    def resumed():
        for p in mesh.proxies():
            c = p.certs() or {}
            r = c.get("rotation", {})
            if (c.get("serial") == at_kill[p.name]["serial"] or r.get("last_error")
                    or r.get("rotation_count", 0) <= at_kill[p.name]["rotation"]["rotation_count"]):
                return False
        return True
    ok = m.wait_for(resumed, RESUME_AFTER_EXPIRY if LONG else 15, 0.1)
    m.log(f"renewal resumed: {ok} after {time.monotonic() - restarted_at:.1f} s; "
          f"{[(p.name, p.certs()['rotation']) for p in mesh.proxies()]}")
    m.check(ok, f"renewal did not resume within {RESUME_AFTER_EXPIRY if LONG else 15} s of the restart: {[p.certs() for p in mesh.proxies()]}")
    # And it keeps going: one more rotation on each.
    now = {p.name: certs(p)["rotation"]["rotation_count"] for p in mesh.proxies()}
    m.check(m.wait_for(lambda: all(certs(p)["rotation"]["rotation_count"] > now[p.name] for p in mesh.proxies()), 8, 0.1),
            "no further rotation after the first one following the restart")
    time.sleep(1)
    alive = traffic.stop()
    snap = traffic.snapshot()
    m.log(f"final traffic {snap}, keepalive alive at end {alive}")
    if LONG:
        return
    m.check(not traffic.failures, f"{len(traffic.failures)} failed requests; first: {traffic.failures[:5]}")
    m.check(not traffic.dropped, f"dropped keepalive connections: {traffic.dropped}")
    m.check(alive == KEEPALIVE, f"{alive} of {KEEPALIVE} keepalive connections alive at the end")
    m.check(snap["ok_new"] > 50, f"too little new-connection traffic: {snap}")


if __name__ == "__main__":
    sys.exit(m.main(test, sys.argv))
