#!/usr/bin/env python3
"""The real trellis-proxy process serving the app's HTTP probes, as the kubelet would use them.

Usage: app_probes_test.py TRELLIS_PROXY

An HTTP app and an HTTPS app (python, in this process; the HTTPS certificate is self-signed by the
openssl CLI) answer 200, 500, or hang; TRELLIS_APP_PROBES, set in the proxy's environment exactly
as the injector writes it, points /app-health/... routes at them. Through the proxy's admin port:
pass, fail, HTTPS, timeout, unreachable, unknown paths, the counts in /stats/prometheus; then
start-up with a bad TRELLIS_APP_PROBES must fail with a message naming the entry, and
--app_probes must win over the env var.

Every wait is bounded; every started process is killed on any exit; files live in $TEST_TMPDIR.
"""

import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

PROXY = os.path.abspath(sys.argv[1])
WORK = tempfile.mkdtemp(prefix="app_probes_test.", dir=os.environ.get("TEST_TMPDIR", "/tmp"))
STARTUP_TIMEOUT = 30.0
RELEASE = threading.Event()  # lets /slow requests of the app finish

for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(var, None)
URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness  # noqa: E402 pylint: disable=wrong-import-position
from harness import (FAILURES, PROCESSES, Fatal, check, fail, kill_all,  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
                     log_entries, wait_for)
