#!/usr/bin/env python3
"""Sidecar-pair benchmark driver; run it through bench/proxy/run.sh (which installs packages, builds the
tools, mints certificates and sets WORK, DURATION, RESULTS, TRELLIS_PROXY). Standard library only."""
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ["WORK"]
CERTS = os.path.join(WORK, "certs")
RUN = os.path.join(WORK, "run")
BIN = os.path.join(WORK, "bin")
DURATION = float(os.environ.get("DURATION", "10"))
RATE = float(os.environ.get("RATE", "2000"))
IDLE_CONNS = int(os.environ.get("IDLE_CONNS", "2000"))
KA_CONNS = int(os.environ.get("KEEPALIVE_CONNS", "32"))
NC_CONNS = int(os.environ.get("NEWCONN_CONNS", "16"))
RATE_CONNS = int(os.environ.get("RATE_CONNS", "16"))
TRELLIS = os.environ.get("TRELLIS_PROXY", "")
RESULTS = os.environ["RESULTS"]
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
SERVER_DNS = "server.bench.svc.cluster.local"
CLIENT_DNS = "client.bench.svc.cluster.local"
PEERS = ["nginx", "haproxy", "stunnel"]
TICK = os.sysconf("SC_CLK_TCK")
STUNNEL = "/usr/bin/stunnel4" if os.path.exists("/usr/bin/stunnel4") else "stunnel"

children = []  # Popen objects we started


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def spawn(cmd, name, **kw):
    out = open(os.path.join(RUN, name + ".out"), "ab")
    p = subprocess.Popen(cmd, stdout=kw.pop("stdout", out), stderr=out, start_new_session=True, **kw)
    with open(os.path.join(WORK, "pgids"), "a") as f:
        f.write(f"{p.pid}\n")
    children.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in children:
        children.remove(p)


def stop_all(*_):
    for p in list(children):
        stop(p)
    if _:
        sys.exit(1)


signal.signal(signal.SIGTERM, stop_all)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, timeout=2.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(port, procs, what, timeout=10.0, http=True):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode}; see logs in {RUN}")
        if http:
            if http_get(port, 1.0):
                return
        elif listening(port):  # no test connection: iperf3 -s would take it for a client
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready on port {port} after {timeout}s")


def listening(port):
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


# ---- /proc readings ----------------------------------------------------------------------------------
def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime (fields 14, 15)


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def sys_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) / TICK, idle / TICK


# ---- pairs -------------------------------------------------------------------------------------------
def render(template, name, **subs):
    with open(os.path.join(HERE, "configs", template)) as f:
        text = f.read()
    subs.update(DIR=RUN, CERTS=CERTS, NAME=name, SERVER_DNS=SERVER_DNS, CLIENT_DNS=CLIENT_DNS)
    for k, v in subs.items():
        text = text.replace(f"@{k}@", str(v))
    if re.search(r"@[A-Z_]+@", text):
        raise RuntimeError(f"unsubstituted placeholder in {template}")
    path = os.path.join(RUN, name + "." + template.rsplit(".", 1)[1])
    with open(path, "w") as f:
        f.write(text)
    return path


class Side:
    """One proxy of a pair: the process we started plus (nginx) its worker."""

    def __init__(self, popen, worker=None):
        self.popen = popen
        self.worker = worker or popen.pid  # the process that does the work (RSS is reported for it)

    def pids(self):
        return sorted({self.popen.pid, self.worker})

    def cpu(self):
        return sum(cpu_s(p) for p in self.pids())

    def rss_kb(self):
        return sum(status_kb(p, "VmRSS") for p in self.pids())

    def hwm_kb(self):
        return status_kb(self.worker, "VmHWM")

    def all_hwm_kb(self):
        return {str(p): status_kb(p, "VmHWM") for p in self.pids()}


