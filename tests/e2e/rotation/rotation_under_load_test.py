#!/usr/bin/env python3
"""(a) Certificates rotate every ~1.5 s under load, and no request or connection is lost.

Control plane --min_ttl=1s; both proxies --requested_ttl=3s. For ~30 s, keepalive connections and
new-connection requests go through the client proxy to an HTTP app behind the server proxy.
Checks: zero failed requests, every keepalive connection alive at the end (and never re-opened
underneath), both proxies' /certs serial changed at least 5 times and rotation_count grew by >= 5.

Usage: rotation_under_load_test.py CONTROL_PLANE TRELLISCTL PROXY
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh as m  # noqa: E402 pylint: disable=wrong-import-position

DURATION = 30.0
KEEPALIVE = 3


def test(mesh):
    mesh.start_all(requested_ttl="3s", min_ttl="1s")
    start_certs = {p.name: mesh_certs(p) for p in mesh.proxies()}
    serials = {p.name: [start_certs[p.name]["serial"]] for p in mesh.proxies()}
    traffic = m.Traffic(mesh.out_port, keepalive=KEEPALIVE, newconn=2).start()
    deadline = time.monotonic() + DURATION
    last_report = 0
    while time.monotonic() < deadline:
        for p in mesh.proxies():
            c = p.certs()
            if c and c.get("serial") and c["serial"] != serials[p.name][-1]:
                serials[p.name].append(c["serial"])
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            m.log(f"traffic {traffic.snapshot()} serials seen "
                  f"{ {k: len(v) for k, v in serials.items()} }")
        time.sleep(0.2)
    alive = traffic.stop()
    snap = traffic.snapshot()
    m.log(f"final traffic {snap}, keepalive alive at end {alive}")
    end_certs = {p.name: mesh_certs(p) for p in mesh.proxies()}

    m.check(not traffic.failures, f"{len(traffic.failures)} failed requests; first: {traffic.failures[:5]}")
    m.check(not traffic.dropped, f"dropped keepalive connections: {traffic.dropped}")
    m.check(alive == KEEPALIVE, f"{alive} of {KEEPALIVE} keepalive connections alive at the end")
    for index, ports in traffic.upstream_ports.items():
        m.check(len(ports) == 1, f"keepalive connection {index} reached the app over {len(ports)} "
                f"different connections ({ports}): it was re-established underneath")
    m.check(snap["ok_keepalive"] > 100 and snap["ok_new"] > 50, f"too little traffic: {snap}")
    for p in mesh.proxies():
        changes = len(serials[p.name]) - 1
        m.log(f"{p.name}: serial changed {changes} times; rotation_count "
              f"{start_certs[p.name]['rotation']['rotation_count']} -> "
              f"{end_certs[p.name]['rotation']['rotation_count']}")
        m.check(changes >= 5, f"{p.name}: serial changed only {changes} times in {DURATION:.0f} s")
        grew = end_certs[p.name]["rotation"]["rotation_count"] - start_certs[p.name]["rotation"]["rotation_count"]
        m.check(grew >= 5, f"{p.name}: rotation_count grew by {grew}, want >= 5")
        m.check(end_certs[p.name]["rotation"]["last_error"] is None,
                f"{p.name}: last_error set: {end_certs[p.name]['rotation']}")
        m.check(p.alive(), f"{p.name} died")
        hs = {k: v for k, v in p.metrics().items() if k.startswith("trellis_proxy_handshake_failures_total") and v}
        m.check(not hs, f"{p.name}: handshake failures during rotation: {hs}")


def mesh_certs(p):
    c = p.certs()
    if not c or not c.get("serial"):
        raise m.Fatal(f"{p.name}: /certs has no certificate: {c}")
    return c


if __name__ == "__main__":
    sys.exit(m.main(test, sys.argv))
