#!/usr/bin/env python3
"""Trellis local mesh demo: the orchestrator behind scripts/demo (python3, standard library only).

Runs, on this machine: trellis-control-plane with a fresh CA, and three "pods":

  checkout  an HTTP app ("checkout says hi") behind its proxy, whose inbound mTLS allows only
            spiffe://cluster.local/ns/demo/sa/frontend
  frontend  a client calling checkout every 0.2 s in plain HTTP; its proxy makes that mTLS
  intruder  the same client with identity .../sa/intruder, which checkout's policy refuses

Two modes:
  netns     (the default as root) every pod, and the control plane, is a network namespace on a
            private bridge (scripts/lib/netns_pods.py, shared with tests/e2e/netns); trellis-init
            installs its iptables rules in each pod; the proxies run as UID 1337 with capture
            listeners (15001 out, 15006 in), the apps as nobody and call http://<checkout pod
            IP>:8080/; tcpdump on the bridge counts TLS and plaintext segments between pods.
  loopback  (the fallback when not root, or --mode loopback) explicit-mode listeners on
            127.0.0.1: each client app calls its proxy's outbound listener.

Every proxy gets its certificate from the control plane with a join token and a short lifetime
(--cert-ttl), so certificates rotate every few seconds. The demo shows calls, rotations and
refusals live, then a summary; it exits non-zero if frontend had a failed call, intruder had a
successful one, or frontend made no call at all.

  demo.py --control-plane BIN --proxy BIN --trellisctl BIN [--trellis-init BIN]
          [--mode auto|netns|loopback] [--duration 60] [--keep]
  demo.py --stop          stops a demo left running by --keep (and removes its namespaces)
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import netns_pods  # scripts/lib/netns_pods.py: pods as network namespaces (shared with the e2e test)

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "demo"
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_app.py")
STATE_FILE = os.path.join(os.environ.get("TMPDIR") or "/tmp", "trellis-demo.state.json")
APP_PORT = 8080  # checkout's app port in netns mode (pods have their own port space)
PROXY_UID = 1337  # trellis-init's rules never redirect this UID's traffic
APP_UID = 65534  # nobody: the apps are ordinary, unprivileged processes
CP_GRPC_PORT = 15012
CP_ADMIN_PORT = 15014
STARTUP_TIMEOUT = 60.0
STOP_GRACE = 5.0
CALL_INTERVAL = 0.2


def spiffe(sa):
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}"


# ----------------------------------------------------------------------------------------------
# Output


class Style:
    def __init__(self, enabled):
        self.enabled = enabled

    def _wrap(self, code, text):
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, t):
        return self._wrap("1", t)

    def dim(self, t):
        return self._wrap("2", t)

    def green(self, t):
        return self._wrap("32", t)

    def red(self, t):
        return self._wrap("31", t)

    def yellow(self, t):
        return self._wrap("33", t)

    def cyan(self, t):
        return self._wrap("36", t)

    def magenta(self, t):
        return self._wrap("35", t)


S = Style(False)


def say(text=""):
    print(text, flush=True)


def step(text):
    say(S.bold("==> ") + text)


class DemoError(Exception):
    """Start-up failed: the message says what and where to look."""


# ----------------------------------------------------------------------------------------------
# Processes


def _pdeathsig_preexec():
    """Child side: get SIGTERM if the demo dies without cleaning up (e.g. SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Proc:
    def __init__(self, name, argv, log_path, popen):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen = popen

    @property
    def pid(self):
        return self.popen.pid


class Tail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def json_lines(self):
        out = []
        for line in self.lines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


def http_get(port, path, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None


def parse_prometheus(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+([-+0-9.eE]+|NaN)\s*$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
        except ValueError:
            pass
    return out


# ----------------------------------------------------------------------------------------------
# The demo


class Demo:
    def __init__(self, args):
        self.args = args
        self.keep = args.keep
        # The work directory is removed at the end (or by --stop) only if the demo created it.
        if args.work_dir:
            self.created_work = not os.path.exists(args.work_dir)
            os.makedirs(args.work_dir, exist_ok=True)
            self.work = os.path.abspath(args.work_dir)
        else:
            self.created_work = True
            # netns mode: under /tmp, which UID 1337 and nobody can enter whatever $TMPDIR is.
            self.work = tempfile.mkdtemp(prefix="trellis-demo.", dir="/tmp" if args.mode == "netns" else None)
        self.procs = []
        self.stop_requested = False
        self.stop_signal = None  # set by the signal handler; announced by main() after live()
        self.cp = {}
        self.pods = {}  # name -> dict(admin_port, listener ports, log, ...)
        self.calls = {}  # client -> dict(ok, failed, last_status, tick_ok, tick_failed, errors)
        self.rotations_seen = {}
        self.serials = {}
        self.refusals = {}  # reason -> count (from checkout's proxy log)
        self.refusal_printed = set()
        self.t0 = time.monotonic()
        self.started = False
        self.last_rotation = {}
        self.last_reason = None
        self.netns = args.mode == "netns"
        self.net = None  # netns_pods.PodNetwork in netns mode
        self.capture = None  # netns_pods.Capture on the bridge in netns mode
        self.app = APP
        # The apps run as nobody in netns mode: the system python3, not one under root's home.
        self.python = "/usr/bin/python3" if self.netns and os.path.exists("/usr/bin/python3") else sys.executable
        self.checkout_url = None
        self.app_tail = None
        self.wire = {"tls": 0, "http": 0, "other": 0, "hello": 0, "cp_tls": 0}
        self.wire_tick = dict(self.wire)

    # -- processes --

    def spawn(self, name, argv, log_name):
        log_path = os.path.join(self.work, log_name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        log = open(log_path, "ab")  # pylint: disable=consider-using-with
        try:
            popen = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.work, start_new_session=True,  # Ctrl-C reaches the demo, not its children
                preexec_fn=None if self.keep else _pdeathsig_preexec)
        finally:
            log.close()
        proc = Proc(name, argv, log_path, popen)
        self.procs.append(proc)
        return proc

    def wait_for_json(self, proc, predicate, what):
        """Waits until proc's log has a JSON line matching predicate; returns it."""
        tail = Tail(proc.log_path)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and not self.stop_requested:
            for record in tail.json_lines():
                if predicate(record):
                    return record
            if proc.popen.poll() is not None:
                for record in tail.json_lines():
                    if predicate(record):
                        return record
                raise DemoError(f"{proc.name} exited with status {proc.popen.returncode} before {what}; "
                                f"last lines of {proc.log_path}:\n{last_lines(proc.log_path)}")
            time.sleep(0.05)
        if self.stop_requested:
            raise KeyboardInterrupt
        raise DemoError(f"{proc.name}: no {what} within {STARTUP_TIMEOUT:.0f} s; last lines of "
                        f"{proc.log_path}:\n{last_lines(proc.log_path)}")

    def stop_all(self):
        """Clients first (no call is cut by a proxy going away), then proxies, app, control plane."""
        for group in (("client",), ("proxy",), ("app", "control-plane")):
            batch = [p for p in self.procs if p.name.split(":")[0] in group and p.popen.poll() is None]
            for p in batch:
                try:
                    p.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + STOP_GRACE
            for p in batch:
                try:
                    p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait(timeout=5)
        return sum(1 for p in self.procs if p.popen.poll() is None)

    # -- start-up --

    def run_tool(self, argv):
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=self.work, timeout=60, check=False)
        if done.returncode != 0:
            raise DemoError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr.strip()}")
        return done.stdout

    def start(self):
        a = self.args
        ca = os.path.join(self.work, "ca")
        step(f"Fresh CA: trellisctl ca init --dir {ca}")
        out = self.run_tool([a.trellisctl, "ca", "init", "--dir", ca, "--trust-domain", TRUST_DOMAIN])
        fp = re.search(r"Fingerprint=([0-9A-F:]+)", out)
        if fp:
            say(S.dim(f"    root SHA-256 {fp.group(1)[:29]}..."))

        tokens = os.path.join(self.work, "join-tokens.json")
        deny = os.path.join(self.work, "deny.list")
        with open(deny, "w", encoding="utf-8") as f:
            f.write("# Revocation deny-list: one 'serial:<hex>' or 'spiffe://...' per line.\n")
        step("Join tokens, one per pod identity: trellisctl join-token create")
        token_files = {}
        for sa in ("checkout", "frontend", "intruder"):
            pod_dir = os.path.join(self.work, "pods", sa)
            os.makedirs(pod_dir, exist_ok=True)
            token = self.run_tool([a.trellisctl, "join-token", "create", "--file", tokens, "--name", sa,
                                   "--spiffe-id", spiffe(sa)]).strip()
            token_files[sa] = os.path.join(pod_dir, "join-token")
            fd = os.open(token_files[sa], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            say(S.dim(f"    {sa:<9} {spiffe(sa)}"))
        os.makedirs(os.path.join(self.work, "control-plane"), mode=0o700, exist_ok=True)
        self.cp = {"deny": deny, "tokens": tokens, "ca": ca}
        if self.netns:
            self.start_netns(token_files)
        else:
            self.start_loopback(token_files)

        step("Waiting for every proxy's first certificate (/ready, /certs)")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for pod, info in self.pods.items():
            while True:
                if self.stop_requested:
                    raise KeyboardInterrupt
                certs = self.certs(pod)
                if self.admin(pod, "/ready") is not None and certs and certs.get("serial"):
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"proxy {pod} not ready within {STARTUP_TIMEOUT:.0f} s; last lines of "
                                    f"{info['log']}:\n{last_lines(info['log'])}")
                time.sleep(0.1)
            self.serials[pod] = certs["serial"]
            self.rotations_seen[pod] = 0
            say(f"    {pod:<9} {S.cyan(certs.get('spiffe_id', '?'))}  serial {certs['serial']}  "
                f"expires {certs.get('not_after', '?')}")

        if self.netns:
            step(f"Apps frontend and intruder call {self.checkout_url} every {CALL_INTERVAL:g} s: plain "
                 "HTTP to checkout's pod IP; iptables hands each call to their proxy")
        else:
            step(f"Apps frontend and intruder call checkout every {CALL_INTERVAL:g} s through their own proxy")
        for pod in ("frontend", "intruder"):
            argv = [self.python, self.app, "client", "--pod-dir", os.path.join(self.work, "pods", pod),
                    "--name", pod, "--url", self.client_url(pod), "--interval", str(CALL_INTERVAL)]
            c = self.spawn(f"client:{pod}", self.in_pod(pod, argv, APP_UID), f"pods/{pod}/calls.jsonl")
            self.pods[pod]["calls"] = c.log_path
            self.calls[pod] = {"ok": 0, "failed": 0, "tick_ok": 0, "tick_failed": 0, "errors": {},
                               "tail": Tail(c.log_path), "first": True}
        self.started = True

    def client_url(self, pod):
        if self.netns:
            return self.checkout_url
        return f"http://127.0.0.1:{self.pods[pod]['listeners']['checkout']}/"

    def in_pod(self, pod, argv, uid):
        """argv run inside the pod's network namespace as uid (netns mode); argv as is otherwise."""
        if not self.netns:
            return argv
        return self.net.pods[pod].exec_argv(argv, uid=uid, pdeathsig=not self.keep)

    def start_loopback(self, token_files):
        a, ca = self.args, self.cp["ca"]
        step("Control plane: trellis-control-plane")
        cp = self.spawn("control-plane", [
            a.control_plane, f"--ca_dir={ca}", "--grpc_address=127.0.0.1:0",
            "--admin_address=127.0.0.1:0", f"--state_dir={os.path.join(self.work, 'control-plane')}",
            f"--join_tokens_file={self.cp['tokens']}", f"--deny_list_file={self.cp['deny']}", "--min_ttl=1s",
            # One renewal every second or two per identity: more than the production default allows.
            "--per_identity_rate=10", "--per_identity_burst=20", "--shutdown_grace=1s",
        ], "control-plane.log")
        listening = self.wait_for_json(cp, lambda r: r.get("msg") == "listening", "'listening' log line")
        self.cp.update(grpc_port=listening["grpc_port"], admin_port=listening["admin_port"], log=cp.log_path)
        say(S.dim(f"    gRPC (TLS) 127.0.0.1:{self.cp['grpc_port']}   admin "
                  f"http://127.0.0.1:{self.cp['admin_port']}   log {cp.log_path}"))

        def proxy(pod, listeners):
            argv = [a.proxy, f"--control_plane_address=127.0.0.1:{self.cp['grpc_port']}",
                    "--control_plane_name=localhost", f"--root_file={os.path.join(ca, 'roots.crt')}",
                    f"--join_token_file={token_files[pod]}", f"--requested_ttl={a.cert_ttl}",
                    "--workers=1", "--admin_address=127.0.0.1:0", "--drain_timeout=1s",
                    f"--listeners={listeners}"]
            p = self.spawn(f"proxy:{pod}", argv, f"pods/{pod}/proxy.log")
            rec = self.wait_for_json(p, lambda r: r.get("msg") == "listening", "'listening' log line")
            self.pods[pod] = {"admin_port": rec["admin_port"], "listeners": rec.get("listeners", {}),
                              "log": p.log_path}
            return self.pods[pod]

        step("Pod checkout: app (plain HTTP) + proxy, inbound mTLS allowing only frontend")
        app = self.spawn("app:checkout", [sys.executable, self.app, "server", "--pod-dir",
                                          os.path.join(self.work, "pods", "checkout")],
                         "pods/checkout/app.log")
        app_port = self.wait_for_json(app, lambda r: "listening" in r, "listening port")["listening"]
        checkout = proxy("checkout", f"in=in:127.0.0.1:0=>127.0.0.1:{app_port}@{spiffe('frontend')}")
        checkout["app_port"] = app_port
        checkout["app_log"] = app.log_path
        inbound = checkout["listeners"]["in"]
        say(S.dim(f"    app 127.0.0.1:{app_port}   mTLS in 127.0.0.1:{inbound} (allows {spiffe('frontend')})"
                  f"   admin http://127.0.0.1:{checkout['admin_port']}"))
        for pod in ("frontend", "intruder"):
            step(f"Pod {pod}: proxy with an outbound listener to checkout (expects {spiffe('checkout')})")
            p = proxy(pod, f"checkout=out:127.0.0.1:0=>127.0.0.1:{inbound}@{spiffe('checkout')}")
            say(S.dim(f"    app -> 127.0.0.1:{p['listeners']['checkout']} (plain) -> mTLS -> "
                      f"127.0.0.1:{inbound}   admin http://127.0.0.1:{p['admin_port']}"))

    def start_netns(self, token_files):
        a, ca = self.args, self.cp["ca"]
        # The proxies run as UID 1337 and the apps as nobody, and read files in the work directory.
        parent = os.path.dirname(self.work)
        while parent != "/":
            if not os.stat(parent).st_mode & 0o001:
                raise DemoError(f"the work directory {self.work} is under {parent}, which other users cannot "
                                f"enter; the proxies (UID {PROXY_UID}) and apps (nobody) read files there: "
                                "use a --work-dir under /tmp")
            parent = os.path.dirname(parent)
        step("Network: one network namespace per pod, veths on a private bridge (scripts/lib/netns_pods.py)")
        self.net = netns_pods.PodNetwork("demo", ["control-plane", "checkout", "frontend", "intruder"],
                                         first_host=10)
        self.net.create()
        for pod in self.net.pods.values():
            say(S.dim(f"    {pod.name:<13} netns {pod.netns:<30} eth0 {pod.ip}/24   (host end {pod.veth})"))
        say(S.dim(f"    bridge {self.net.bridge}" + (f"; host rule: iptables {' '.join(self.net.forward_rule)}"
                                                      if self.net.forward_rule else "")))
        os.chmod(self.work, 0o711)
        os.chmod(os.path.join(self.work, "pods"), 0o711)
        apps = os.path.join(self.work, "apps")
        os.makedirs(apps, mode=0o755, exist_ok=True)
        os.chmod(apps, 0o755)
        self.app = os.path.join(apps, "demo_app.py")
        shutil.copyfile(APP, self.app)
        os.chmod(self.app, 0o644)
        for pod, token in token_files.items():
            os.chmod(os.path.dirname(token), 0o711)
            shutil.copyfile(os.path.join(ca, "roots.crt"), os.path.join(os.path.dirname(token), "roots.crt"))
            os.chmod(os.path.join(os.path.dirname(token), "roots.crt"), 0o644)
            os.chown(token, PROXY_UID, PROXY_UID)

        cp_pod = self.net.pods["control-plane"]
        step(f"Control plane: trellis-control-plane in its own namespace, gRPC on {cp_pod.ip}:{CP_GRPC_PORT}")
        cp = self.spawn("control-plane", cp_pod.exec_argv([
            a.control_plane, f"--ca_dir={ca}", f"--grpc_address={cp_pod.ip}:{CP_GRPC_PORT}",
            f"--admin_address=127.0.0.1:{CP_ADMIN_PORT}",
            f"--state_dir={os.path.join(self.work, 'control-plane')}",
            f"--join_tokens_file={self.cp['tokens']}", f"--deny_list_file={self.cp['deny']}", "--min_ttl=1s",
            "--per_identity_rate=10", "--per_identity_burst=20", "--shutdown_grace=1s",
        ]), "control-plane.log")
        listening = self.wait_for_json(cp, lambda r: r.get("msg") == "listening", "'listening' log line")
        self.cp.update(grpc_port=listening["grpc_port"], admin_port=listening["admin_port"], log=cp.log_path)
        say(S.dim(f"    gRPC (TLS) {cp_pod.ip}:{self.cp['grpc_port']}   admin 127.0.0.1:"
                  f"{self.cp['admin_port']} in {cp_pod.netns}   log {cp.log_path}"))

        self.checkout_url = f"http://{self.net.pods['checkout'].ip}:{APP_PORT}/"
        for pod in ("checkout", "frontend", "intruder"):
            p = self.net.pods[pod]
            what = (f"app on :{APP_PORT} (plain HTTP, as nobody); inbound mTLS allows only frontend on port "
                    f"{APP_PORT}" if pod == "checkout" else "app calling checkout (as nobody)")
            step(f"Pod {pod} ({p.ip}): trellis-init, then trellis-proxy as UID {PROXY_UID}; {what}")
            init = p.run([a.trellis_init], check=False)
            if init.returncode != 0:
                raise DemoError(f"trellis-init in {p.netns} exited {init.returncode}:\n{init.stderr.strip()}")
            if pod == "checkout":
                rules = p.run(["iptables-save", "-t", "nat"]).stdout
                for line in rules.splitlines():
                    if line.startswith("-A") and ("REDIRECT" in line or "owner" in line):
                        say(S.dim(f"    iptables -t nat {line}"))
            argv = [a.proxy, f"--control_plane_address={cp_pod.ip}:{self.cp['grpc_port']}",
                    f"--root_file={os.path.join(os.path.dirname(token_files[pod]), 'roots.crt')}",
                    f"--join_token_file={token_files[pod]}", f"--requested_ttl={a.cert_ttl}",
                    "--workers=1", "--admin_address=127.0.0.1:15000", "--drain_timeout=1s",
                    "--outbound_capture_port=15001", "--inbound_capture_port=15006"]
            if pod == "checkout":
                argv.append(f"--inbound_port_policy={APP_PORT}={spiffe('frontend')}")
            proc = self.spawn(f"proxy:{pod}", self.in_pod(pod, argv, PROXY_UID), f"pods/{pod}/proxy.log")
            rec = self.wait_for_json(proc, lambda r: r.get("msg") == "listening", "'listening' log line")
            self.pods[pod] = {"admin_port": rec.get("admin_port", 15000), "listeners": rec.get("listeners", {}),
                              "log": proc.log_path, "ip": p.ip, "netns": p.netns}
            if pod == "checkout":
                app = self.spawn("app:checkout", self.in_pod(pod, [
                    self.python, self.app, "server", "--pod-dir", os.path.dirname(token_files[pod]),
                    "--host", "0.0.0.0", "--port", str(APP_PORT)], APP_UID), "pods/checkout/app.log")
                self.wait_for_json(app, lambda r: "listening" in r, "listening port")
                self.pods[pod]["app_log"] = app.log_path
            say(S.dim(f"    proxy: capture 15001 (out) / 15006 (in), admin 127.0.0.1:15000 in {p.netns}"))

        step(f"Capture on bridge {self.net.bridge} (tcpdump): what the pods send each other on the wire")
        try:
            self.capture = netns_pods.Capture(self.net.bridge, os.path.join(self.work, "bridge.pcap"),
                                              os.path.join(self.work, "tcpdump.log"), snaplen=128)
            self.capture.wait_started()
        except (RuntimeError, OSError) as err:  # the mesh works without it: say so and go on
            say(S.yellow(f"    no capture ({err}); apt-get install tcpdump to see the wire"))
            if self.capture is not None:
                self.capture.stop()
            self.capture = None

    # -- live view --

    def admin(self, pod, path):
        """The body of a 2xx answer from pod's proxy admin endpoint, or None. In netns mode the
        endpoint is 127.0.0.1:15000 inside the pod: the socket is made in the pod's namespace."""
        if not self.netns:
            return http_get(self.pods[pod]["admin_port"], path)
        status, body = self.net.pods[pod].http_get(15000, path)
        return body if status is not None and 200 <= status < 300 else None

    def certs(self, pod):
        text = self.admin(pod, "/certs")
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def stamp(self):
        return S.dim(f"[{time.monotonic() - self.t0:5.1f}s]")

    def poll_calls(self):
        for client, c in self.calls.items():
            for rec in c["tail"].json_lines():
                if rec.get("ok"):
                    c["ok"] += 1
                    c["tick_ok"] += 1
                else:
                    c["failed"] += 1
                    c["tick_failed"] += 1
                    err = rec.get("error") or f"HTTP {rec.get('status')}"
                    c["errors"][err] = c["errors"].get(err, 0) + 1
                if c["first"]:
                    c["first"] = False
                    if rec.get("ok"):
                        say(f"{self.stamp()} {client} -> checkout  {S.green(str(rec.get('status')))}  "
                            f"\"{rec.get('body', '')}\"  over mTLS: {S.cyan(spiffe(client))} -> "
                            f"{S.cyan(spiffe('checkout'))}  ({rec.get('ms')} ms)")
                        where = ("checkout's pod IP; iptables redirected it to its proxy (15001)" if self.netns
                                 else "its proxy's outbound listener on loopback")
                        say(f"          its app sent plain HTTP: GET {self.client_url(client)}  ({where})")
                    elif client == "intruder":
                        say(f"{self.stamp()} {client} -> checkout  {S.magenta('refused')}  its app sees: "
                            f"{rec.get('error')}  ({rec.get('ms')} ms); checkout's proxy says why:")
                    else:
                        say(f"{self.stamp()} {client} -> checkout  {S.red('FAILED')}  "
                            f"{rec.get('error')}  ({rec.get('ms')} ms)")

    def poll_app(self):
        """Prints the first request checkout's app received: plain HTTP, from its own proxy."""
        if self.app_tail is None:
            return
        for rec in self.app_tail.json_lines():
            if "request" in rec:
                say(f"{self.stamp()} checkout's app got {rec['request']} from {rec.get('from')}: plain HTTP "
                    "from its own proxy, which ended the mTLS")
                self.app_tail = None
                return

    def poll_wire(self):
        """Classifies the TCP segments the capture saw since the last call."""
        if self.capture is None:
            return
        for _src, sport, _dst, dport, payload in self.capture.segments():
            if APP_PORT in (sport, dport):
                kind = netns_pods.classify(payload)
                self.wire[kind] += 1
                if dport == APP_PORT and netns_pods.is_client_hello(payload):
                    self.wire["hello"] += 1
            elif CP_GRPC_PORT in (sport, dport) and netns_pods.classify(payload) == "tls":
                self.wire["cp_tls"] += 1

    def wire_line(self):
        w, t = self.wire, self.wire_tick
        d = {k: w[k] - t[k] for k in w}
        self.wire_tick = dict(w)
        plain = S.red(f"{d['http']} plaintext HTTP") if d["http"] else S.green("0 plaintext HTTP")
        say(f"{self.stamp()} {S.bold('wire')}     tcpdump on {self.net.bridge}, port {APP_PORT}, last 5 s: "
            f"{d['tls']} segments starting a TLS record ({d['hello']} ClientHello), {plain}, {d['other']} other "
            f"(total {w['tls']} TLS, {w['http']} plaintext)")

    def poll_refusals(self, tail):
        for rec in tail.json_lines():
            if rec.get("msg") != "mTLS handshake failed":
                continue
            reason = rec.get("reason", "unknown")
            self.last_reason = reason
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
            key = (reason, rec.get("peer_identity"))
            if key in self.refusal_printed:
                continue
            self.refusal_printed.add(key)
            say(f"{self.stamp()} {S.red('REFUSED')} by checkout's proxy: reason={S.bold(reason)}\n"
                f"          client {S.magenta(rec.get('peer_identity', '?'))} (serial {rec.get('peer_serial', '?')})\n"
                f"          server {S.cyan(rec.get('local_identity', '?'))}\n"
                f"          {rec.get('detail', '')}\n"
                f"          {S.dim('(one JSON line in ' + self.pods['checkout']['log'] + '; repeats are counted, not shown)')}")

    def poll_rotations(self):
        for pod in self.pods:
            certs = self.certs(pod)
            if not certs or not certs.get("serial") or certs["serial"] == self.serials.get(pod):
                continue
            self.serials[pod] = certs["serial"]
            self.rotations_seen[pod] += 1
            now = time.monotonic()
            since = f"  (+{now - self.last_rotation[pod]:.1f} s)" if pod in self.last_rotation else ""
            self.last_rotation[pod] = now
            count = (certs.get("rotation") or {}).get("rotation_count", "?")
            say(f"{self.stamp()} {S.yellow('rotated')}  {pod:<9} certificate #{count}  serial {certs['serial']}  "
                f"expires {certs.get('not_after', '?')}{S.dim(since)}")

    def tick(self):
        parts = []
        for client, c in self.calls.items():
            if client == "frontend":
                ok = S.green(f"{c['tick_ok']} x 200") if c["tick_ok"] else S.dim("0 calls")
                bad = S.red(f"  {c['tick_failed']} FAILED") if c["tick_failed"] else ""
                parts.append(f"frontend -> checkout  {ok}{bad}  mTLS frontend->checkout "
                             f"(total {c['ok']} ok, {c['failed']} failed)")
            else:
                ok = S.red(f"  {c['tick_ok']} x 200 (policy NOT enforced!)") if c["tick_ok"] else ""
                why = f"  {self.last_reason}" if c["tick_failed"] and self.last_reason else ""
                parts.append(f"intruder -> checkout  {S.magenta(str(c['tick_failed']) + ' refused')}{why}{ok} "
                             f"(total {c['failed']} refused)")
            c["tick_ok"] = c["tick_failed"] = 0
        say(f"{self.stamp()} " + "   |   ".join(parts))

    def live(self, duration):
        step(f"Live for {duration:g} s (Ctrl-C stops early): calls, rotations, refusals")
        self.t0 = time.monotonic()
        refusal_tail = Tail(self.pods["checkout"]["log"])
        end = self.t0 + duration
        next_tick = self.t0 + 1.0
        next_certs = self.t0
        next_wire = self.t0 + 5.0
        self.app_tail = Tail(self.pods["checkout"]["app_log"])
        while not self.stop_requested and time.monotonic() < end:
            now = time.monotonic()
            self.poll_calls()
            self.poll_refusals(refusal_tail)
            self.poll_app()
            if self.capture is not None and now >= next_wire:
                self.poll_wire()
                self.wire_line()
                next_wire += 5.0
            if now >= next_certs:
                self.poll_rotations()
                next_certs = now + 0.25
            if now >= next_tick:
                self.tick()
                next_tick += 1.0
            for p in self.procs:
                if p.popen.poll() is not None:
                    say(S.red(f"{p.name} exited unexpectedly (status {p.popen.returncode}); last lines of "
                              f"{p.log_path}:\n{last_lines(p.log_path)}"))
                    return False
            time.sleep(0.05)
        return True

    # -- summary --

    def summary(self, elapsed, stop_clients_first):
        if stop_clients_first:  # let calls in flight finish, so the counts are final
            for p in self.procs:
                if p.name.startswith("client:") and p.popen.poll() is None:
                    p.popen.send_signal(signal.SIGTERM)
            for p in self.procs:
                if p.name.startswith("client:"):
                    try:
                        p.popen.wait(timeout=STOP_GRACE)
                    except subprocess.TimeoutExpired:
                        p.popen.kill()
        self.poll_calls()
        rotations = {}
        for pod in self.pods:
            certs = self.certs(pod) or {}
            count = (certs.get("rotation") or {}).get("rotation_count")
            rotations[pod] = max(0, int(count) - 1) if isinstance(count, int) else self.rotations_seen.get(pod, 0)
        failures = {}
        connections = {}
        for pod, info in self.pods.items():
            for (name, labels), value in parse_prometheus(self.admin(pod, "/stats/prometheus")).items():
                labels = dict(labels)
                if name == "trellis_proxy_handshake_failures_total" and value > 0:
                    key = labels.get("reason", "?")
                    failures.setdefault(key, []).append((pod, labels.get("direction", "?"), int(value)))
                if name == "trellis_proxy_connections_total":
                    connections[pod] = connections.get(pod, 0) + int(value)

        say()
        step(f"Summary after {elapsed:.1f} s")
        fe = self.calls.get("frontend", {"ok": 0, "failed": 0, "errors": {}})
        it = self.calls.get("intruder", {"ok": 0, "failed": 0, "errors": {}})
        say(f"  calls      frontend -> checkout: {fe['ok']} ok, {fe['failed']} failed")
        for err, n in sorted(fe["errors"].items()):
            say(S.red(f"               {n} x {err}"))
        say(f"  calls      intruder -> checkout: {it['ok']} ok, {it['failed']} refused")
        say("  rotations  " + ", ".join(f"{pod} {rotations[pod]}" for pod in self.pods)
            + S.dim("   (certificate renewals, from /certs rotation.rotation_count)"))
        if failures:
            for reason in sorted(failures):
                where = ", ".join(f"{pod} {direction} {n}" for pod, direction, n in failures[reason])
                total = sum(n for _, _, n in failures[reason])
                say(f"  handshake failures  {reason}: {total}  ({where})")
        else:
            say("  handshake failures  none")
        say(S.dim("  (handshake failures from each proxy's /stats/prometheus: checkout counts the refusal, "
                  "intruder's proxy sees it as peer_rejected)"))
        problems = []
        if self.capture is not None:
            time.sleep(0.3)  # the last segments of the last calls
            self.poll_wire()
            w = self.wire
            say(f"  wire       port {APP_PORT} on bridge {self.net.bridge}: {w['tls']} segments starting a TLS "
                f"record ({w['hello']} ClientHello), {w['http']} plaintext HTTP, {w['other']} other; "
                f"control plane gRPC: {w['cp_tls']} TLS")
            say(S.dim("  (tcpdump: the apps speak plain HTTP to pod IPs; between pods there is only TLS)"))
            if w["http"]:
                problems.append(f"{w['http']} plaintext HTTP segments between pods on the wire")
            if not w["tls"]:
                problems.append("the capture saw no TLS between the pods")
        if fe["ok"] == 0:
            problems.append("frontend made no successful call")
        if fe["failed"]:
            problems.append(f"frontend had {fe['failed']} failed calls")
        if it["ok"]:
            problems.append(f"intruder got {it['ok']} successful calls: the policy was not enforced")
        return problems, rotations


def last_lines(path, n=15):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:]).rstrip()
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------------------------
# --keep / --stop


