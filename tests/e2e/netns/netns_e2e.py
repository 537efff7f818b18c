#!/usr/bin/python3
"""Three "pods" as network namespaces on a bridge, meshed by trellis-init + trellis-proxy.

Usage: netns_e2e.py TRELLIS_INIT TRELLIS_PROXY   (as root; needs ip, iptables, tcpdump, openssl)

Each pod gets its own namespace, a veth into a private bridge, trellis-init's nat rules (run by the
binary inside the namespace), a trellis-proxy as UID 1337 in transparent mode with file-mode
certificates minted here (openssl: a root, one leaf per pod with its SPIFFE URI SAN), and a
plaintext HTTP app as an ordinary user (nobody). Checks:
  1. pod A's app calls pod B's app by pod IP and gets the answer (a unique marker in both ways);
  2. a capture on the bridge holds TLS handshakes and never the marker in clear;
  3. pod C, whose identity B's --inbound_port_policy does not allow, is refused, and B's proxy logs
     a JSON line with reason identity_not_allowed naming C's SPIFFE ID;
  4. trellis-init ran twice in pod A leaves one copy of the rules; --cleanup removes them all;
  5. after cleanup nothing of this run is left (namespaces, links, processes).
Every wait is bounded. Names carry TRELLIS_NETNS_RUN_ID (default: this PID) so runs don't collide.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid

RUN_ID = os.environ.get("TRELLIS_NETNS_RUN_ID", str(os.getpid()))
NS_PREFIX = f"trellis-e2e-{RUN_ID}-"
BRIDGE = f"trbr{RUN_ID}"[:15]
PROXY_UID = 1337
APP_UID = 65534  # nobody
APP_PORT = 8080
PLAIN_PORT = 9999  # excluded from redirection in every pod: plaintext on the wire, by design
SUBNET = "10.77.0"
TD = "cluster.local"
PODS = {
    "a": {"ip": f"{SUBNET}.11", "spiffe": f"spiffe://{TD}/ns/a/sa/app-a"},
    "b": {"ip": f"{SUBNET}.12", "spiffe": f"spiffe://{TD}/ns/b/sa/app-b"},
    "c": {"ip": f"{SUBNET}.13", "spiffe": f"spiffe://{TD}/ns/c/sa/app-c"},
}
# Pod B's app port only admits identities of namespace "a".
B_POLICY = f"{APP_PORT}=spiffe://{TD}/ns/a/*"

procs = []  # every Popen we started
failures = []
work = tempfile.mkdtemp(prefix=f"trellis-netns-{RUN_ID}-")
os.chmod(work, 0o755)
start_time = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - start_time:6.1f}s] {msg}", flush=True)


def ns(pod):
    return NS_PREFIX + pod


def veth(pod):
    return f"trv{RUN_ID}{pod}"[:15]


def run(args, check=True, timeout=30, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def in_ns(pod, args, **kw):
    return run(["ip", "netns", "exec", ns(pod)] + args, **kw)


def as_user_in_ns(pod, uid, args):
    """argv that runs args in the pod's namespace as uid (python3 drops the privileges)."""
    drop = ("import os,sys; os.setgroups([]); os.setgid(int(sys.argv[1])); "
            "os.setuid(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])")
    return ["ip", "netns", "exec", ns(pod), "/usr/bin/python3", "-c", drop, str(uid)] + args


def check(cond, what):
    if cond:
        log(f"ok: {what}")
    else:
        log(f"FAIL: {what}")
        failures.append(what)
    return cond


def wait_for(pred, what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# Cleanup: runs on every exit path (atexit, SIGTERM/SIGINT -> SystemExit).


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    for pod in PODS:
        r = run(["ip", "netns", "pids", ns(pod)], check=False)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "del", ns(pod)], check=False)
        run(["ip", "link", "del", veth(pod)], check=False)
    run(["ip", "link", "del", BRIDGE], check=False)
    subprocess.run(["rm", "-rf", work], check=False)


def leftovers():
    left = []
    netns = run(["ip", "netns", "list"], check=False).stdout
    left += [line.split()[0] for line in netns.splitlines() if line.startswith(NS_PREFIX)]
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    for name in [BRIDGE] + [veth(p) for p in PODS]:
        if f" {name}:" in links or f" {name}@" in links:
            left.append(name)
    left += [f"pid {p.pid}" for p in procs if p.poll() is None]
    if os.path.exists(work):
        left.append(work)
    return left


def on_signal(signum, _frame):
    if signum == signal.SIGALRM:
        raise TimeoutError("the run's deadline (TRELLIS_NETNS_DEADLINE) passed")
    raise SystemExit(f"killed by signal {signum}")


