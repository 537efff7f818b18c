#!/usr/bin/env python3
"""The demo's applications: they speak plain HTTP on loopback and know nothing of TLS.

  demo_app.py server --pod-dir DIR [--host 127.0.0.1] [--port 0]
      checkout's app: an HTTP server (port 0: a free port) answering "checkout says hi".
      Prints {"listening": PORT} on stdout once it accepts connections, then one line per
      request: {"request": "GET /", "from": "127.0.0.1:PORT"} (who connected: its own proxy).
  demo_app.py client --pod-dir DIR --name NAME --url URL [--interval 0.2]
      frontend's / intruder's app: calls URL every INTERVAL seconds, one new connection per call,
      and prints one JSON line per call on stdout: {"t": ..., "ok": true, "status": 200, "ms": ...}
      or {"t": ..., "ok": false, "error": "..."}. Stops after the current call on SIGTERM/SIGINT.

--pod-dir is not used beyond naming the pod: it puts the demo's work directory in every process's
command line, so that a leftover process is easy to find (scripts/demo --stop, the demo test).
Standard library only.
"""

import argparse
import http.client
import http.server
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse

STOP = False
PRINT_LOCK = threading.Lock()


def on_stop(_signum, _frame):
    global STOP  # pylint: disable=global-statement
    STOP = True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "checkout/1"

    def do_GET(self):  # pylint: disable=invalid-name
        body = b"checkout says hi\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):  # the one line per request is printed by do_GET
        pass

    def log_request(self, code="-", size="-"):
        del code, size
        line = json.dumps({"request": f"{self.command} {self.path}",
                           "from": f"{self.client_address[0]}:{self.client_address[1]}"})
        with PRINT_LOCK:  # handler threads: one whole line at a time
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def serve(args):
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def shutdown(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def call(host, port, path, timeout):
    """One GET on a new connection; returns the JSON record of the call."""
    start = time.monotonic()
    record = {"t": round(time.time(), 3)}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace").strip()
        record.update(ok=response.status == 200, status=response.status, body=body[:80])
    except (OSError, http.client.HTTPException) as err:
        text = str(err) or type(err).__name__
        if isinstance(err, http.client.RemoteDisconnected):
            text = "connection closed before any response"
        elif isinstance(err, ConnectionResetError):
            text = "connection reset"
        elif isinstance(err, socket.timeout):
            text = f"timed out after {timeout:g} s"
        record.update(ok=False, error=text)
    finally:
        conn.close()
    record["ms"] = round((time.monotonic() - start) * 1000.0, 1)
    return record


def client(args):
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    url = urllib.parse.urlsplit(args.url)
    path = url.path or "/"
    next_call = time.monotonic()
    while not STOP:
        record = call(url.hostname, url.port, path, args.timeout)
        record["client"] = args.name
        print(json.dumps(record), flush=True)
        next_call += args.interval
        delay = next_call - time.monotonic()
        if delay < 0:  # fell behind (a slow call): do not burst to catch up
            next_call = time.monotonic()
            delay = 0
        # Sleep in small steps so that a stop request is honoured promptly.
        while delay > 0 and not STOP:
            step = min(delay, 0.05)
            time.sleep(step)
            delay -= step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--pod-dir", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("client")
    c.add_argument("--pod-dir", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--url", required=True)
    c.add_argument("--interval", type=float, default=0.2)
    c.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args)
    else:
        client(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