def print_keep(demo):
    if demo.netns:
        print_keep_netns(demo)
        return
    cp, pods = demo.cp, demo.pods
    fe, ck = pods["frontend"], pods["checkout"]
    say()
    step("Left running (--keep). Endpoints:")
    say(f"  control plane   gRPC 127.0.0.1:{cp['grpc_port']}   admin http://127.0.0.1:{cp['admin_port']}"
        f"  (/metrics /ready /live)")
    for pod, info in pods.items():
        ports = "  ".join(f"{k} 127.0.0.1:{v}" for k, v in info["listeners"].items())
        say(f"  {pod:<9}       admin http://127.0.0.1:{info['admin_port']}   listeners: {ports}")
    say(f"  work directory  {demo.work}  (logs: control-plane.log, pods/*/proxy.log, pods/*/calls.jsonl)")
    say()
    step("Try:")
    say(f"  curl -s http://127.0.0.1:{fe['listeners']['checkout']}/          # a call as frontend's app makes it")
    say(f"  curl -s http://127.0.0.1:{pods['intruder']['listeners']['checkout']}/          # as intruder: refused")
    say(f"  curl -s http://127.0.0.1:{ck['admin_port']}/certs                  # checkout's identity and rotation")
    say(f"  curl -s http://127.0.0.1:{ck['admin_port']}/stats/prometheus | grep handshake_failures")
    say(f"  tail -f {ck['log']}   # refusals, one JSON line each")
    say(f"  tail -f {fe['calls']}")
    say(f"  echo {spiffe('frontend')} >> {cp['deny']}   # revoke frontend live")
    say()
    say(f"Stop it with: scripts/demo --stop   (state in {STATE_FILE})")