# ---------------------------------------------------------------------------------------------
# Certificates: a root and one leaf per pod, minted with the openssl CLI.


def mint_certs():
    root_key, root_crt = f"{work}/root.key", f"{work}/roots.crt"
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", root_key])
    run(["openssl", "req", "-x509", "-new", "-key", root_key, "-sha256", "-days", "1",
         "-subj", f"/O=Trellis e2e/CN=Trellis e2e root ({TD})", "-out", root_crt,
         "-addext", "basicConstraints=critical,CA:TRUE,pathlen:1",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    for pod, info in PODS.items():
        key, csr, crt = f"{work}/{pod}.key", f"{work}/{pod}.csr", f"{work}/{pod}.crt"
        ext = f"{work}/{pod}.ext"
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyAgreement\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    f"subjectAltName=critical,URI:{info['spiffe']}\n")
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
        run(["openssl", "req", "-new", "-key", key, "-subj", f"/O=Trellis e2e", "-out", csr])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", root_crt, "-CAkey", root_key,
             "-CAcreateserial", "-days", "1", "-sha256", "-extfile", ext, "-out", crt])
        os.chmod(key, 0o644)  # the proxy (UID 1337) reads it; the directory is ours alone
        info.update(cert=crt, key=key)
    return root_crt


# ---------------------------------------------------------------------------------------------
# Pods.


def make_network():
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "link", "set", BRIDGE, "up"])
    for pod, info in PODS.items():
        run(["ip", "netns", "add", ns(pod)])
        run(["ip", "link", "add", veth(pod), "type", "veth", "peer", "name", "eth0",
             "netns", ns(pod)])
        run(["ip", "link", "set", veth(pod), "master", BRIDGE, "up"])
        in_ns(pod, ["ip", "addr", "add", f"{info['ip']}/24", "dev", "eth0"])
        in_ns(pod, ["ip", "link", "set", "eth0", "up"])
        in_ns(pod, ["ip", "link", "set", "lo", "up"])


def start(argv, logfile):
    out = open(logfile, "wb")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append(p)
    return p


