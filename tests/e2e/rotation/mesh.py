"""A small real mesh for end-to-end tests: CA, control plane, two proxies, an HTTP app, traffic.

Used by the tests in this folder and by bench/rotation/bench.py. Python 3 standard library only.

Topology (all on 127.0.0.1, every port picked by the kernel through :0):

  client threads --plain--> [client proxy "out" listener] --mTLS--> [server proxy "in" listener]
                                                                       --plain--> app (HTTP/1.1)

Every wait is bounded; every started process is killed when the test exits (atexit and signals).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRUST_DOMAIN = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/e2e/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/e2e/sa/server"
STARTUP_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0



def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness  # noqa: E402 pylint: disable=wrong-import-position
from harness import (FAILURES, PROCESSES, Fatal, check, fail, kill_all,  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
                     log_entries, wait_for)
harness.install_signal_handlers(hard_exit=True)


def run(args, timeout=COMMAND_TIMEOUT, env=None):
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout}s: {args}"
    return done.returncode, done.stdout, done.stderr


http_get = harness.http_get


def parse_prometheus(text):
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            pass
    return values


class Process:
    """A started binary whose stderr (JSON log lines) goes to a file."""

    def __init__(self, work, name, argv, env=None):
        self.name = name
        self.stderr_path = os.path.join(work, f"{name}.stderr")
        self.argv = argv
        self.env = env
        self.proc = None
        self.admin_port = None
        self.listening = None
        self._offset = 0
        self.start()

    def start(self):
        # Append: a restarted process keeps the earlier log; wait_listening reads only new lines.
        with open(self.stderr_path, "ab") as f:
            self._offset = f.tell()
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=self.env)
        PROCESSES.append(self.proc)

    def stderr(self, since_start=False):
        with open(self.stderr_path, "r", encoding="utf-8", errors="replace") as f:
            if since_start:
                f.seek(self._offset)
            return f.read()

    def logs(self, since_start=False):
        out = []
        for line in self.stderr(since_start).splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def find_logs(self, predicate, since_start=False):
        return [e for e in self.logs(since_start) if predicate(e)]

    def wait_listening(self, timeout=STARTUP_TIMEOUT):
        def listening():
            if self.proc.poll() is not None:
                return "exited"
            found = self.find_logs(lambda e: e.get("msg") == "listening", since_start=True)
            return found[0] if found else None

        entry = wait_for(listening, timeout)
        if entry == "exited":
            raise Fatal(f"{self.name} exited with {self.proc.returncode} before listening:\n"
                        f"{self.stderr(True)[-4000:]}")
        if not entry:
            raise Fatal(f"{self.name}: no 'listening' line within {timeout}s:\n{self.stderr(True)[-4000:]}")
        self.listening = entry
        self.admin_port = entry.get("admin_port")
        return entry

    def get(self, endpoint, timeout=3.0):
        return http_get(self.admin_port, endpoint, timeout)

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def alive(self):
        return self.proc.poll() is None

    def terminate(self, timeout=10):
        """SIGTERM and wait (a normal exit runs atexit handlers, e.g. libfaketime's cleanup)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None


class Proxy(Process):
    def listener_port(self, name):
        return (self.listening or {}).get("listeners", {}).get(name)

    def certs(self):
        status, body = self.get("/certs")
        if status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def metrics(self):
        status, body = self.get("/stats/prometheus")
        return parse_prometheus(body) if status == 200 else {}

    def metric(self, name):
        return self.metrics().get(name)

    def wait_ready(self, timeout=STARTUP_TIMEOUT):
        def ready():
            if not self.alive():
                return "exited"
            status, _ = self.get("/ready")
            return status == 200
        value = wait_for(ready, timeout, 0.1)
        if value != True:  # noqa: E712 pylint: disable=singleton-comparison
            raise Fatal(f"{self.name}: not ready within {timeout}s ({value}); certs={self.certs()}\n"
                        f"{self.stderr()[-4000:]}")


# --- the app -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):  # pylint: disable=invalid-name
        # The body names the TCP connection the request came on (the server proxy's upstream side):
        # a keepalive client can tell that its connection was never re-established.
        # One write for the whole response: split writes would meet Nagle and delayed ACKs (40 ms).
        body = f"ok {self.client_address[1]}\n".encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)

    def log_message(self, *args):  # quiet
        pass


class App:
    def __init__(self):
        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


# --- a raw HTTP/1.1 client (no silent reconnects) ------------------------------------------


class ConnectionClosed(Exception):
    pass


