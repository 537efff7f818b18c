#!/usr/bin/python3
"""Three "pods" as network namespaces on a bridge, meshed by trellis-init + trellis-proxy.

Usage: netns_e2e.py NETNS_PODS_PY TRELLIS_INIT TRELLIS_PROXY   (as root; needs ip, iptables,
tcpdump, openssl)

The namespaces, bridge, veths, host rule, capture and cleanup are scripts/lib/netns_pods.py's (the
same code as the demo's network-namespace mode). Each pod gets its own namespace, a veth into the
run's bridge, trellis-init's nat rules (run by the binary inside the namespace), a trellis-proxy
as UID 1337 in transparent mode with file-mode certificates minted here (openssl: a root, one leaf
per pod with its SPIFFE URI SAN), and a plaintext HTTP app as an ordinary user (nobody). Checks:
  1. pod A's app calls pod B's app by pod IP and gets the answer (a unique marker in both ways);
  2. a capture on the bridge holds TLS handshakes and never the marker in clear;
  3. pod C, whose identity B's --inbound_port_policy does not allow, is refused, and B's proxy logs
     a JSON line with reason identity_not_allowed naming C's SPIFFE ID;
  4. trellis-init ran twice in pod A leaves one copy of the rules; --cleanup removes them all;
  5. after cleanup nothing of this run is left (namespaces, links, host rules, processes).
Every wait is bounded. Names and the /24 are unique per run (netns_pods.py), so runs don't collide.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import netns_pods  # noqa: E402  pylint: disable=wrong-import-position

PROXY_UID = 1337
APP_UID = 65534  # nobody
APP_PORT = 8080
PLAIN_PORT = 9999  # excluded from redirection in every pod: plaintext on the wire, by design
TD = "cluster.local"
PODS = {
    "a": {"spiffe": f"spiffe://{TD}/ns/a/sa/app-a"},
    "b": {"spiffe": f"spiffe://{TD}/ns/b/sa/app-b"},
    "c": {"spiffe": f"spiffe://{TD}/ns/c/sa/app-c"},
}
NET = netns_pods.PodNetwork("e2e", list(PODS))
# Pod B's app port only admits identities of namespace "a".
B_POLICY = f"{APP_PORT}=spiffe://{TD}/ns/a/*"

procs = []  # every Popen we started
failures = []
work = tempfile.mkdtemp(prefix="trellis-netns-")
os.chmod(work, 0o755)
start_time = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - start_time:6.1f}s] {msg}", flush=True)


def run(args, check=True, timeout=30):
    return netns_pods.run(args, check=check, timeout=timeout)


def in_ns(pod, args, **kw):
    return NET.pods[pod].run(args, **kw)


def as_user_in_ns(pod, uid, args):
    """argv that runs args in the pod's namespace as uid."""
    return NET.pods[pod].exec_argv(args, uid=uid)


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
# Cleanup: runs on every exit path (atexit, SIGTERM/SIGINT -> SystemExit): netns_pods.py stops
# the processes, then removes namespaces, links, the host rule and the run's record.


def cleanup():
    left = NET.cleanup(procs)
    subprocess.run(["rm", "-rf", work], check=False)
    return left


def leftovers():
    left = NET.leftovers()
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


def main():
    init_bin, proxy_bin = (os.path.abspath(p) for p in sys.argv[2:4])
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
    bundle = mint_certs()
    NET.create()
    for pod, info in PODS.items():
        info["ip"] = NET.pods[pod].ip
    log(f"run {NET.run_id}: namespaces {', '.join(p.netns for p in NET.pods.values())}, bridge "
        f"{NET.bridge}, subnet {NET.subnet}.0/24, host rule {' '.join(NET.forward_rule or ['none'])}, "
        f"marker {marker}")

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
    capture = netns_pods.Capture(NET.bridge, pcap, f"{work}/tcpdump.log")
    procs.append(capture.proc)
    capture.wait_started()

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
    capture.stop()
    with open(pcap, "rb") as f:
        raw = f.read()
    payloads = capture.segments()
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
        if not check(not left, f"nothing of run {NET.run_id} is left (namespaces, links, host "
                     "rules, processes)"):
            log(f"left over: {left}")
            rc = 1
    log(f"{'PASSED' if rc == 0 else 'FAILED'} in {time.monotonic() - start_time:.1f}s")
    sys.exit(rc)