APP = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("pong " + self.path.strip("/") + "-response from " + sys.argv[2] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        sys.stderr.write("app: from " + self.client_address[0] + ": " + (a[0] % a[1:]) + "\n")
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

ECHO = r"""
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
s.settimeout(60)
c, _ = s.accept()
c.settimeout(10)
c.sendall(b"echo " + c.recv(1024))
c.close()
"""

PLAIN_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(sys.argv[3].encode())
print(c.recv(1024).decode())
"""

CLIENT = r"""
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print("STATUS", r.status); print(r.read().decode())
except Exception as e:
    print("ERROR", type(e).__name__, e); sys.exit(3)
"""


def http_get(pod, url):
    r = run(as_user_in_ns(pod, APP_UID, ["/usr/bin/python3", "-c", CLIENT, url]), check=False,
            timeout=20)
    return r.returncode, r.stdout + r.stderr


def start_pod(pod, init_bin, proxy_bin, bundle):
    info = PODS[pod]
    # Port 9999 is excluded both ways: the control channel that proves the capture sees cleartext.
    r = in_ns(pod, [init_bin, f"--exclude-outbound-ports={PLAIN_PORT}",
                    f"--exclude-inbound-ports={PLAIN_PORT}"])
    info["init_log"] = r.stderr
    args = [proxy_bin, "--outbound_capture_port=15001", "--inbound_capture_port=15006",
            "--capture_bind_host=0.0.0.0", f"--cert_file={info['cert']}",
            f"--key_file={info['key']}", f"--bundle_file={bundle}", "--workers=1",
            "--admin_address=127.0.0.1:15000", "--drain_timeout=1s"]
    if pod == "b":
        args.append(f"--inbound_port_policy={B_POLICY}")
    info["proxy_log"] = f"{work}/proxy-{pod}.log"
    info["proxy"] = start(as_user_in_ns(pod, PROXY_UID, args), info["proxy_log"])
    info["app_log"] = f"{work}/app-{pod}.log"
    info["app"] = start(as_user_in_ns(pod, APP_UID, ["/usr/bin/python3", "-c", APP,
                                                     str(APP_PORT), pod]), info["app_log"])
    if pod == "b":
        info["plain"] = start(as_user_in_ns(pod, APP_UID, ["/usr/bin/python3", "-c", ECHO,
                                                           str(PLAIN_PORT)]), f"{work}/plain-b.log")


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def json_lines(path):
    out = []
    for line in read(path).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def pod_ready(pod):
    info = PODS[pod]
    if info["proxy"].poll() is not None or info["app"].poll() is not None:
        raise RuntimeError(f"pod {pod}: a process exited early:\nproxy:\n{read(info['proxy_log'])}"
                           f"\napp:\n{read(info['app_log'])}")
    if not any(l.get("msg") == "listening" for l in json_lines(info["proxy_log"])):
        return False
    probe = ("import urllib.request,sys\n"
             "try: urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=2); print('up')\n"
             "except Exception as e: print(e)\n"
             f"import socket; socket.create_connection(('127.0.0.1', {APP_PORT}), 2); print('app')")
    r = in_ns(pod, ["/usr/bin/python3", "-c", probe], check=False, timeout=10)
    return "up" in r.stdout and "app" in r.stdout


# ---------------------------------------------------------------------------------------------
# The capture: pcap parsed by hand (Ethernet, IPv4, TCP).


def tcp_payloads(pcap_path):
    with open(pcap_path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off, out = 24, []
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if linktype != 1 or len(frame) < 14 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack(">H", ip[2:4])[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            out.append((src, sport, dst, dport, payload))
    return out


def main():
    init_bin, proxy_bin = (os.path.abspath(p) for p in sys.argv[1:3])
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(os.environ.get("TRELLIS_NETNS_DEADLINE", "240")))  # the whole run, bounded
    if os.geteuid() != 0:
        print("FAIL: needs root (network namespaces, iptables)", file=sys.stderr)
        return 1
    for tool in ("ip", "tcpdump", "openssl", "iptables-save"):
        if subprocess.run(["sh", "-c", f"command -v {tool} || test -x /usr/sbin/{tool}"],
                          capture_output=True).returncode != 0:
            pkg = {"ip": "iproute2", "iptables-save": "iptables"}.get(tool, tool)
            print(f"FAIL: {tool} not found: apt-get install {pkg}", file=sys.stderr)
            return 1
    marker = f"trellis-marker-{uuid.uuid4().hex}"
    log(f"run {RUN_ID}: namespaces {NS_PREFIX}{{a,b,c}}, bridge {BRIDGE}, marker {marker}")

    bundle = mint_certs()
    make_network()

    # trellis-init twice in pod A: one copy of the rules; then --cleanup and once more for real.
    in_ns("a", [init_bin])
    once = in_ns("a", ["iptables-save", "-t", "nat"]).stdout
    in_ns("a", [init_bin])
    twice = in_ns("a", ["iptables-save", "-t", "nat"]).stdout
    rules = lambda t: sorted(l for l in t.splitlines() if l.startswith(("-A", ":TRELLIS")))
    check(rules(once) == rules(twice) and rules(twice).count("-A OUTPUT -p tcp -j TRELLIS_OUTPUT")
          == 1, "trellis-init twice leaves exactly one copy of the rules")
    in_ns("a", [init_bin, "--cleanup"])
    after = in_ns("a", ["iptables-save", "-t", "nat"]).stdout
    check("TRELLIS" not in after, "trellis-init --cleanup removes every rule and chain")
    dry = in_ns("a", [init_bin, "--dry-run"]).stdout
    check("-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in dry
          and "TRELLIS" not in in_ns("a", ["iptables-save", "-t", "nat"]).stdout,
          "trellis-init --dry-run prints the batch and changes nothing")

    # Capture everything on the bridge from before the first packet to after the last.
    pcap = f"{work}/bridge.pcap"
    tcpdump = start(["tcpdump", "-i", BRIDGE, "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap, "tcp"],
                    f"{work}/tcpdump.log")
    wait_for(lambda: "listening on" in read(f"{work}/tcpdump.log") or tcpdump.poll() is not None,
             "tcpdump to start", 15)
    if tcpdump.poll() is not None:
        raise RuntimeError(f"tcpdump exited: {read(f'{work}/tcpdump.log')}")

    for pod in PODS:
        start_pod(pod, init_bin, proxy_bin, bundle)
    for pod in PODS:
        wait_for(lambda: pod_ready(pod), f"pod {pod}'s proxy (/ready) and app", 30)
    log("pods ready")

    # 1. A -> B by pod IP, through both proxies.
    code, out = http_get("a", f"http://{PODS['b']['ip']}:{APP_PORT}/{marker}")
    check(code == 0 and f"pong {marker}-response from b" in out,
          f"pod A's app reached pod B's app by pod IP through the mesh: {out.strip()!r}")
    check("127.0.0.1" in read(PODS["b"]["app_log"]),
          "pod B's app saw the call come from its own proxy on 127.0.0.1")

    # 3. C -> B: refused by B's inbound port policy.
    code, out = http_get("c", f"http://{PODS['b']['ip']}:{APP_PORT}/{marker}-from-c")
    check(code != 0 and "pong" not in out and "STATUS" not in out, f"pod C's call to pod B is refused: {out.strip()!r}")
    c_id = PODS["c"]["spiffe"]
    refusal = []
    wait_for(lambda: refusal.extend(
        l for l in json_lines(PODS["b"]["proxy_log"])
        if "identity_not_allowed" in json.dumps(l) and c_id in json.dumps(l)) or refusal,
        "pod B's proxy to log the refusal", 10)
    check(bool(refusal), f"pod B's proxy logged identity_not_allowed for {c_id}: "
          f"{json.dumps(refusal[0]) if refusal else ''}")

    # Control: a port excluded from redirection carries plaintext, and the capture must see it;
    # otherwise "the marker is not in the capture" would prove nothing.
    control = f"trellis-control-{uuid.uuid4().hex}"
    r = run(as_user_in_ns("a", APP_UID, ["/usr/bin/python3", "-c", PLAIN_CLIENT, PODS["b"]["ip"],
                                         str(PLAIN_PORT), control]), check=False, timeout=20)
    check(r.returncode == 0 and f"echo {control}" in r.stdout,
          f"excluded port {PLAIN_PORT} bypasses the proxies (plain echo A->B): {r.stdout.strip()!r}")

    # 2. The capture: TLS between pods, never the marker in clear.
    # --immediate-mode hands every packet over at once; the pause lets the last ones land.
    time.sleep(1.0)
    tcpdump.send_signal(signal.SIGINT)
    tcpdump.wait(timeout=10)
    with open(pcap, "rb") as f:
        raw = f.read()
    payloads = tcp_payloads(pcap)
    to_app = [p for p in payloads if APP_PORT in (p[1], p[3])]
    hellos = [p for p in to_app if p[4][:1] == b"\x16" and p[4][1:2] == b"\x03"
              and len(p[4]) > 5 and p[4][5] == 1 and p[3] == APP_PORT]
    server_hellos = [p for p in to_app if p[4][:1] == b"\x16" and len(p[4]) > 5
                     and p[4][5] == 2 and p[1] == APP_PORT]
    log(f"capture: {len(raw)} bytes, {len(payloads)} TCP segments with payload, "
        f"{len(to_app)} on port {APP_PORT}")
    for src, sport, dst, dport, payload in to_app:
        kind = {20: "ChangeCipherSpec", 21: "alert", 22: "handshake", 23: "application data"}
        hs = {1: " (ClientHello)", 2: " (ServerHello)"}.get(payload[5], "") if payload[0] == 22 else ""
        log(f"  {src}:{sport} -> {dst}:{dport} {len(payload)} bytes, first TLS record: "
            f"{kind.get(payload[0], payload[0])}{hs}")
    log(f"tcpdump: {' '.join(read(f'{work}/tcpdump.log').split())}")
    check(len(to_app) > 0, "the capture saw the pod-to-pod traffic")
    check(control.encode() in raw,
          f"control: the plaintext sent to excluded port {PLAIN_PORT} is in the capture")
    check(marker.encode() not in raw, "the marker never appears in clear in the capture")
    check(b"GET /" not in raw and b"HTTP/1." not in raw, "no plaintext HTTP in the capture")
    check(len(hellos) >= 2 and len(server_hellos) >= 1,
          f"TLS handshakes on the wire: {len(hellos)} ClientHello "
          f"(A->B and C->B), {len(server_hellos)} ServerHello")
    check(all(p[4][:1] in (b"\x14", b"\x15", b"\x16", b"\x17") for p in to_app),
          "every pod-to-pod segment on the app port is a TLS record")

    if failures:
        for pod in PODS:
            log(f"--- pod {pod} trellis-init:\n{PODS[pod].get('init_log', '')}")
            log(f"--- pod {pod} proxy log:\n{read(PODS[pod]['proxy_log'])[-4000:]}")
            log(f"--- pod {pod} app log:\n{read(PODS[pod]['app_log'])[-2000:]}")
    return 1 if failures else 0


if __name__ == "__main__":
    rc = 1
    try:
        rc = main()
    except BaseException as e:  # noqa: BLE001 - report, then clean up
        log(f"FAIL: {type(e).__name__}: {e}")
        for pod, info in PODS.items():
            if "proxy_log" in info:
                log(f"--- pod {pod} proxy log:\n{read(info['proxy_log'])[-4000:]}")
        rc = 1
    finally:
        cleanup()
        left = leftovers()
        if not check(not left, f"nothing of run {RUN_ID} is left (namespaces, links, processes)"):
            log(f"left over: {left}")
            rc = 1
    log(f"{'PASSED' if rc == 0 else 'FAILED'} in {time.monotonic() - start_time:.1f}s")
    sys.exit(rc)