class Pair:
    def __init__(self, kind, dst_port):
        self.kind, self.dst = kind, dst_port
        self.port_a, self.port_b = free_port(), free_port()
        tag = f"{kind}-{self.port_a}"
        a, b, c = self.port_a, self.port_b, dst_port
        if kind == "nginx":
            ccfg = render("nginx-client.conf", tag + "-client", PORT_A=a, PORT_B=b)
            scfg = render("nginx-server.conf", tag + "-server", PORT_B=b, PORT_C=c)
            mk = lambda cfg, n: ["nginx", "-p", RUN + "/", "-e", f"{RUN}/{n}.err", "-c", cfg]
            cp = spawn(mk(ccfg, tag + "-client"), tag + "-client")
            sp = spawn(mk(scfg, tag + "-server"), tag + "-server")
        elif kind == "haproxy":
            ccfg = render("haproxy-client.cfg", tag + "-client", PORT_A=a, PORT_B=b)
            scfg = render("haproxy-server.cfg", tag + "-server", PORT_B=b, PORT_C=c)
            cp = spawn(["haproxy", "-db", "-f", ccfg], tag + "-client")
            sp = spawn(["haproxy", "-db", "-f", scfg], tag + "-server")
        elif kind == "stunnel":
            ccfg = render("stunnel-client.conf", tag + "-client", PORT_A=a, PORT_B=b)
            scfg = render("stunnel-server.conf", tag + "-server", PORT_B=b, PORT_C=c)
            cp = spawn([STUNNEL, ccfg], tag + "-client")
            sp = spawn([STUNNEL, scfg], tag + "-server")
        elif kind == "trellis":
            common = ["--workers=1", f"--bundle_file={CERTS}/root.crt", "--admin_address=127.0.0.1:0"]
            cp = spawn([TRELLIS, f"--cert_file={CERTS}/client.crt", f"--key_file={CERTS}/client.key", *common,
                        f"--listeners=out:127.0.0.1:{a}=>127.0.0.1:{b}@{SERVER_ID}"], tag + "-client")
            sp = spawn([TRELLIS, f"--cert_file={CERTS}/server.crt", f"--key_file={CERTS}/server.key", *common,
                        f"--listeners=in:127.0.0.1:{b}=>127.0.0.1:{c}@{CLIENT_ID}"], tag + "-server")
        else:
            raise ValueError(kind)
        self.procs = [cp, sp]
        wait_ready(b, self.procs, f"{kind} server-side proxy", http=False)
        wait_ready(a, self.procs, f"{kind} client-side proxy", http=False)
        self.client, self.server = Side(cp, self._worker(cp)), Side(sp, self._worker(sp))

    def _worker(self, p):
        if self.kind != "nginx":
            return p.pid
        deadline = time.time() + 5
        while time.time() < deadline:
            kids = children_of(p.pid)
            if kids:
                return kids[0]
            time.sleep(0.02)
        raise RuntimeError("nginx worker did not start")

    def sides(self):
        return [self.client, self.server]

    def cpu(self):
        return sum(s.cpu() for s in self.sides())

    def stop(self):
        for p in self.procs:
            stop(p)