class RawHttp:
    def __init__(self, port, timeout=15.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _read_more(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionClosed("connection closed by the proxy (EOF)")
        self.buf += data

    def get(self, path="/"):
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._read_more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
        while len(self.buf) < length:
            self._read_more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body.decode("latin-1")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Traffic:
    """Keepalive connections plus new-connection requests, in threads, with counters.

    Keepalive: each of `keepalive` threads opens one connection and sends requests on it every
    `interval` s; a failure on it ends that connection (counted in dropped) and is not retried.
    New connections: `newconn` threads each open a fresh connection per request.
    """

    def __init__(self, port, keepalive=3, newconn=2, interval=0.02, newconn_interval=0.05):
        self.port = port
        self.keepalive = keepalive
        self.newconn = newconn
        self.interval = interval
        self.newconn_interval = newconn_interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.ok_new = 0
        self.ok_keepalive = 0
        self.failures = []      # (time, kind, error)
        self.dropped = []       # keepalive connections that ended before stop
        self.alive_keepalive = 0
        self.upstream_ports = {}  # keepalive index -> set of app-side ports seen
        self.threads = []

    def start(self):
        for i in range(self.keepalive):
            t = threading.Thread(target=self._keepalive, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        for i in range(self.newconn):
            t = threading.Thread(target=self._newconn, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _failure(self, kind, error):
        with self.lock:
            self.failures.append((time.time(), kind, repr(error)))

    def _keepalive(self, index):
        try:
            conn = RawHttp(self.port)
        except OSError as e:
            self._failure("keepalive-connect", e)
            with self.lock:
                self.dropped.append((index, time.time(), repr(e)))
            return
        with self.lock:
            self.alive_keepalive += 1
        ports = self.upstream_ports.setdefault(index, set())
        try:
            while not self.stop_event.is_set():
                try:
                    status, body = conn.get(f"/ka/{index}")
                except (OSError, ConnectionClosed, ValueError, IndexError) as e:
                    self._failure("keepalive", e)
                    with self.lock:
                        self.dropped.append((index, time.time(), repr(e)))
                    return
                if status != 200 or not body.startswith("ok"):
                    self._failure("keepalive", f"status {status} body {body!r}")
                else:
                    ports.add(body.split()[1])
                    with self.lock:
                        self.ok += 1
                        self.ok_keepalive += 1
                self.stop_event.wait(self.interval)
        finally:
            conn.close()
            with self.lock:
                self.alive_keepalive -= 1

    def _newconn(self):
        while not self.stop_event.is_set():
            try:
                conn = RawHttp(self.port)
                try:
                    status, body = conn.get("/new")
                finally:
                    conn.close()
                if status != 200 or not body.startswith("ok"):
                    self._failure("new", f"status {status} body {body!r}")
                else:
                    with self.lock:
                        self.ok += 1
                        self.ok_new += 1
            except (OSError, ConnectionClosed, ValueError, IndexError) as e:
                self._failure("new", e)
            self.stop_event.wait(self.newconn_interval)

    def snapshot(self):
        with self.lock:
            return {"ok": self.ok, "ok_keepalive": self.ok_keepalive, "ok_new": self.ok_new,
                    "failures": len(self.failures), "dropped": len(self.dropped),
                    "alive_keepalive": self.alive_keepalive}

    def stop(self):
        # Count keepalive connections alive at the end *before* stopping.
        with self.lock:
            alive = self.alive_keepalive
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10)
        return alive


# --- the mesh ------------------------------------------------------------------------------


class Mesh:
    def __init__(self, bin_cp, bin_ctl, bin_proxy, name="mesh"):
        self.cp_bin, self.ctl_bin, self.proxy_bin = (os.path.abspath(p) for p in (bin_cp, bin_ctl, bin_proxy))
        self.work = tempfile.mkdtemp(prefix=f"{name}.", dir=os.environ.get("TEST_TMPDIR", "/tmp"))
        self.ca_dir = os.path.join(self.work, "ca")
        self.tokens_file = os.path.join(self.work, "join-tokens")
        self.deny_file = os.path.join(self.work, "deny-list")
        self.state_dir = os.path.join(self.work, "cp-state")
        os.mkdir(self.state_dir)
        with open(self.deny_file, "w", encoding="utf-8") as f:
            f.write("# e2e deny-list\n")
        self.cp = None
        self.cp_args = None
        self.client = None
        self.server = None
        self.app = None
        log(f"work directory {self.work}")

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def ctl(self, *args):
        rc, out, err = run([self.ctl_bin, *args])
        if rc != 0:
            raise Fatal(f"trellisctl {' '.join(args)}: exit {rc}: {out} {err}")
        return out + err

    def init_ca(self):
        self.ctl("ca", "init", "--dir", self.ca_dir)

    def join_token(self, name, spiffe_id):
        rc, out, err = run([self.ctl_bin, "join-token", "create", "--file", self.tokens_file,
                            "--name", name, "--spiffe-id", spiffe_id])
        if rc != 0:
            raise Fatal(f"join-token create {name}: exit {rc}: {err}")
        token_path = self.path(f"{name}.token")
        with open(token_path, "w", encoding="utf-8") as f:
            f.write(out.strip() + "\n")
        os.chmod(token_path, 0o600)
        return token_path

    def start_cp(self, min_ttl="1s", grpc_port=0, extra=()):
        self.cp_args = [
            self.cp_bin, f"--ca_dir={self.ca_dir}", f"--join_tokens_file={self.tokens_file}",
            f"--deny_list_file={self.deny_file}", f"--grpc_address=127.0.0.1:{grpc_port}",
            "--admin_address=127.0.0.1:0", f"--state_dir={self.state_dir}", f"--min_ttl={min_ttl}",
            "--shutdown_grace=1s", *extra]
        if self.cp is None:
            self.cp = Process(self.work, "control-plane", self.cp_args)
        else:
            self.cp.argv = self.cp_args
            self.cp.start()
        entry = self.cp.wait_listening()
        self.cp.grpc_port = entry.get("grpc_port")
        log(f"control plane listening: grpc {self.cp.grpc_port} admin {self.cp.admin_port}")
        return self.cp

    def start_proxy(self, name, spiffe_id, listeners, requested_ttl, prefix=(), extra=(), env=None):
        token = self.path(f"{name}.token")
        if not os.path.exists(token):
            token = self.join_token(name, spiffe_id)
        argv = [*prefix, self.proxy_bin,
                f"--control_plane_address=127.0.0.1:{self.cp.grpc_port}",
                "--control_plane_name=localhost",
                f"--root_file={os.path.join(self.ca_dir, 'roots.crt')}",
                f"--join_token_file={token}", f"--requested_ttl={requested_ttl}",
                "--admin_address=127.0.0.1:0", "--workers=1", f"--listeners={listeners}", *extra]
        proxy = Proxy(self.work, name, argv, env=env)
        proxy.wait_listening()
        proxy.wait_ready()
        log(f"{name} ready: {proxy.listening}")
        return proxy

    def start_all(self, requested_ttl="3s", min_ttl="1s", server_prefix=(), client_ttl=None,
                  server_env=None, server_extra=()):
        self.init_ca()
        self.app = App()
        # The control plane needs the join-token file at start-up.
        self.join_token("server-proxy", SERVER_ID)
        self.join_token("client-proxy", CLIENT_ID)
        self.start_cp(min_ttl=min_ttl)
        self.server = self.start_proxy(
            "server-proxy", SERVER_ID, f"in=in:127.0.0.1:0=>127.0.0.1:{self.app.port}@{CLIENT_ID}",
            requested_ttl, prefix=server_prefix, env=server_env, extra=server_extra)
        in_port = self.server.listener_port("in")
        self.client = self.start_proxy(
            "client-proxy", CLIENT_ID, f"out=out:127.0.0.1:0=>127.0.0.1:{in_port}@{SERVER_ID}",
            client_ttl or requested_ttl)
        self.out_port = self.client.listener_port("out")
        if not (isinstance(in_port, int) and isinstance(self.out_port, int)):
            raise Fatal(f"listener ports missing: server {self.server.listening} client {self.client.listening}")
        # One request end to end before any test starts.
        def works():
            try:
                c = RawHttp(self.out_port)
                try:
                    return c.get("/warmup")[0] == 200
                finally:
                    c.close()
            except (OSError, ConnectionClosed, ValueError):
                return False
        if not wait_for(works, 15, 0.2):
            raise Fatal("no request got through the mesh within 15 s")
        return self

    def proxies(self):
        return [self.client, self.server]


def dump_logs(mesh, tail=3000):
    for p in [mesh.cp, mesh.client, mesh.server]:
        if p is None:
            continue
        try:
            print(f"----- {p.name} stderr (tail) -----\n{p.stderr()[-tail:]}", file=sys.stderr)
        except OSError:
            pass


def main(test, argv):
    """Runs test(mesh); exit 0 only when no check failed."""
    if len(argv) < 4:
        print(f"usage: {argv[0]} CONTROL_PLANE TRELLISCTL PROXY", file=sys.stderr)
        return 2
    mesh = Mesh(argv[1], argv[2], argv[3], name=os.path.basename(argv[0]).replace(".py", ""))
    started = time.monotonic()
    try:
        test(mesh)
    except Fatal as e:
        fail(f"fatal: {e}")
    except Exception as e:  # pylint: disable=broad-except
        import traceback  # pylint: disable=import-outside-toplevel
        traceback.print_exc()
        fail(f"unexpected exception: {e!r}")
    finally:
        if FAILURES:
            dump_logs(mesh)
        kill_all()
    elapsed = time.monotonic() - started
    if FAILURES:
        print(f"\n{len(FAILURES)} check(s) failed in {elapsed:.1f} s:", file=sys.stderr)
        for f in FAILURES:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"PASS ({elapsed:.1f} s)", file=sys.stderr)
    return 0
