#!/usr/bin/env python3
"""Runs the real trellis-proxy process as an operator would, and checks what they notice.

Usage: process_test.py TRELLIS_PROXY MAIN_CC

MAIN_CC is proxy/main.cc, whose ABSL_FLAG definitions --help must document.

Set-up: a P-256 root and leaves with one SPIFFE URI SAN (EKU serverAuth+clientAuth), minted with
the openssl CLI; an HTTP app (python http.server, in this process) behind an inbound proxy
("in"), and an outbound proxy ("out") in front of it, both in file mode on port 0.

Checks, in order (the drain comes last because it ends the inbound proxy):
  1. clients no one here wrote (curl, openssl s_client) against the inbound listener;
  2. certificate file reload under traffic, with no failed connection;
  3. SIGTERM drain of the inbound proxy with a request in flight;
  4. start-up errors and --help.

Every wait is bounded; every started process is killed on any exit; all files live under
$TEST_TMPDIR.
"""

import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

PROXY = os.path.abspath(sys.argv[1])
MAIN_CC = os.path.abspath(sys.argv[2])
WORK = tempfile.mkdtemp(prefix="proxy_process_test.", dir=os.environ.get("TEST_TMPDIR", "/tmp"))

TD = "trellis-e2e.test"
SERVER_ID = f"spiffe://{TD}/ns/shop/sa/backend"     # the inbound proxy (the app's identity)
CLIENT_ID = f"spiffe://{TD}/ns/shop/sa/frontend"    # allowed by the inbound listener
INTRUDER_ID = f"spiffe://{TD}/ns/other/sa/intruder"  # same trust domain, not allowed

STARTUP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 20.0
DRAIN_TIMEOUT = 8.0  # --drain_timeout of the inbound proxy
SLOW_CHUNKS, SLOW_GAP = 6, 0.5  # the slow response takes 3 s

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness  # noqa: E402 pylint: disable=wrong-import-position
from harness import (FAILURES, PROCESSES, Fatal, check, fail, kill_all,  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
                     log_entries, wait_for)
harness.install_signal_handlers()
harness.print_ok()

# Neither urllib nor curl may go through a proxy from the environment.
for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(var, None)
URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def path(*parts):
    return os.path.join(WORK, *parts)


def run(args, timeout=COMMAND_TIMEOUT):
    """Runs a command to completion (bounded); returns (rc, stdout, stderr)."""
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout}s: {args}"
    return done.returncode, done.stdout, done.stderr


def must(args):
    rc, out, err = run(args)
    if rc != 0:
        raise Fatal(f"{' '.join(args)}: exit {rc}: {err}")
    return out