# ---- load tools --------------------------------------------------------------------------------------
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)$", s)
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def run_wrk(port, conns, close=False):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{int(DURATION)}s", "--latency", f"http://127.0.0.1:{port}/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 60).stdout
    r = {"cmd": " ".join(cmd)}
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        r[f"p{q}_ms"] = wrk_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def run_rate(port):
    cmd = [f"{BIN}/loadgen", "rate", "127.0.0.1", str(port), str(RATE), str(DURATION), str(RATE_CONNS), "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 30)
    return json.loads(p.stdout)


def run_iperf(port):
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(int(DURATION)), "-J"]
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 60).stdout)
    if "error" in j:
        raise RuntimeError("iperf3: " + j["error"])
    e = j["end"]
    return {"bytes": e["sum_received"]["bytes"], "gbit_s": e["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": e["sum_sent"].get("retransmits"),
            "iperf_sender_cpu_pct": e["cpu_utilization_percent"]["host_total"]}


class Meter:
    """CPU seconds of the pair, the backend and the whole machine across one phase."""

    def __init__(self, pair, backend):
        self.pair, self.backend = pair, backend

    def __enter__(self):
        self.t0 = time.time()
        self.p0 = self.pair.cpu() if self.pair else 0.0
        self.b0 = sum(cpu_s(p) for p in self.backend)
        self.s0 = sys_cpu()
        return self

    def __exit__(self, *a):
        self.wall = time.time() - self.t0
        self.pair_cpu = (self.pair.cpu() - self.p0) if self.pair else None
        self.backend_cpu = sum(cpu_s(p) for p in self.backend) - self.b0
        s1 = sys_cpu()
        total, idle = s1[0] - self.s0[0], s1[1] - self.s0[1]
        self.machine_busy = 1 - idle / total if total > 0 else None

    def dict(self):
        return {"pair_cpu_s": self.pair_cpu, "backend_cpu_s": round(self.backend_cpu, 3),
                "machine_busy_frac": round(self.machine_busy, 3), "wall_s": round(self.wall, 2)}


# ---- mutual-TLS checks ------------------------------------------------------------------------------
def s_client(port, *extra, stdin=b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_DNS,
           "-CAfile", f"{CERTS}/root.crt", "-verify_return_error", "-ign_eof", *extra]
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=10)
        return (p.stdout + p.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        return ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace") + "\nTIMEOUT"


def check_mtls(pair):
    """Probe the server-side proxy directly with openssl s_client."""
    b = pair.port_b
    cert = ["-cert", f"{CERTS}/client.crt", "-key", f"{CERTS}/client.key"]
    sess = os.path.join(RUN, f"sess-{pair.kind}.pem")
    ok = s_client(b, *cert, "-sess_out", sess)
    r = {"with_client_cert_http_200": "HTTP/1.1 200" in ok,
         "protocol": (re.findall(r"Protocol\s*:\s*(\S+)", ok) or re.findall(r"New, (TLSv[\d.]+)", ok) or [None])[0],
         "cipher": (re.findall(r"Cipher is (\S+)", ok) or [None])[0],
         "group": (re.findall(r"Server Temp Key: ([^\n,]+)", ok) or [None])[0],
         "server_sig": (re.findall(r"Peer signature type: (\S+)", ok) or [None])[0],
         "session_tickets_sent": ok.count("Post-Handshake New Session Ticket arrived")}
    re_ = s_client(b, *cert, "-sess_in", sess) if os.path.exists(sess) else ""
    r["resumed_with_saved_session"] = "Reused, TLSv1.3" in re_
    nocert = s_client(b)
    r["without_client_cert_http_200"] = "HTTP/1.1 200" in nocert
    m = re.search(r"alert ([a-z ]+)", nocert)
    r["without_client_cert_alert"] = m.group(1).strip() if m else None
    r["tls12_only_client_http_200"] = "HTTP/1.1 200" in s_client(b, *cert, "-tls1_2")
    r["p256_only_client_http_200"] = "HTTP/1.1 200" in s_client(b, *cert, "-groups", "P-256")
    # A client certificate from another CA must be refused too.
    r["foreign_ca_client_cert_http_200"] = "HTTP/1.1 200" in s_client(
        b, "-cert", f"{CERTS}/foreign.crt", "-key", f"{CERTS}/foreign.key")
    r["pass"] = (r["with_client_cert_http_200"] and r["protocol"] == "TLSv1.3" and r["group"] == "X25519"
                 and not r["without_client_cert_http_200"] and not r["resumed_with_saved_session"]
                 and not r["tls12_only_client_http_200"]
                 and not r["foreign_ca_client_cert_http_200"])
    return r


def make_foreign_cert():
    k, c = f"{CERTS}/foreign.key", f"{CERTS}/foreign.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", k, "-out", c, "-days", "1", "-subj", "/O=elsewhere",
                    "-addext", f"subjectAltName=URI:{CLIENT_ID}"], check=True, capture_output=True)