harness.install_signal_handlers()
harness.print_ok()
harness.before_kill(RELEASE.set)


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []  # (path, headers) of every request, in order

    def do_GET(self):  # pylint: disable=invalid-name
        App.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/slow"):
            RELEASE.wait(timeout=20)
        status = 500 if self.path.startswith("/fail") else 200
        body = f"app: {self.path}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_app(tls_context=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    server.daemon_threads = True
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def self_signed():
    key, crt = os.path.join(WORK, "app.key"), os.path.join(WORK, "app.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "1", "-subj", "/CN=app.shop.svc"],
                   check=True, capture_output=True, timeout=30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    return context


def start_proxy(name, env_probes, extra=()):
    """Starts trellis-proxy in file mode (no certificate yet: the admin port serves anyway)."""
    log = os.path.join(WORK, f"{name}.log")
    env = dict(os.environ)
    env.pop("TRELLIS_APP_PROBES", None)
    if env_probes is not None:
        env["TRELLIS_APP_PROBES"] = env_probes
    args = [PROXY, f"--cert_file={WORK}/none.crt", f"--key_file={WORK}/none.key",
            f"--bundle_file={WORK}/none-roots.crt", "--admin_address=127.0.0.1:0", "--workers=1",
            "--listeners=in:127.0.0.1:0=>127.0.0.1:9@spiffe://cluster.local/ns/shop/*", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    PROCESSES.append(proc)
    return proc, log


def listening(log):
    for entry in log_entries(log):
        if entry.get("msg") == "listening":
            return entry
    return None


def admin(port, what, timeout=10):
    try:
        with URLOPEN(f"http://127.0.0.1:{port}{what}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return None, str(e)


def metric(port, route, result):
    _, body = admin(port, "/stats/prometheus")
    line = f'trellis_proxy_app_probes_total{{path="{route}",result="{result}"}} '
    for l in body.splitlines():
        if l.startswith(line):
            return float(l[len(line):])
    return None


def check_serving(http_app, https_app, refused_port):
    probes = {
        "/app-health/web/livez": {"path": "/ok", "port": http_app,
                                  "httpHeaders": [{"name": "X-Probe", "value": "live"}]},
        "/app-health/web/readyz": {"path": "/fail", "port": http_app},
        "/app-health/web/startupz": {"path": "/slow", "port": http_app, "timeoutSeconds": 1},
        "/app-health/api/livez": {"path": "/ok", "port": https_app, "scheme": "HTTPS"},
        "/app-health/gone/livez": {"path": "/ok", "port": refused_port},
    }
    proc, log = start_proxy("serving", json.dumps(probes))
    entry = wait_for(lambda: listening(log) or proc.poll() is not None, STARTUP_TIMEOUT)
    entry = listening(log)
    tail = "" if entry else open(log, encoding="utf-8", errors="replace").read()[-2000:]
    if not check(entry is not None,
                 f"the proxy starts with TRELLIS_APP_PROBES set (exit {proc.poll()}) {tail}"):
        return
    port = int(entry["admin_port"])

    status, body = admin(port, "/app-health/web/livez")
    check(status == 200 and "app answered 200" in body,
          f"livez: the app's 200 comes through ({status} {body.strip()!r})")
    headers = App.seen[-1][1] if App.seen else {}
    check(headers.get("X-Probe") == "live" and headers.get("User-Agent", "").startswith("kube-probe/"),
          f"the app got the probe's httpHeaders and a kube-probe User-Agent ({headers})")
    status, body = admin(port, "/app-health/web/readyz")
    check(status == 500 and "app answered 500" in body,
          f"readyz: the app's 500 comes through ({status} {body.strip()!r})")
    status, body = admin(port, "/app-health/api/livez")
    check(status == 200 and "https://127.0.0.1" in body,
          f"HTTPS probe to a self-signed app passes ({status} {body.strip()!r})")
    started = time.monotonic()
    status, body = admin(port, "/app-health/web/startupz")
    took = time.monotonic() - started
    check(status == 503 and "timeout" in body and took < 15,
          f"a hung app is 503 timeout after timeoutSeconds ({status} {body.strip()!r}, {took:.1f}s)")
    status, body = admin(port, "/live")
    check(status == 200, f"/live still answers after the hung probe ({status})")
    status, body = admin(port, "/app-health/gone/livez")
    check(status == 503 and "cannot reach the app" in body and "refused" in body,
          f"an app that is not listening is 503 with the reason ({status} {body.strip()!r})")
    status, body = admin(port, "/app-health/other/livez")
    check(status == 404 and "/app-health/web/livez" in body,
          f"an unknown /app-health path is 404 and lists the known ones ({status} {body.strip()!r})")
    counts = {r: metric(port, "/app-health/web/livez", r) for r in ("pass", "fail")}
    check(counts == {"pass": 1.0, "fail": 0.0} and
          metric(port, "/app-health/web/readyz", "fail") == 1.0 and
          metric(port, "/app-health/web/startupz", "timeout") == 1.0 and
          metric(port, "/app-health/gone/livez", "unreachable") == 1.0,
          f"/stats/prometheus counts every probe by result ({counts})")
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"the proxy exits 0 on SIGTERM (exit {rc})")


def check_bad_start(http_app):
    cases = [
        ('{"/app-health/web/livez": {"port": "http"}}',
         ['"/app-health/web/livez"', "port must be a number 1-65535"]),
        ('{"/app-health/web/livez": {"port": 8080', ["TRELLIS_APP_PROBES is not valid JSON"]),
        ('{"/app-health/web/livez": {"port": 8080, "scheme": "TCP"}}',
         ['"/app-health/web/livez"', 'scheme must be "HTTP" or "HTTPS"']),
    ]
    for i, (value, wants) in enumerate(cases):
        proc, log = start_proxy(f"bad-{i}", value)
        try:
            rc = proc.wait(timeout=STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        # The message an operator reads: the "error" of the JSON log line.
        text = " | ".join(f"{e.get('msg')}: {e.get('error')}" for e in log_entries(log)
                          if e.get("level") == "error" and "app probes" in e.get("msg", ""))
        check(rc not in (0, None) and all(w in text for w in wants) and listening(log) is None,
              f"TRELLIS_APP_PROBES={value} stops the start (exit {rc}) with a message naming "
              f"what to fix: {text.strip()[-400:]}")
    # --app_probes wins over the env var.
    good = json.dumps({"/app-health/flag/livez": {"path": "/ok", "port": http_app}})
    proc, log = start_proxy("flag", '{"bad', [f"--app_probes={good}"])
    wait_for(lambda: listening(log) or proc.poll() is not None, STARTUP_TIMEOUT)
    entry = listening(log)
    if check(entry is not None, "--app_probes overrides a bad TRELLIS_APP_PROBES"):
        status, _ = admin(int(entry["admin_port"]), "/app-health/flag/livez")
        check(status == 200, f"the route from --app_probes is served ({status})")
    proc.kill()
    proc.wait(timeout=10)


def main():
    http_app = start_app()
    https_app = start_app(self_signed())
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        check_serving(http_app.server_address[1], https_app.server_address[1],
                      refused.getsockname()[1])
        check_bad_start(http_app.server_address[1])
    finally:
        kill_all()
        refused.close()
        http_app.shutdown()
        https_app.shutdown()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed; logs in {WORK}", file=sys.stderr)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
