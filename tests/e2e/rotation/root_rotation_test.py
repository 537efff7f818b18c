#!/usr/bin/env python3
"""(c) Root CA rotation end to end (trellisctl ca rotate prepare / activate / retire --force) under load.

Steps, with keepalive and new-connection traffic flowing all along:
  prepare  -> both proxies trust 2 roots (trellis_proxy_trust_bundle_roots == 2);
  activate -> both proxies' certificates chain to the new root (the intermediate in /certs changes
              and its issuer is the new root);
  retire --force -> both proxies trust 1 root again, the new one.
Checks: zero failed requests, zero dropped keepalive connections, no handshake failures.

Usage: root_rotation_test.py CONTROL_PLANE TRELLISCTL PROXY
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh as m  # noqa: E402 pylint: disable=wrong-import-position

KEEPALIVE = 3
STEP_TIMEOUT = 15.0


def roots_gauge(p):
    return p.metric("trellis_proxy_trust_bundle_roots")


def test(mesh):
    mesh.start_all(requested_ttl="3s", min_ttl="1s")
    traffic = m.Traffic(mesh.out_port, keepalive=KEEPALIVE, newconn=2).start()
    time.sleep(2)
    initial = {p.name: p.certs() for p in mesh.proxies()}
    for p in mesh.proxies():
        m.check(roots_gauge(p) == 1, f"{p.name}: trust_bundle_roots {roots_gauge(p)} before prepare, want 1")
    old_chain = {n: [(c["subject"], c["issuer"], c["sha256"]) for c in cs["chain"]] for n, cs in initial.items()}
    m.log(f"initial chains: {old_chain}")
    old_root_sha = {r["sha256"] for r in initial["client-proxy"]["bundle_roots"]}

    t0 = time.monotonic()
    m.log("ca rotate prepare: " + mesh.ctl("ca", "rotate", "prepare", "--dir", mesh.ca_dir).strip().replace("\n", " | "))
    ok = m.wait_for(lambda: all(roots_gauge(p) == 2 for p in mesh.proxies()), STEP_TIMEOUT, 0.1)
    m.log(f"prepare: both proxies trust 2 roots: {ok} after {time.monotonic() - t0:.1f} s; traffic {traffic.snapshot()}")
    if not m.check(ok, f"trust_bundle_roots did not reach 2 on both proxies within {STEP_TIMEOUT} s: "
                   f"{[roots_gauge(p) for p in mesh.proxies()]}"):
        raise m.Fatal("prepare did not propagate")
    bundle = mesh.client.certs()["bundle_roots"]
    new_roots = [r for r in bundle if r["sha256"] not in old_root_sha]
    m.check(len(new_roots) == 1, f"after prepare, want exactly one new root in the bundle: {bundle}")
    new_root = new_roots[0] if new_roots else {"subject": None, "sha256": None}
    time.sleep(1)

    t0 = time.monotonic()
    m.log("ca rotate activate: " + mesh.ctl("ca", "rotate", "activate", "--dir", mesh.ca_dir).strip().replace("\n", " | "))

    def on_new_root(p):
        c = p.certs() or {}
        chain = c.get("chain") or []
        if len(chain) < 2:
            return False
        # The intermediate changed, and the chain's top is issued by the new root.
        return (chain[1]["sha256"] != old_chain[p.name][1][2] and chain[-1]["issuer"] == new_root["subject"]
                and chain[0]["issuer"] == chain[1]["subject"])
    ok = m.wait_for(lambda: all(on_new_root(p) for p in mesh.proxies()), STEP_TIMEOUT, 0.1)
    m.log(f"activate: both proxies chain to the new root: {ok} after {time.monotonic() - t0:.1f} s; "
          f"traffic {traffic.snapshot()}")
    for p in mesh.proxies():
        m.log(f"{p.name} chain now: {[(c['subject'], c['issuer']) for c in p.certs()['chain']]}")
    if not m.check(ok, f"certificates did not move to the new root within {STEP_TIMEOUT} s"):
        raise m.Fatal("activate did not propagate")
    time.sleep(2)  # a few more rotations on the new CA under load

    t0 = time.monotonic()
    m.log("ca rotate retire --force: " + mesh.ctl("ca", "rotate", "retire", "--force", "--dir", mesh.ca_dir).strip().replace("\n", " | "))

    def retired(p):
        c = p.certs() or {}
        roots = c.get("bundle_roots") or []
        return roots_gauge(p) == 1 and len(roots) == 1 and roots[0]["sha256"] == new_root["sha256"]
    ok = m.wait_for(lambda: all(retired(p) for p in mesh.proxies()), STEP_TIMEOUT, 0.1)
    m.log(f"retire: both proxies trust only the new root: {ok} after {time.monotonic() - t0:.1f} s; "
          f"traffic {traffic.snapshot()}")
    m.check(ok, f"the old root was not removed on both proxies within {STEP_TIMEOUT} s: "
            f"{[(p.name, roots_gauge(p), p.certs().get('bundle_roots')) for p in mesh.proxies()]}")
    time.sleep(3)  # traffic and rotations go on with one root

    alive = traffic.stop()
    snap = traffic.snapshot()
    m.log(f"final traffic {snap}, keepalive alive at end {alive}")
    m.check(not traffic.failures, f"{len(traffic.failures)} failed requests; first: {traffic.failures[:5]}")
    m.check(not traffic.dropped, f"dropped keepalive connections: {traffic.dropped}")
    m.check(alive == KEEPALIVE, f"{alive} of {KEEPALIVE} keepalive connections alive at the end")
    for p in mesh.proxies():
        c = p.certs()
        m.check(c["rotation"]["last_error"] is None, f"{p.name}: last_error {c['rotation']}")
        hs = {k: v for k, v in p.metrics().items() if k.startswith("trellis_proxy_handshake_failures_total") and v}
        m.check(not hs, f"{p.name}: handshake failures during root rotation: {hs}")
    # A brand-new connection after retire works (both leaves chain to the new root only).
    try:
        conn = m.RawHttp(mesh.out_port)
        try:
            status = conn.get("/after-retire")[0]
        finally:
            conn.close()
    except (OSError, m.ConnectionClosed) as e:
        status = repr(e)
    m.check(status == 200, f"a new connection after retire failed: {status}")


if __name__ == "__main__":
    sys.exit(m.main(test, sys.argv))