def print_keep_netns(demo):
    cp, pods, net = demo.cp, demo.pods, demo.net
    ex = {pod: f"ip netns exec {p.netns}" for pod, p in net.pods.items()}
    say()
    step("Left running (--keep). Pods (network namespaces on bridge " + net.bridge + "):")
    cp_pod = net.pods["control-plane"]
    say(f"  control-plane  {cp_pod.ip:<12} netns {cp_pod.netns}   gRPC {cp_pod.ip}:{cp['grpc_port']}   "
        f"admin 127.0.0.1:{cp['admin_port']} (/metrics /ready /live)")
    for pod, info in pods.items():
        say(f"  {pod:<13}  {info['ip']:<12} netns {info['netns']}   proxy admin 127.0.0.1:15000 (/certs "
            f"/stats/prometheus /config_dump /ready), capture 15001/15006" +
            (f", app :{APP_PORT}" if pod == "checkout" else ""))
    say(f"  work directory {demo.work}  (logs: control-plane.log, pods/*/proxy.log, pods/*/calls.jsonl)")
    say()
    step("Try:")
    url = demo.checkout_url
    say(f"  {ex['frontend']} curl -s {url}   # as frontend's app: plain HTTP, mTLS on the wire")
    say(f"  {ex['intruder']} curl -s {url}   # as intruder: refused (identity_not_allowed)")
    say(f"  {ex['checkout']} curl -s 127.0.0.1:15000/certs   # checkout's identity and rotation")
    say(f"  {ex['checkout']} curl -s 127.0.0.1:15000/stats/prometheus | grep handshake_failures")
    say(f"  {ex['control-plane']} curl -s 127.0.0.1:{cp['admin_port']}/metrics")
    say(f"  {ex['checkout']} iptables-save -t nat   # trellis-init's rules")
    say(f"  tcpdump -i {net.bridge} -n -X tcp port {APP_PORT}   # only TLS between the pods")
    say(f"  tail -f {pods['checkout']['log']}   # refusals, one JSON line each")
    say(f"  tail -f {pods['frontend']['calls']}")
    say(f"  echo {spiffe('frontend')} >> {cp['deny']}   # revoke frontend live")
    say()
    say(f"Stop it with: scripts/demo --stop   (state in {STATE_FILE}; removes the namespaces and the bridge)")