# ---- phases ----------------------------------------------------------------------------------------
def bench_kind(kind, backend_port, iperf_port, backend_pids):
    res = {"kind": kind}
    direct = kind == "direct"
    # Pair 1: HTTP backend -> keepalive, fixed rate, new connection per request.
    pair = None if direct else Pair(kind, backend_port)
    try:
        port = backend_port if direct else pair.port_a
        wait_ready(port, pair.procs if pair else [], kind)
        if pair:
            res["mtls_check"] = check_mtls(pair)
            log(f"  mtls check: {res['mtls_check']}")
            res["pids"] = {"client": pair.client.pids(), "server": pair.server.pids()}
            res["rss_start_kb"] = {"client": pair.client.rss_kb(), "server": pair.server.rss_kb()}
        with Meter(pair, backend_pids) as m:
            res["keepalive"] = run_wrk(port, KA_CONNS)
        res["keepalive"].update(m.dict())
        log(f"  keepalive: {res['keepalive']}")
        with Meter(pair, backend_pids) as m:
            res["fixed_rate"] = run_rate(port)
        res["fixed_rate"].update(m.dict())
        log(f"  fixed rate: {res['fixed_rate']}")
        with Meter(pair, backend_pids) as m:
            res["new_conn"] = run_wrk(port, NC_CONNS, close=True)
        res["new_conn"].update(m.dict())
        log(f"  new conn: {res['new_conn']}")
        if pair:
            res["hwm_http_kb"] = {"client": pair.client.hwm_kb(), "server": pair.server.hwm_kb(),
                                  "all_processes": {"client": pair.client.all_hwm_kb(),
                                                    "server": pair.server.all_hwm_kb()}}
    finally:
        if pair:
            pair.stop()
    # Pair 2: iperf3 backend -> bulk over one connection.
    pair = None if direct else Pair(kind, iperf_port)
    try:
        port = iperf_port if direct else pair.port_a
        for attempt in range(3):
            try:
                with Meter(pair, []) as m:
                    res["bulk"] = run_iperf(port)
                break
            except (RuntimeError, ValueError) as e:
                log(f"  bulk attempt {attempt + 1} failed: {e}")
                if attempt == 2:
                    raise
                time.sleep(2)
        res["bulk"].update(m.dict())
        log(f"  bulk: {res['bulk']}")
        if pair:
            res["hwm_bulk_kb"] = {"client": pair.client.hwm_kb(), "server": pair.server.hwm_kb()}
    finally:
        if pair:
            pair.stop()
    # Pair 3 (fresh): memory per idle mTLS connection.
    if not direct:
        pair = Pair(kind, backend_port)
        try:
            wait_ready(pair.port_a, pair.procs, kind)
            for _ in range(3):
                http_get(pair.port_a)
            time.sleep(0.5)
            before = {"client": pair.client.rss_kb(), "server": pair.server.rss_kb()}
            p = spawn([f"{BIN}/loadgen", "idle", "127.0.0.1", str(pair.port_a), str(IDLE_CONNS)], f"idle-{kind}",
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            line = p.stdout.readline().decode().split()
            opened = int(line[1]) if len(line) >= 2 and line[0] == "READY" else 0
            failed = int(line[2]) if len(line) >= 3 else None
            time.sleep(1.0)
            after = {"client": pair.client.rss_kb(), "server": pair.server.rss_kb()}
            threads = {s: status_kb(getattr(pair, s).worker, "Threads") for s in ("client", "server")}
            p.stdin.close()
            p.wait(10)
            children.remove(p)
            growth = sum(after.values()) - sum(before.values())
            res["idle"] = {"opened": opened, "failed": failed, "rss_before_kb": before, "rss_after_kb": after,
                           "threads_with_conns": threads,
                           "kb_per_conn_pair": growth / opened if opened else None,
                           "kb_per_conn_client": (after["client"] - before["client"]) / opened if opened else None,
                           "kb_per_conn_server": (after["server"] - before["server"]) / opened if opened else None}
            log(f"  idle: {res['idle']}")
        finally:
            pair.stop()
    # Derived figures.
    d = {}
    ka, nc, bk = res["keepalive"], res["new_conn"], res["bulk"]
    if not direct:
        d["cpu_s_per_10k_keepalive"] = ka["pair_cpu_s"] / ka["requests"] * 1e4 if ka["requests"] else None
        d["cpu_ms_per_new_conn"] = nc["pair_cpu_s"] / nc["requests"] * 1e3 if nc["requests"] else None
        d["cpu_s_per_gb"] = bk["pair_cpu_s"] / (bk["bytes"] / 1e9) if bk["bytes"] else None
        fr = res["fixed_rate"]
        d["cpu_s_per_10k_fixed_rate"] = fr["pair_cpu_s"] / fr["completed"] * 1e4 if fr["completed"] else None
        d["peak_rss_mb_client"] = max(res["hwm_http_kb"]["client"], res["hwm_bulk_kb"]["client"]) / 1024
        d["peak_rss_mb_server"] = max(res["hwm_http_kb"]["server"], res["hwm_bulk_kb"]["server"]) / 1024
        d["kb_per_idle_conn"] = res["idle"]["kb_per_conn_pair"]
    res["derived"] = d
    return res


def versions():
    def first(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return str(e)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "nginx": first(["nginx", "-v"]), "haproxy": first(["haproxy", "-v"]),
            "stunnel": next((l for l in subprocess.run([STUNNEL, "-version"], capture_output=True, text=True)
                             .stderr.splitlines() if l.startswith("stunnel")), "?"),
            "openssl": first(["openssl", "version"]), "wrk": first(["wrk", "-v"]), "iperf3": first(["iperf3", "-v"])}


def crypto_floor():
    r = json.loads(subprocess.run([f"{BIN}/hsfloor", CERTS, "2"], capture_output=True, text=True,
                                  check=True).stdout)
    out = subprocess.run(["openssl", "speed", "-seconds", "1", "ecdsap256", "ecdhx25519"], capture_output=True,
                         text=True).stdout
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    if m:
        r["ecdsa_p256_sign_per_s"], r["ecdsa_p256_verify_per_s"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"253 bits ecdh \(X25519\)\s+\S+s\s+([\d.]+)", out)
    if m:
        r["x25519_op_per_s"] = float(m.group(1))
    if len(r) > 6:
        # One mutual handshake pair: 2 signatures (CertificateVerify both ways), 4 verifications (leaf
        # signature by the root + CertificateVerify, each side), 4 X25519 operations (keygen + derive each side).
        r["primitive_ms_per_handshake_pair"] = 1e3 * (2 / r["ecdsa_p256_sign_per_s"]
                                                      + 4 / r["ecdsa_p256_verify_per_s"]
                                                      + 4 / r["x25519_op_per_s"])
    return r


# ---- report ------------------------------------------------------------------------------------------
COLS = [  # key, header, format, higher_is_better
    ("ka_rps", "ka req/s", "{:.0f}", True),
    ("ka_p50", "ka p50ms", "{:.3f}", False),
    ("ka_p99", "ka p99ms", "{:.3f}", False),
    ("fr_p50", "2k p50ms", "{:.3f}", False),
    ("fr_p99", "2k p99ms", "{:.3f}", False),
    ("fr_p99x", "p99/dir", "{:.2f}", False),
    ("nc_rps", "conn/s", "{:.0f}", True),
    ("gbit", "Gbit/s", "{:.2f}", True),
    ("cpu10k", "CPUs/10k", "{:.3f}", False),
    ("cpuconn", "CPUms/conn", "{:.3f}", False),
    ("cpugb", "CPUs/GB", "{:.3f}", False),
    ("rss_c", "RSS c MB", "{:.1f}", False),
    ("rss_s", "RSS s MB", "{:.1f}", False),
    ("kbidle", "KB/idle", "{:.1f}", False),
]


def row(res, direct_p99):
    d = res.get("derived", {})
    fr = res["fixed_rate"]
    return {"ka_rps": res["keepalive"]["rps"], "ka_p50": res["keepalive"]["p50_ms"],
            "ka_p99": res["keepalive"]["p99_ms"], "fr_p50": fr["p50_us"] / 1e3, "fr_p99": fr["p99_us"] / 1e3,
            "fr_p99x": fr["p99_us"] / direct_p99 if direct_p99 else None, "nc_rps": res["new_conn"]["rps"],
            "gbit": res["bulk"]["gbit_s"], "cpu10k": d.get("cpu_s_per_10k_keepalive"),
            "cpuconn": d.get("cpu_ms_per_new_conn"), "cpugb": d.get("cpu_s_per_gb"),
            "rss_c": d.get("peak_rss_mb_client"), "rss_s": d.get("peak_rss_mb_server"),
            "kbidle": d.get("kb_per_idle_conn")}


def fmt(v, f):
    return "-" if v is None else f.format(v)


def table(rows, extra):
    hdr = ["kind"] + [c[1] for c in COLS]
    lines = [[k] + [fmt(r.get(c[0]), c[2]) for c in COLS] for k, r in rows.items()]
    lines += extra
    w = [max(len(str(l[i])) for l in [hdr] + lines) for i in range(len(hdr))]
    out = ["  ".join(str(x).rjust(w[i]) if i else str(x).ljust(w[i]) for i, x in enumerate(l)) for l in [hdr] + lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def main():
    os.makedirs(RUN, exist_ok=True)
    kinds = os.environ.get("KINDS", "")
    trellis_ok = bool(TRELLIS) and os.path.isfile(TRELLIS) and os.access(TRELLIS, os.X_OK)
    if kinds:
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    else:
        kinds = ["direct"] + PEERS + (["trellis"] if trellis_ok else [])
    notes = []
    if not trellis_ok:
        notes.append(f"trellis-proxy not built yet (TRELLIS_PROXY={TRELLIS or '<unset>'})")
        log(notes[-1])
        kinds = [k for k in kinds if k != "trellis"]
    if "direct" not in kinds:
        kinds.insert(0, "direct")
    make_foreign_cert()

    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "duration_s": DURATION, "rate": RATE,
              "keepalive_conns": KA_CONNS, "newconn_conns": NC_CONNS, "rate_conns": RATE_CONNS,
              "idle_conns": IDLE_CONNS, "system": versions(), "notes": notes, "kinds": {}}
    log("crypto floor ...")
    result["crypto_floor"] = crypto_floor()
    log(f"  {result['crypto_floor']}")

    # Backends: nginx (1 worker) answering a fixed tiny response; iperf3 -s for bulk.
    backend_port, iperf_port = free_port(), free_port()
    bcfg = render("backend-nginx.conf", "backend", PORT_C=backend_port)
    bk = spawn(["nginx", "-p", RUN + "/", "-e", f"{RUN}/backend.err", "-c", bcfg], "backend")
    ip = spawn(["iperf3", "-s", "-p", str(iperf_port)], "iperf3")
    wait_ready(backend_port, [bk], "backend nginx")
    wait_ready(iperf_port, [ip], "iperf3 server", http=False)
    time.sleep(0.2)
    backend_pids = [bk.pid] + children_of(bk.pid)
    try:
        for kind in kinds:
            log(f"== {kind}  (loadavg {open('/proc/loadavg').read().split()[0]})")
            try:
                la0 = float(open("/proc/loadavg").read().split()[0])
                result["kinds"][kind] = bench_kind(kind, backend_port, iperf_port, backend_pids)
                result["kinds"][kind]["loadavg_1m_start_end"] = [la0, float(open("/proc/loadavg").read().split()[0])]
            except Exception as e:  # noqa: BLE001 - one broken kind must not lose the others
                log(f"  {kind} FAILED: {e}")
                result["kinds"][kind] = {"kind": kind, "error": str(e)}
                if kind == "direct":
                    raise
            # let TIME_WAIT sockets and CPU settle between kinds
            time.sleep(1)
    finally:
        stop_all()

    ok = {k: v for k, v in result["kinds"].items() if "error" not in v}
    direct_p99 = ok["direct"]["fixed_rate"]["p99_us"]
    rows = {k: row(v, direct_p99) for k, v in ok.items()}
    peers_present = [k for k in PEERS if k in rows]
    best = {}
    for key, _, _, hib in COLS:
        vals = [(rows[k][key], k) for k in peers_present if rows[k].get(key) is not None]
        if vals:
            best[key] = (max if hib else min)(vals)
    extra = []
    if best:
        extra.append(["best peer"] + [fmt(best[c[0]][0], c[2]) if c[0] in best else "-" for c in COLS])
        extra.append(["  (which)"] + [best[c[0]][1] if c[0] in best else "-" for c in COLS])
    result["best_peer"] = {k: {"value": v[0], "kind": v[1]} for k, v in best.items()}
    ratios = {}
    for k in rows:
        if k == "direct":
            continue
        ratios[k] = {"vs_best_peer": {}, "vs_direct": {}}
        for key, _, _, _ in COLS:
            v = rows[k].get(key)
            if v is None:
                continue
            if key in best and best[key][0]:
                ratios[k]["vs_best_peer"][key] = v / best[key][0]
            dv = rows["direct"].get(key)
            if dv:
                ratios[k]["vs_direct"][key] = v / dv
    for k in [k for k in ("trellis",) if k in rows] + peers_present:
        extra.append([f"{k}/best"] + [fmt(ratios[k]["vs_best_peer"].get(c[0]), "{:.2f}x") for c in COLS])
    for k in [k for k in ("trellis",) if k in rows] + peers_present:
        extra.append([f"{k}/direct"] + [fmt(ratios[k]["vs_direct"].get(c[0]), "{:.2f}x")
                                        if c[0] in ("ka_rps", "ka_p50", "ka_p99", "fr_p50", "fr_p99", "nc_rps",
                                                    "gbit") else "-" for c in COLS])
    result["rows"], result["ratios"] = rows, ratios
    floor = result["crypto_floor"]["cpu_ms_per_handshake_pair"]
    result["new_conn_cpu_vs_floor"] = {k: rows[k]["cpuconn"] / floor for k in rows
                                       if rows[k].get("cpuconn") is not None}

    print()
    print(f"Trellis sidecar-pair benchmark  {result['started']}  DURATION={DURATION:g}s  "
          f"{result['system']['cores']} cores  {result['system']['cpu']}")
    print(table(rows, extra))
    print()
    print(f"crypto floor: {floor:.3f} ms CPU per full mutual TLS 1.3 handshake pair (client+server, "
          f"in-process, {result['crypto_floor']['cipher']}); primitives alone "
          f"{result['crypto_floor'].get('primitive_ms_per_handshake_pair', 0):.3f} ms")
    for k, x in result["new_conn_cpu_vs_floor"].items():
        print(f"  {k}: {rows[k]['cpuconn']:.3f} ms CPU per new connection = {x:.2f} x floor")
    print("mTLS checks (server-side proxy probed with openssl s_client):")
    for k, v in ok.items():
        c = v.get("mtls_check")
        if c:
            print(f"  {k:8s} {'PASS' if c['pass'] else 'FAIL'}: {c['protocol']} {c['cipher']} {c['group']} "
                  f"{c['server_sig']}; no client cert -> "
                  f"{'ACCEPTED' if c['without_client_cert_http_200'] else 'refused (' + str(c['without_client_cert_alert']) + ')'}"
                  f"; foreign-CA cert -> {'ACCEPTED' if c['foreign_ca_client_cert_http_200'] else 'refused'}"
                  f"; TLS1.2-only -> {'ACCEPTED' if c['tls12_only_client_http_200'] else 'refused'}"
                  f"; tickets {c['session_tickets_sent']}, resumed {c['resumed_with_saved_session']}")
    for k, v in result["kinds"].items():
        if "error" in v:
            print(f"  {k}: FAILED: {v['error']}")
    for k, v in ok.items():
        errs = v["keepalive"]["socket_errors"] + v["new_conn"]["socket_errors"] + v["fixed_rate"]["errors"]
        if errs:
            print(f"  {k}: load errors (wrk socket errors ka+nc, loadgen errors): {errs}")
        if v.get("idle") and v["idle"]["failed"]:
            print(f"  {k}: idle phase: {v['idle']['failed']} of {IDLE_CONNS} connections failed")
    for n in notes:
        print("NOTE:", n)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
