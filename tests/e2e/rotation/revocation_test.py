#!/usr/bin/env python3
"""(d) Revocation: the client proxy's SPIFFE ID goes on the control plane's deny-list.

With a keepalive connection open and new connections working, CLIENT_ID is appended to the file
given to --deny_list_file. Within DEADLINE seconds: new connections through the client proxy fail,
the server proxy logs the refusal with reason "revoked" (and the client's identity), and the open
keepalive connection is closed.

Usage: revocation_test.py CONTROL_PLANE TRELLISCTL PROXY
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh as m  # noqa: E402 pylint: disable=wrong-import-position

DEADLINE = 5.0


def new_request(port):
    try:
        conn = m.RawHttp(port, timeout=3)
        try:
            return conn.get("/new")[0]
        finally:
            conn.close()
    except (OSError, m.ConnectionClosed, ValueError, IndexError) as e:
        return repr(e)


def test(mesh):
    mesh.start_all(requested_ttl="10s", min_ttl="1s")
    # A keepalive connection that sends a request every 50 ms and records when it ends.
    keepalive = m.RawHttp(mesh.out_port)
    ended = {}
    stop = threading.Event()

    def loop():
        n = 0
        while not stop.is_set():
            try:
                status, _ = keepalive.get("/ka")
                if status != 200:
                    ended.update(at=time.monotonic(), why=f"status {status}")
                    return
                n += 1
            except (OSError, m.ConnectionClosed, ValueError, IndexError) as e:
                ended.update(at=time.monotonic(), why=repr(e), requests=n)
                return
            stop.wait(0.05)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(1)
    m.check(not ended, f"the keepalive connection failed before revocation: {ended}")
    m.check(new_request(mesh.out_port) == 200, "a new connection failed before revocation")

    with open(mesh.deny_file, "a", encoding="utf-8") as f:
        f.write(f"{m.CLIENT_ID}\n")
    revoked_at = time.monotonic()
    m.log(f"appended {m.CLIENT_ID} to {mesh.deny_file}")

    refused = m.wait_for(lambda: new_request(mesh.out_port) != 200, DEADLINE, 0.1)
    refused_after = time.monotonic() - revoked_at
    m.log(f"new connections refused: {bool(refused)} after {refused_after:.1f} s ({refused})")
    m.check(refused, f"new connections still work {DEADLINE} s after the deny-list change")
    # Stays refused.
    results = [new_request(mesh.out_port) for _ in range(5)]
    m.check(all(r != 200 for r in results), f"after revocation, some new connections still work: {results}")

    closed = m.wait_for(lambda: bool(ended), max(0.5, DEADLINE - (time.monotonic() - revoked_at)), 0.1)
    m.log(f"keepalive connection closed: {ended if closed else 'no'}"
          f"{' after %.1f s' % (ended['at'] - revoked_at) if closed else ''}")
    m.check(closed, f"the existing keepalive connection was not closed within {DEADLINE} s of revocation")
    stop.set()
    thread.join(timeout=5)
    keepalive.close()

    # The server proxy says why, naming the revoked identity.
    def revoked_log():
        return mesh.server.find_logs(lambda e: e.get("reason") == "revoked" and e.get("direction") == "inbound")
    entries = m.wait_for(revoked_log, 3, 0.1)
    m.check(entries, "the server proxy logged no inbound refusal with reason \"revoked\"; its warnings: "
            f"{[e for e in mesh.server.logs() if e.get('level') == 'warn'][-5:]}")
    if entries:
        m.log(f"server proxy: {entries[0]}")
        m.check(entries[0].get("peer_identity") == m.CLIENT_ID,
                f"the revoked refusal does not name {m.CLIENT_ID}: {entries[0]}")
    denied = mesh.server.find_logs(lambda e: e.get("reason") == "denied")
    m.log(f"server proxy 'denied' (closed existing) log lines: {len(denied)}; first: {denied[:1]}")
    metrics = {k: v for k, v in mesh.server.metrics().items() if ("revoked" in k or "denied" in k) and v}
    m.log(f"server proxy metrics: {metrics}")
    m.check(any("revoked" in k for k in metrics), f"no revoked handshake failure counted: {metrics}")


if __name__ == "__main__":
    sys.exit(m.main(test, sys.argv))