def write_state(demo):
    state = {"work": demo.work, "remove_work": demo.created_work, "mode": demo.args.mode,
             "netns_run": demo.net.run_id if demo.net else None, "processes": [
        {"name": p.name, "pid": p.pid, "exe": p.argv[0] if not p.name.startswith(("app", "client"))
         else sys.executable} for p in demo.procs]}
    with open(STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)


def alive_matching(pid, work):
    """True if pid runs and its command line names the demo's work directory (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return work.encode() in f.read()
    except OSError:
        return False


def stop_kept():
    try:
        with open(STATE_FILE, "r", encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        say(f"No demo left running (no {STATE_FILE}).")
        return 0
    work = state["work"]
    order = {"client": 0, "proxy": 1, "app": 2, "control-plane": 2}
    procs = sorted(state["processes"], key=lambda p: order.get(p["name"].split(":")[0], 3))
    stopped = 0
    for group in (0, 1, 2):
        batch = [p for p in procs if order.get(p["name"].split(":")[0], 3) == group and
                 alive_matching(p["pid"], work)]
        for p in batch:
            try:
                os.kill(p["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while any(alive_matching(p["pid"], work) for p in batch) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in batch:
            if alive_matching(p["pid"], work):
                try:
                    os.kill(p["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stopped += 1
            say(f"stopped {p['name']} (pid {p['pid']})")
    rc = 0
    if state.get("netns_run"):
        left = netns_pods.remove_run(state["netns_run"])
        if left:
            say(f"could not remove all of network run {state['netns_run']}: {', '.join(left)}")
            rc = 1
        else:
            say(f"removed network namespaces, veths and bridge of run {state['netns_run']}")
    if state.get("remove_work"):
        shutil.rmtree(work, ignore_errors=True)
    os.remove(STATE_FILE)
    say(f"Stopped {stopped} processes" + (f"; removed {work}." if state.get("remove_work") else
                                          f"; logs left in {work}."))
    return rc


# ----------------------------------------------------------------------------------------------


def main():
    global S  # pylint: disable=global-statement
    parser = argparse.ArgumentParser(
        description="Trellis local mesh demo (see scripts/demo).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--control-plane", help="trellis-control-plane binary")
    parser.add_argument("--proxy", help="trellis-proxy binary")
    parser.add_argument("--trellisctl", help="trellisctl binary")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of live view (default 60)")
    parser.add_argument("--keep", action="store_true", help="leave the mesh running at the end")
    parser.add_argument("--stop", action="store_true", help="stop a mesh left running by --keep")
    parser.add_argument("--cert-ttl", default="5s", help="workload certificate lifetime (default 5s)")
    parser.add_argument("--work-dir", help="directory for CA, logs and state (default: a new temp dir)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--trellis-init", help="trellis-init binary (network-namespace mode)")
    parser.add_argument("--mode", choices=("auto", "netns", "loopback"), default="auto",
                        help="netns: pods as network namespaces with trellis-init's rules (root); loopback: "
                             "explicit listeners on 127.0.0.1; auto (default): netns when possible")
    args = parser.parse_args()

    S = Style(args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                         and not os.environ.get("NO_COLOR")))
    if args.stop:
        return stop_kept()
    for name in ("control_plane", "proxy", "trellisctl"):
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required")
        setattr(args, name, os.path.abspath(getattr(args, name)))
    if args.keep and os.path.exists(STATE_FILE):
        say(f"A demo left running by --keep is still recorded in {STATE_FILE}: run scripts/demo --stop first.")
        return 1
    fallback = ("loopback mode was asked for (--loopback)" if args.mode == "loopback"
                else netns_pods.why_not_usable())
    if fallback is None and not args.trellis_init:
        fallback = "no --trellis-init binary given"
    if args.mode == "netns" and fallback:
        say(f"demo: network-namespace mode is not possible here: {fallback}")
        return 2
    if args.mode == "auto":
        args.mode = "loopback" if fallback else "netns"
    if args.trellis_init:
        args.trellis_init = os.path.abspath(args.trellis_init)

    demo = Demo(args)

    def on_signal(signum, _frame):
        # Only set the flag here: printing from a signal handler while the main code is printing
        # raises "reentrant call" on the stdout buffer. The main loop reports the signal.
        if demo.stop_requested:
            return
        demo.stop_signal = signal.Signals(signum).name
        demo.stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if demo.netns:
        say(S.bold("Trellis local mesh demo") + " - network-namespace mode: every pod is a network namespace "
            "with trellis-init's iptables rules; apps call each other by pod IP in plain HTTP and their "
            "proxies capture the calls and wrap them in mutual TLS.")
    else:
        say(S.bold("Trellis local mesh demo") + " - loopback mode (explicit listeners): every pod's proxy "
            "listens on 127.0.0.1 and apps call it directly.")
        say(S.dim(f"Why not network namespaces: {fallback}"))
    say(S.dim(f"Work directory: {demo.work}"))
    started = time.monotonic()
    problems = ["start-up did not finish"]
    rc = 1
    try:
        demo.start()
        live_start = time.monotonic()
        finished = demo.live(args.duration)
        if demo.stop_signal:
            say(S.yellow(f"\n{demo.stop_signal}: stopping ({'summary, then leave running' if args.keep else 'summary, then clean up'})"))
        problems, _ = demo.summary(time.monotonic() - live_start, stop_clients_first=not args.keep)
        if not finished:
            problems.append("a process exited unexpectedly")
        rc = 1 if problems else 0
    except KeyboardInterrupt:
        problems = ["interrupted during start-up"]
    except (DemoError, RuntimeError, OSError, subprocess.SubprocessError) as err:
        if demo.stop_requested:  # Ctrl-C also reached the tool being run: not a failure of its own
            problems = [f"interrupted during start-up ({demo.stop_signal})"]
        else:
            say(S.red(f"demo: {err}" if isinstance(err, DemoError) else f"demo: {type(err).__name__}: {err}"))
            problems = [str(err).splitlines()[0].split("; last lines")[0] if str(err) else type(err).__name__]
    finally:
        if demo.capture is not None:
            demo.capture.stop()
        if args.keep and demo.started:
            if demo.net is not None:
                demo.net.keep()  # a later run's sweep must leave it alone; --stop removes it
            write_state(demo)
        else:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
            left = demo.stop_all()
            net_left = demo.net.cleanup() if demo.net is not None else []
            if left:
                say(S.red(f"cleanup: {left} processes still running"))
                problems.append("cleanup left processes running")
                rc = 1
            else:
                say(f"  cleanup    all {len(demo.procs)} processes stopped" +
                    (f"; removed {demo.work}" if not args.work_dir else ""))
            if demo.net is not None and demo.net.run_id:
                if net_left:
                    say(S.red(f"cleanup: left over: {', '.join(net_left)}"))
                    problems.append("cleanup left network objects")
                    rc = 1
                else:
                    say(f"  cleanup    removed {len(demo.net.pods)} network namespaces, their veths and bridge "
                        f"{demo.net.bridge}" + (" and the host FORWARD rule" if demo.net.forward_rule else ""))
            if not args.work_dir:
                shutil.rmtree(demo.work, ignore_errors=True)
    if problems:
        say(S.red("  result     FAIL: " + "; ".join(problems)))
        rc = 1
    else:
        say(S.green("  result     PASS") + f"  (frontend never failed, intruder never got through; "
            f"{time.monotonic() - started:.0f} s in all)")
    if args.keep and demo.started and os.path.exists(STATE_FILE):
        print_keep(demo)
    return rc


if __name__ == "__main__":
    sys.exit(main())