def mint_root():
    key, crt = path("root.key"), path("root.pem")
    must(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    must(["openssl", "req", "-x509", "-new", "-key", key, "-sha256", "-days", "1",
          "-subj", f"/O=Trellis e2e/CN=Trellis e2e root ({TD})", "-out", crt,
          "-addext", "basicConstraints=critical,CA:TRUE,pathlen:1",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return key, crt


def mint_leaf(name, spiffe_id, root_key, root_crt):
    """Returns (cert, key, serial as int) of a new leaf with one SPIFFE URI SAN."""
    key, csr, crt, ext = (path(f"{name}.{s}") for s in ("key", "csr", "pem", "ext"))
    with open(ext, "w", encoding="utf-8") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyAgreement\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName=critical,URI:{spiffe_id}\n")
    must(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    must(["openssl", "req", "-new", "-key", key, "-subj", "/O=Trellis e2e", "-out", csr])
    must(["openssl", "x509", "-req", "-in", csr, "-CA", root_crt, "-CAkey", root_key,
          "-CAcreateserial", "-days", "1", "-sha256", "-extfile", ext, "-out", crt])
    serial = must(["openssl", "x509", "-in", crt, "-noout", "-serial"]).strip().split("=", 1)[1]
    return crt, key, int(serial, 16)


# ---------------------------------------------------------------------------------------------
# The app: HTTP/1.1 with keep-alive; /slow sends its body in pieces.

class AppHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # pylint: disable=invalid-name
        if self.path.startswith("/slow"):
            chunk = b"slow-chunk\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(chunk) * SLOW_CHUNKS))
            self.end_headers()
            self.wfile.flush()
            for i in range(SLOW_CHUNKS):
                if i:
                    time.sleep(SLOW_GAP)
                self.wfile.write(chunk)
                self.wfile.flush()
            return
        body = f"hello from the app: {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_app():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AppHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------
# Proxies.

class Proxy:
    def __init__(self, name, cert, key, bundle, listeners, extra=()):
        self.name = name
        self.log = path(f"{name}.log")
        args = [PROXY, f"--cert_file={cert}", f"--key_file={key}", f"--bundle_file={bundle}",
                f"--listeners={listeners}", "--admin_address=127.0.0.1:0", "--workers=1", *extra]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        PROCESSES.append(self.proc)
        listening = wait_for(lambda: self._listening() or self.proc.poll() is not None,
                             STARTUP_TIMEOUT)
        entry = self._listening()
        if not entry:
            raise Fatal(f"proxy {name} did not log 'listening' within {STARTUP_TIMEOUT}s "
                        f"(exit {self.proc.poll()}, listening={listening}): {self.text()[-2000:]}")
        self.admin_port = int(entry["admin_port"])
        self.ports = {k: int(v) for k, v in entry["listeners"].items()}

    def _listening(self):
        for entry in log_entries(self.log):
            if entry.get("msg") == "listening":
                return entry
        return None

    def text(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def admin(self, what, timeout=3):
        """GET on the admin endpoint: (status, body), or (None, error) when it does not answer."""
        try:
            with URLOPEN(f"http://127.0.0.1:{self.admin_port}{what}", timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            return None, str(e)

    def metric(self, name):
        status, body = self.admin("/stats/prometheus")
        if status != 200:
            return None
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def serial(self):
        status, body = self.admin("/certs")
        if status != 200:
            return None
        serial = json.loads(body).get("serial")
        return int(serial.replace(":", ""), 16) if serial else None

    def reasons(self):
        return [e for e in log_entries(self.log) if "reason" in e]


# ---------------------------------------------------------------------------------------------
# 1. curl and openssl s_client against the inbound listener.

def curl(port, cert=None, key=None, what="/", max_time=5, alpn=False):
    # The proxy's server certificate has a SPIFFE URI SAN and no DNS SAN, so curl cannot check a
    # host name against it: -k skips that (and the chain check, which s_client -CAfile does below)
    # while curl still presents the client certificate, which is what the proxy authorizes.
    # --no-alpn: the proxy accepts only the mesh ALPN (trellis-mtls/1) or none at all, and curl
    # offers h2,http/1.1 by default (refused with no_application_protocol, checked below).
    args = ["curl", "-sS", "--noproxy", "*", "-k", "--max-time", str(max_time)]
    if not alpn:
        args.append("--no-alpn")
    if cert:
        args += ["--cert", cert, "--key", key]
    return run(args + [f"https://127.0.0.1:{port}{what}"], timeout=max_time + 5)


def wait_reason(proxy, reason, before):
    """Waits for a new log line with this reason; returns it or None."""
    found = wait_for(lambda: [e for e in proxy.reasons()[before:] if e.get("reason") == reason],
                     5)
    return found[0] if found else None


def check_clients(inbound, root, client, intruder):
    port = inbound.ports["in"]

    rc, out, err = curl(port, client[0], client[1], "/from-curl")
    check(rc == 0 and "hello from the app: /from-curl" in out,
          f"curl with the allowed client certificate ({CLIENT_ID}) gets the app's response "
          f"(exit {rc}, out {out.strip()!r}, err {err.strip()!r})")

    before = len(inbound.reasons())
    rc, out, err = curl(port, client[0], client[1], "/with-alpn", alpn=True)
    entry = wait_reason(inbound, "protocol_error", before)
    check(rc != 0 and entry is not None and "application protocol" in json.dumps(entry),
          "curl offering its default ALPN (h2,http/1.1) is refused and the proxy logs "
          f"protocol_error / no application protocol (exit {rc}: {err.strip()!r}; {entry})")

    before = len(inbound.reasons())
    rc, out, err = curl(port, intruder[0], intruder[1], "/from-intruder")
    check(rc != 0 and "hello from the app" not in out,
          f"curl with a non-allowed client certificate ({INTRUDER_ID}) fails "
          f"(exit {rc}, out {out.strip()!r}, err {err.strip()!r})")
    entry = wait_reason(inbound, "identity_not_allowed", before)
    check(entry is not None, "the inbound proxy logs reason identity_not_allowed: "
          f"{json.dumps(entry) if entry else inbound.reasons()[before:]}")
    if entry is not None:
        check(INTRUDER_ID in json.dumps(entry),
              f"the identity_not_allowed line names the refused peer {INTRUDER_ID}: "
              f"{json.dumps(entry)}")

    before = len(inbound.reasons())
    rc, out, err = curl(port, what="/no-cert")
    check(rc != 0 and "hello from the app" not in out,
          f"curl without a client certificate fails (exit {rc}, err {err.strip()!r})")
    entry = wait_reason(inbound, "no_peer_certificate", before)
    check(entry is not None, "the inbound proxy logs reason no_peer_certificate: "
          f"{json.dumps(entry) if entry else inbound.reasons()[before:]}")

    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-cert", client[0],
            "-key", client[1], "-CAfile", root]
    rc, out, err = run(base + ["-tls1_3"])
    text = out + err
    check("Verify return code: 0 (ok)" in text,
          "s_client -tls1_3 -CAfile root.pem: the proxy's chain verifies (Verify return code: 0)")
    check(re.search(r"Server Temp Key: X25519", text) is not None,
          "s_client -tls1_3: the negotiated group is X25519 "
          f"({re.findall(r'Server Temp Key:.*', text)})")
    check(re.search(r"New, TLSv1\.3, Cipher is TLS_", text) is not None
          or re.search(r"Protocol\s*: TLSv1\.3", text) is not None,
          f"s_client -tls1_3: the protocol is TLSv1.3 ({re.findall(r'New, .*', text)})")
    if "Verify return code: 0 (ok)" not in text or "X25519" not in text:
        print(text[-3000:], file=sys.stderr)

    # The proxy's suite order decides (AES-128-GCM first), even for a client that prefers
    # AES-256-GCM; a client offering only AES-256-GCM still gets it.
    for offered, expected in (("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
                               "TLS_AES_128_GCM_SHA256"),
                              ("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384")):
        rc, out, err = run(base + ["-tls1_3", "-ciphersuites", offered])
        got = re.findall(r"Cipher is (\S+)", out + err)
        check(got[:1] == [expected],
              f"s_client -ciphersuites {offered}: the proxy picks {expected} (got {got[:1]})")

    before = len(inbound.reasons())
    rc, out, err = run(base + ["-tls1_2"])
    text = out + err
    negotiated = re.search(r"New, TLSv1\.2, Cipher is (?!\(NONE\))", text) is not None
    check(rc != 0 and not negotiated,
          f"s_client -tls1_2 (TLS 1.2 only) is refused (exit {rc}; "
          f"{[l for l in text.splitlines() if 'alert' in l or 'Cipher is' in l][:3]})")
    entry = wait_for(lambda: inbound.reasons()[before:], 3)
    print(f"info: the proxy logged for the TLS 1.2 attempt: {entry[0] if entry else None}")


# ---------------------------------------------------------------------------------------------
# 2. Certificate file reload under traffic.

class Load:
    """~50 new connections per second plus one keep-alive connection, through the out listener."""

    def __init__(self, out_port):
        self.port = out_port
        self.stop = threading.Event()
        self.ok = {"new": 0, "keepalive": 0}
        self.failed = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._new_connections, daemon=True),
                        threading.Thread(target=self._keepalive, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def _record(self, kind, error):
        with self.lock:
            if error is None:
                self.ok[kind] += 1
            else:
                self.failed.append(f"{time.strftime('%H:%M:%S')} {kind}: {error}")

    def _new_connections(self):
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            i += 1
            try:
                with URLOPEN(f"http://127.0.0.1:{self.port}/new-{i}", timeout=5) as r:
                    body = r.read().decode(errors="replace")
                self._record("new", None if f"/new-{i}" in body else f"unexpected body {body!r}")
            except Exception as e:  # pylint: disable=broad-except
                self._record("new", repr(e))
            next_at += 0.02
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _keepalive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                conn.request("GET", f"/keepalive-{i}")
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                self._record("keepalive",
                             None if f"/keepalive-{i}" in body else f"unexpected body {body!r}")
                if r.will_close:
                    self._record("keepalive", "the keep-alive connection was closed")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            except Exception as e:  # pylint: disable=broad-except
                self._record("keepalive", repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            time.sleep(0.05)
        conn.close()


def replace_file(src, dst):
    """Writes src's bytes to a temporary file next to dst and renames it over dst."""
    tmp = dst + ".tmp"
    with open(src, "rb") as f:
        data = f.read()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def check_reload(inbound, outbound, live_cert, live_key, new_leaves, first_serial):
    serial0 = inbound.serial()
    check(serial0 == first_serial, f"/certs shows the first certificate's serial ({serial0:x})"
          if serial0 else f"/certs shows a serial: {inbound.admin('/certs')}")
    reloads0 = inbound.metric('trellis_proxy_credential_reloads_total{result="ok"}')
    load = Load(outbound.ports["out"])
    load.start()
    start = time.monotonic()
    try:
        for n, (crt, key, serial) in enumerate(new_leaves, 1):
            time.sleep(max(0.0, start + 2.0 * n - time.monotonic()))
            # Key first, then the certificate (as a careless writer would): until both are
            # replaced the pair does not match and the file source must keep the old one.
            replace_file(key, live_key)
            time.sleep(0.2)
            replace_file(crt, live_cert)
            got = wait_for(lambda s=serial: inbound.serial() == s, 5)
            check(got, f"reload {n}: /certs shows the new serial {serial:x} within 5 s "
                  f"(now {inbound.serial()})")
        time.sleep(max(0.0, start + 8.0 - time.monotonic()))
    finally:
        load.finish()
    total = load.ok["new"] + load.ok["keepalive"]
    print(f"info: {load.ok['new']} new-connection and {load.ok['keepalive']} keep-alive requests "
          f"in {time.monotonic() - start:.1f}s")
    check(load.ok["new"] >= 200 and load.ok["keepalive"] >= 50,
          f"the load ran ({load.ok}, {total} requests)")
    check(not load.failed, f"zero failed requests during 3 reloads ({len(load.failed)} failed: "
          f"{load.failed[:5]})")
    serial1 = inbound.serial()
    check(serial1 is not None and serial1 != serial0 and serial1 == new_leaves[-1][2],
          f"the serial in /certs changed to the last leaf's ({serial0} -> {serial1})")
    reloads1 = inbound.metric('trellis_proxy_credential_reloads_total{result="ok"}')
    check(reloads0 is not None and reloads1 is not None and reloads1 >= reloads0 + 3,
          f'trellis_proxy_credential_reloads_total{{result="ok"}} grew by >= 3 '
          f"({reloads0} -> {reloads1})")
    errors = inbound.metric('trellis_proxy_credential_reloads_total{result="error"}')
    print(f"info: reloads with result=error (mismatched key/cert windows): {errors}")


# ---------------------------------------------------------------------------------------------
# 3. SIGTERM drain.

def check_drain(inbound, outbound, client):
    sock = socket.create_connection(("127.0.0.1", outbound.ports["out"]), timeout=10)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    received = b""
    deadline = time.monotonic() + 10
    while b"slow-chunk" not in received and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    if b"slow-chunk" not in received:
        raise Fatal(f"the slow request did not start: {received!r}")

    inbound.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()

    def not_ready():
        status, body = inbound.admin("/ready", timeout=1)
        return (status, body) if status != 200 else None
    state = wait_for(not_ready, 2)
    check(state and (state[0] == 503 or state[0] is None),
          f"after SIGTERM /ready turns 503 (or the admin stops) within 2 s: {state}")

    rc, out, err = curl(inbound.ports["in"], client[0], client[1], "/during-drain", max_time=2)
    check(rc != 0 and "hello from the app" not in out,
          f"a new connection during the drain is refused (curl exit {rc}: {err.strip()!r})")

    while time.monotonic() < t0 + DRAIN_TIMEOUT + 5:
        try:
            data = sock.recv(65536)
        except OSError as e:
            print(f"info: the in-flight connection: {e!r}")
            break
        if not data:
            break
        received += data
    sock.close()
    body = received.split(b"\r\n\r\n", 1)[-1]
    check(received.startswith(b"HTTP/1.1 200") and body == b"slow-chunk\n" * SLOW_CHUNKS,
          f"the in-flight request completes its exchange during the drain "
          f"({body.count(b'slow-chunk')}/{SLOW_CHUNKS} pieces)")

    try:
        rc = inbound.proc.wait(timeout=max(0.1, t0 + DRAIN_TIMEOUT + 3 - time.monotonic()))
    except subprocess.TimeoutExpired:
        rc = None
    elapsed = time.monotonic() - t0
    check(rc == 0 and elapsed <= DRAIN_TIMEOUT + 0.5,
          f"the inbound proxy exits 0 within --drain_timeout={DRAIN_TIMEOUT:g}s "
          f"(exit {rc} after {elapsed:.1f}s)")
    stopped = [e for e in log_entries(inbound.log) if e.get("msg") == "stopped"]
    check(bool(stopped), f"the log has 'stopped': {stopped}")
    if stopped:
        check(stopped[0].get("connections_cut_at_deadline") == 0,
              f"no connection was cut at the deadline: {stopped[0]}")


# ---------------------------------------------------------------------------------------------
# 4. Start-up errors and --help.

def check_flags(root, client):
    files = [f"--cert_file={client[0]}", f"--key_file={client[1]}", f"--bundle_file={root}",
             "--admin_address=127.0.0.1:0"]
    rc, out, err = run([PROXY, *files], timeout=10)
    check(rc == 1 and "--listeners" in out + err,
          f"no listeners: exit 1 naming --listeners (exit {rc}: {(out + err).strip()!r})")

    rc, out, err = run([PROXY, *files, "--control_plane_address=127.0.0.1:1",
                        f"--root_file={root}",
                        f"--listeners=out:127.0.0.1:0=>127.0.0.1:1@{SERVER_ID}"], timeout=10)
    check(rc == 1 and "choose one" in out + err,
          f"both credential modes: exit 1 saying choose one (exit {rc}: "
          f"{(out + err).strip()!r})")

    # A listener that cannot bind stops the start with exit 1, after worker and file-watcher
    # threads are already running: an exit that ran static destructors under them used to crash
    # (SIGSEGV) about one start in ten.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    codes = []
    for _ in range(20):
        rc, out, err = run([PROXY, *files, f"--listeners=out:127.0.0.1:{taken.getsockname()[1]}"
                            f"=>127.0.0.1:1@{SERVER_ID}"], timeout=10)
        codes.append(rc)
    taken.close()
    check(set(codes) == {1} and "cannot bind" in out + err,
          f"a port in use: every start exits 1 naming the bind failure (exit codes {sorted(set(codes))}: "
          f"{(out + err).strip()[-200:]!r})")

    # Control-plane mode needs the gRPC client library; a missing one is named at start.
    token = path("token")
    with open(token, "w") as f:
        f.write("x.y.z\n")
    rc, out, err = run([PROXY, "--control_plane_address=127.0.0.1:1", f"--root_file={root}",
                        f"--token_file={token}", "--transport_library=/nonexistent/libx.so",
                        "--admin_address=127.0.0.1:0",
                        f"--listeners=out:127.0.0.1:0=>127.0.0.1:1@{SERVER_ID}"], timeout=10)
    check(rc == 1 and "libtrellis-proxy-grpc.so" in out + err
          and "/nonexistent/libx.so" in out + err,
          f"a missing --transport_library: exit 1 naming the library and the path "
          f"(exit {rc}: {(out + err).strip()[-400:]!r})")

    with open(MAIN_CC, encoding="utf-8") as f:
        names = re.findall(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,", f.read())
    rc, out, err = run([PROXY, "--help"], timeout=10)
    missing = [n for n in names if not re.search(rf"(^|\s)--?{n}\b", out + err)]
    check(len(names) >= 20, f"found the ABSL_FLAG definitions in {MAIN_CC}: {len(names)}")
    check(rc == 0 and not missing,
          f"--help exits 0 and lists every flag of proxy/main.cc (exit {rc}, missing {missing})")


# ---------------------------------------------------------------------------------------------

def main():
    t_start = time.monotonic()
    root_key, root = mint_root()
    server = mint_leaf("server", SERVER_ID, root_key, root)
    client = mint_leaf("client", CLIENT_ID, root_key, root)
    intruder = mint_leaf("intruder", INTRUDER_ID, root_key, root)
    new_leaves = [mint_leaf(f"server-{n}", SERVER_ID, root_key, root) for n in (1, 2, 3)]
    # The inbound proxy's live files, replaced during check 2.
    os.makedirs(path("live"))
    live_cert, live_key = path("live", "cert.pem"), path("live", "key.pem")
    replace_file(server[0], live_cert)
    replace_file(server[1], live_key)
    print(f"info: certificates minted in {time.monotonic() - t_start:.1f}s")

    app = start_app()
    try:
        inbound = Proxy("inbound", live_cert, live_key, root,
                        f"in=in:127.0.0.1:0=>127.0.0.1:{app.server_address[1]}@{CLIENT_ID}",
                        [f"--drain_timeout={DRAIN_TIMEOUT:g}s"])
        outbound = Proxy("outbound", client[0], client[1], root,
                         f"out=out:127.0.0.1:0=>127.0.0.1:{inbound.ports['in']}@{SERVER_ID}")
        ready = wait_for(lambda: inbound.admin("/ready")[0] == 200
                         and outbound.admin("/ready")[0] == 200, 10)
        if not ready:
            raise Fatal(f"the proxies are not ready: {inbound.admin('/ready')} "
                        f"{outbound.admin('/ready')}")

        # File mode never loads the gRPC client library (a quarter of the proxy's memory).
        with open(f"/proc/{inbound.proc.pid}/maps", encoding="utf-8") as f:
            maps = f.read()
        grpc_libs = sorted({line.split()[-1] for line in maps.splitlines()
                            if re.search(r"lib(grpc|protobuf|trellis-proxy-grpc)", line)})
        check(not grpc_libs, f"a file-mode proxy maps no gRPC or protobuf library ({grpc_libs})")
        # OpenSSL, abseil and libstdc++ are linked in (RSS per pod, bench/proxy/README.md
        # "Memory"); the start-up line names the OpenSSL inside, since a Debian update of the
        # shared library no longer reaches the proxy without a rebuild.
        shared = sorted({line.split()[-1] for line in maps.splitlines()
                         if re.search(r"/lib(ssl|crypto|absl_\w+|stdc\+\+)\.so", line)})
        check(not shared, f"the proxy maps no shared OpenSSL, abseil or libstdc++ ({shared})")
        tls_library = inbound._listening().get("tls_library", "")
        check(tls_library.startswith("OpenSSL 3."),
              f"the 'listening' line names the linked TLS library ({tls_library!r})")
        print("--- 1. curl and openssl s_client against the inbound listener", flush=True)
        check_clients(inbound, root, client, intruder)
        print("--- 2. certificate file reload under traffic", flush=True)
        check_reload(inbound, outbound, live_cert, live_key, new_leaves, server[2])
        print("--- 3. SIGTERM drain", flush=True)
        check_drain(inbound, outbound, client)
        print("--- 4. start-up errors and --help", flush=True)
        check_flags(root, client)
    except Fatal as e:
        fail(str(e))
    finally:
        kill_all()
        app.shutdown()
    for name in ("inbound", "outbound"):
        if FAILURES and os.path.exists(path(f"{name}.log")):
            with open(path(f"{name}.log"), encoding="utf-8", errors="replace") as f:
                print(f"--- {name} proxy log (tail)\n{f.read()[-4000:]}", file=sys.stderr)
    print(f"total {time.monotonic() - t_start:.1f}s")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
