#!/usr/bin/env python3
"""Request latency with and without certificate rotation, same setup, one run.

Usage: bench.py CONTROL_PLANE TRELLISCTL PROXY   (bench/rotation/run.sh builds and passes them)

Two phases, each on a fresh mesh (tests/e2e/rotation/mesh.py: control plane --min_ttl=1s, a client
and a server proxy with --workers=1, a python HTTP app): 1) --requested_ttl=1h (no rotation during
the phase), 2) --requested_ttl=$ROTATING_TTL (default 2s: a new certificate about every second on both
proxies). Load: RATE requests/s (default 500), open loop, spread over CONNS keepalive connections
(default 4) through the client proxy, DURATION s per phase (default 20) after WARMUP s (default 2).
Latency is measured from each request's scheduled send time (so a stall is not hidden by the
client waiting: no coordinated omission) to the end of its response.
"""
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e", "rotation"))
import mesh as m  # noqa: E402 pylint: disable=wrong-import-position

RATE = float(os.environ.get("RATE", "500"))
CONNS = int(os.environ.get("CONNS", "4"))
DURATION = float(os.environ.get("DURATION", "20"))
WARMUP = float(os.environ.get("WARMUP", "2"))
ROTATING_TTL = os.environ.get("ROTATING_TTL", "2s")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def load(port, rate, conns, duration):
    """Open-loop load; returns (latencies_seconds, errors)."""
    per_conn = rate / conns
    latencies, errors = [], []
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def worker(index):
        try:
            c = m.RawHttp(port)
        except OSError as e:
            with lock:
                errors.append(repr(e))
            return
        mine = []
        n = 0
        offset = index / rate  # stagger the connections
        while True:
            scheduled = start + offset + n / per_conn
            if scheduled - start > duration:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status, _ = c.get("/bench")
                done = time.monotonic()
                if status != 200:
                    with lock:
                        errors.append(f"status {status}")
                else:
                    mine.append(done - scheduled)
            except (OSError, m.ConnectionClosed, ValueError) as e:
                with lock:
                    errors.append(repr(e))
                c.close()
                try:
                    c = m.RawHttp(port)
                except OSError:
                    break
            n += 1
        c.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 60)
    return latencies, errors


def phase(argv, ttl):
    mesh = m.Mesh(argv[1], argv[2], argv[3], name=f"bench-rotation-{ttl}")
    mesh.start_all(requested_ttl=ttl, min_ttl="1s")
    try:
        load(mesh.out_port, RATE, CONNS, WARMUP)
        before = {p.name: p.certs()["rotation"]["rotation_count"] for p in mesh.proxies()}
        t0 = time.monotonic()
        latencies, errors = load(mesh.out_port, RATE, CONNS, DURATION)
        elapsed = time.monotonic() - t0
        after = {p.name: p.certs()["rotation"]["rotation_count"] for p in mesh.proxies()}
        rotations = min(after[n] - before[n] for n in after)
        return {
            "ttl": ttl, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "achieved_rate": len(latencies) / elapsed,
            "rotations_per_proxy": rotations,
            "rotation_every_s": (elapsed / rotations) if rotations else None,
            "p50_ms": percentile(latencies, 50) * 1e3, "p90_ms": percentile(latencies, 90) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "p999_ms": percentile(latencies, 99.9) * 1e3,
            "max_ms": max(latencies) * 1e3 if latencies else float("nan"),
        }
    finally:
        m.kill_all()
        m.PROCESSES.clear()
        mesh.app.server.shutdown()


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    m.log(f"rate {RATE:.0f} req/s over {CONNS} keepalive connections, {DURATION:.0f} s per phase")
    steady = phase(argv, "1h")
    m.log(f"without rotation: {json.dumps(steady)}")
    rotating = phase(argv, ROTATING_TTL)
    m.log(f"during rotation: {json.dumps(rotating)}")
    print(json.dumps({"rate": RATE, "conns": CONNS, "duration": DURATION,
                      "without_rotation": steady, "during_rotation": rotating}))
    every = rotating["rotation_every_s"]
    every_text = f"every ~{every:.1f} s" if every else "NO rotation seen"
    ratio = rotating["p99_ms"] / steady["p99_ms"] if steady["p99_ms"] else float("nan")
    print(f"p99 without rotation {steady['p99_ms']:.1f} ms, during rotation ({every_text}) "
          f"{rotating['p99_ms']:.1f} ms ({ratio:.1f}x)"
          f"; errors {steady['errors']} / {rotating['errors']}")
    if steady["errors"] or rotating["errors"] or not every:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
