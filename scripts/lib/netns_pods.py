#!/usr/bin/env python3
"""Pods as network namespaces on a private bridge: the one implementation behind the demo's
network-namespace mode (scripts/lib/demo.py) and the network-namespace e2e test
(tests/e2e/netns/netns_e2e.py). Python 3 standard library plus iproute2 and iptables; needs root.

A run (PodNetwork) owns, and removes on cleanup():
  - one network namespace per pod:  trellis-<kind>-<run>-<pod>
  - a bridge                        trb-<run>           (interface names are at most 15 bytes)
  - one veth pair per pod           trv-<run>-<n> on the host side, eth0 inside the pod
  - when br_netfilter hands bridged frames to the host's iptables (bridge-nf-call-iptables=1), one
    host rule "FORWARD -i trb-<run> -o trb-<run> -j ACCEPT" tagged with the comment trellis-<run>,
    so that a host whose FORWARD policy is DROP (Docker's) still lets the pods talk
  - every process started in its namespaces (SIGKILLed if still there at the end)
and a record of all that in /run/trellis-netns/<run>.json with the owner's pid. <run> is 6 random
characters, chosen under a lock, and each run gets its own /24 (10.77.N.0/24), so parallel runs
never collide, not even in the host's conntrack table (which sees bridged frames). A run whose
owner died without cleaning up (SIGKILL) is removed by the next run's sweep, or by
`netns_pods.py sweep`; a run marked kept (the demo's --keep) stays until `netns_pods.py remove RUN`.

Command line (root):
  netns_pods.py sweep          remove every run whose owner is gone and that is not kept
  netns_pods.py remove RUN     remove that run whatever its owner (the demo's --stop)
  netns_pods.py list           one line per recorded run
  netns_pods.py leftovers RUN  what of RUN still exists (exit 1 if anything)
"""

import ctypes
import fcntl
import http.client
import json
import os
import random
import signal
import socket
import string
import struct
import subprocess
import sys
import time

REGISTRY = "/run/trellis-netns"
LOCK = os.path.join(REGISTRY, ".lock")
SBIN = ("/usr/sbin", "/sbin")
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def _env():
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":" + ":".join(SBIN)
    return env


def run(args, check=True, timeout=30, **kw):
    """Runs a command (sbin on PATH); raises RuntimeError with its stderr if check and it fails."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(),
                       stdin=subprocess.DEVNULL, check=False, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def which(tool):
    for d in os.environ.get("PATH", "").split(":") + list(SBIN):
        if d and os.access(os.path.join(d, tool), os.X_OK):
            return os.path.join(d, tool)
    return None


def missing_tools(tools=("ip", "iptables", "iptables-save", "iptables-restore")):
    """Debian packages to install for the tools that are absent."""
    pkgs = {"ip": "iproute2", "iptables": "iptables", "iptables-save": "iptables",
            "iptables-restore": "iptables", "tcpdump": "tcpdump", "openssl": "openssl"}
    return sorted({pkgs.get(t, t) for t in tools if not which(t)})


def why_not_usable():
    """None if pods as network namespaces can be made here, else a sentence saying why not."""
    if os.geteuid() != 0:
        return "not running as root (network namespaces and iptables need root)"
    missing = missing_tools()
    if missing:
        return f"missing tools: apt-get install {' '.join(missing)}"
    return None


# ----------------------------------------------------------------------------------------------
# Processes inside a namespace.


def drop_privileges_argv(uid, argv, pdeathsig=True):
    """argv that sets groups/gid/uid to uid, then (optionally) asks for SIGTERM when its parent
    dies (setuid clears that setting, so it is set again after), then execs argv."""
    code = ("import ctypes,os,sys\n"
            "u=int(sys.argv[1]); os.setgroups([]); os.setgid(u); os.setuid(u)\n"
            "if sys.argv[2]=='1': ctypes.CDLL('libc.so.6').prctl(1, 15)\n"
            "os.execv(sys.argv[3], sys.argv[3:])")
    return ["/usr/bin/python3", "-c", code, str(uid), "1" if pdeathsig else "0"] + list(argv)


class _NsHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket lives in another network namespace."""

    def __init__(self, netns, host, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self):
        self.sock = socket_in_netns(self._netns)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


_libc = None


def _setns(fd):
    global _libc  # pylint: disable=global-statement
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(netns, family=socket.AF_INET, kind=socket.SOCK_STREAM):
    """A socket created in namespace netns (a socket keeps its namespace for life): the calling
    thread enters netns, creates it, and comes back. No process is spawned."""
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{netns}", "rb") as target:
        _setns(target.fileno())
        try:
            return socket.socket(family, kind)
        finally:
            _setns(home.fileno())


def http_get_in_netns(netns, host, port, path, timeout=2.0):
    """(status, body) of GET http://host:port/path from inside netns, or (None, error text)."""
    conn = _NsHTTPConnection(netns, host, port, timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as err:
        return None, str(err) or type(err).__name__
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# The registry and the lock.


class _Lock:
    def __enter__(self):
        os.makedirs(REGISTRY, mode=0o755, exist_ok=True)
        self.fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *_):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _proc_start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _records():
    out = []
    try:
        names = os.listdir(REGISTRY)
    except FileNotFoundError:
        return out
    for name in sorted(names):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(REGISTRY, name), encoding="utf-8") as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


def _owner_alive(rec):
    start = _proc_start_time(rec.get("owner_pid", -1))
    return start is not None and start == rec.get("owner_start")


# ----------------------------------------------------------------------------------------------
# A run.


class Pod:
    def __init__(self, name, netns, ip, veth):
        self.name = name
        self.netns = netns
        self.ip = ip
        self.veth = veth

    def exec_argv(self, argv, uid=None, pdeathsig=True):
        """argv that runs argv in this pod's namespace (as uid if given; else as root)."""
        inner = drop_privileges_argv(uid, argv, pdeathsig) if uid is not None else list(argv)
        return [which("ip") or "ip", "netns", "exec", self.netns] + inner

    def run(self, argv, check=True, timeout=30):
        return run(self.exec_argv(argv), check=check, timeout=timeout)

    def http_get(self, port, path, host="127.0.0.1", timeout=2.0):
        return http_get_in_netns(self.netns, host, port, path, timeout)


class PodNetwork:
    """Network namespaces on one bridge. Usage:

        net = PodNetwork("demo", ["control-plane", "checkout", ...])
        try:
            net.create()                # namespaces, bridge, veths, addresses, loopback up
            net.pods["checkout"].ip     # 10.77.N.11
            ...
        finally:
            net.cleanup()               # everything, idempotent; returns what is left (nothing)
    """

    def __init__(self, kind, pod_names, first_host=11):
        if len(pod_names) > 9:
            raise ValueError("at most 9 pods per run")
        self.kind = kind
        self.pod_names = list(pod_names)
        self.first_host = first_host
        self.run_id = None
        self.subnet = None
        self.bridge = None
        self.pods = {}
        self.forward_rule = None
        self.kept = False

    # -- names --

    @staticmethod
    def names(kind, run_id, pod_names):
        return {
            "bridge": f"trb-{run_id}",
            "netns": {p: f"trellis-{kind}-{run_id}-{p}" for p in pod_names},
            "veth": {p: f"trv-{run_id}-{i}" for i, p in enumerate(pod_names)},
            "comment": f"trellis-{run_id}",
        }

    def _record_path(self):
        return os.path.join(REGISTRY, f"{self.run_id}.json")

    def _write_record(self):
        n = self.names(self.kind, self.run_id, self.pod_names)
        rec = {"run": self.run_id, "kind": self.kind, "subnet": self.subnet, "owner_pid": os.getpid(),
               "owner_start": _proc_start_time(os.getpid()), "kept": self.kept,
               "bridge": n["bridge"], "netns": list(n["netns"].values()),
               "veth": list(n["veth"].values()), "comment": n["comment"],
               "forward_rule": self.forward_rule}
        tmp = self._record_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, self._record_path())

    def keep(self):
        """Marks the run kept: it survives its owner's exit until `netns_pods.py remove RUN`."""
        self.kept = True
        with _Lock():
            self._write_record()

    # -- create --

    def create(self):
        """Picks a free run id and /24, records them, then builds the network. On failure the
        caller's cleanup() removes whatever was made."""
        sweep()  # leftovers of runs whose owner was killed
        links = run(["ip", "-o", "link", "show"], check=False).stdout
        netns_list = run(["ip", "netns", "list"], check=False).stdout
        with _Lock():
            used = {r.get("subnet") for r in _records()}
            for third in range(256):
                if f"10.77.{third}" not in used:
                    self.subnet = f"10.77.{third}"
                    break
            else:
                raise RuntimeError(f"no free 10.77.N.0/24 for a new run: see {REGISTRY}")
            alphabet = string.ascii_lowercase + string.digits
            for _ in range(100):
                candidate = "".join(random.choice(alphabet) for _ in range(6))
                if not os.path.exists(os.path.join(REGISTRY, f"{candidate}.json")) and \
                        f"-{candidate}" not in links and f"-{candidate}-" not in netns_list:
                    self.run_id = candidate
                    break
            self._write_record()  # before the first object exists, so a sweep can always find it
        n = self.names(self.kind, self.run_id, self.pod_names)
        self.bridge = n["bridge"]
        for i, p in enumerate(self.pod_names):
            self.pods[p] = Pod(p, n["netns"][p], f"{self.subnet}.{self.first_host + i}", n["veth"][p])
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "link", "set", self.bridge, "up"])
        for pod in self.pods.values():
            run(["ip", "netns", "add", pod.netns])
            run(["ip", "link", "add", pod.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", pod.netns])
            run(["ip", "link", "set", pod.veth, "master", self.bridge, "up"])
            pod.run(["ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0"])
            pod.run(["ip", "link", "set", "eth0", "up"])
            pod.run(["ip", "link", "set", "lo", "up"])
        if _bridge_nf_call_iptables():
            self.forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment",
                                 "--comment", n["comment"], "-j", "ACCEPT"]
            with _Lock():
                self._write_record()
            run(["iptables", "-w", "5", "-I"] + self.forward_rule)
        return self

    # -- teardown --

    def cleanup(self, processes=(), grace=5.0):
        """Stops processes (Popen objects: SIGTERM, then SIGKILL after grace), SIGKILLs anything
        else in the namespaces, deletes namespaces, veths, bridge and host rule, and the record.
        Returns what is still there (empty when all went)."""
        deadline = time.monotonic() + grace
        for p in processes:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        for p in processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if self.run_id is None:
            return []
        return _remove(self.run_id, self.kind, self.pod_names)

    def leftovers(self):
        return leftovers(self.run_id, self.kind, self.pod_names) if self.run_id else []


def _bridge_nf_call_iptables():
    try:
        with open("/proc/sys/net/bridge/bridge-nf-call-iptables", encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _read_record(run_id):
    try:
        with open(os.path.join(REGISTRY, f"{run_id}.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _kill_netns_pids(netns, sig):
    r = run(["ip", "netns", "pids", netns], check=False)
    pids = [int(x) for x in r.stdout.split() if x.isdigit()]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def _remove(run_id, kind, pod_names):
    n = PodNetwork.names(kind, run_id, pod_names)
    existing = run(["ip", "netns", "list"], check=False).stdout.split()
    mine = [ns for ns in n["netns"].values() if ns in existing]
    # Whatever still runs in the namespaces: SIGTERM, a short grace, then SIGKILL.
    if any([_kill_netns_pids(ns, signal.SIGTERM) for ns in mine]):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(
                run(["ip", "netns", "pids", ns], check=False).stdout.strip() for ns in mine):
            time.sleep(0.1)
        for ns in mine:
            _kill_netns_pids(ns, signal.SIGKILL)
    for ns in mine:
        run(["ip", "netns", "del", ns], check=False)
    for veth in n["veth"].values():
        run(["ip", "link", "del", veth], check=False)
    run(["ip", "link", "del", n["bridge"]], check=False)
    _remove_host_rules(n["comment"])
    left = leftovers(run_id, kind, pod_names)
    if not left:
        with _Lock():
            try:
                os.remove(os.path.join(REGISTRY, f"{run_id}.json"))
            except FileNotFoundError:
                pass
    return left


def _remove_host_rules(comment):
    """Deletes every host filter rule carrying our comment (found in iptables-save's output)."""
    if not which("iptables-save"):
        return
    saved = run(["iptables-save", "-t", "filter"], check=False).stdout
    for line in saved.splitlines():
        if line.startswith("-A ") and comment in line.replace('"', "").split():
            run(["iptables", "-w", "5", "-D"] + line[3:].split(), check=False)


def leftovers(run_id, kind, pod_names):
    """Names of this run's namespaces, links, host rules and namespace processes still present."""
    n = PodNetwork.names(kind, run_id, pod_names)
    left = []
    existing = run(["ip", "netns", "list"], check=False).stdout.split()
    for ns in n["netns"].values():
        if ns in existing:
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            left.append(f"netns {ns}" + (f" (pids {' '.join(pids)})" if pids else ""))
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    for name in [n["bridge"]] + list(n["veth"].values()):
        if f" {name}:" in links or f" {name}@" in links:
            left.append(f"link {name}")
    if which("iptables-save"):
        rules = run(["iptables-save", "-t", "filter"], check=False).stdout
        left += [f"host rule {line}" for line in rules.splitlines()
                 if line.startswith("-A ") and n["comment"] in line.replace('"', "").split()]
    return left


def _pods_of(rec):
    prefix = f"trellis-{rec['kind']}-{rec['run']}-"
    return [ns[len(prefix):] for ns in rec.get("netns", []) if ns.startswith(prefix)]


def remove_run(run_id):
    """Removes a recorded run whatever its owner; returns what is left."""
    rec = _read_record(run_id)
    if rec is None:
        return [f"no record {REGISTRY}/{run_id}.json"]
    return _remove(run_id, rec["kind"], _pods_of(rec))


def sweep():
    """Removes runs whose owner process is gone and that are not kept. Returns their ids."""
    swept = []
    for rec in _records():
        if rec.get("kept") or _owner_alive(rec):
            continue
        _remove(rec["run"], rec["kind"], _pods_of(rec))
        swept.append(rec["run"])
    return swept


# ----------------------------------------------------------------------------------------------
# Packet capture on the bridge: tcpdump writes a pcap, read incrementally here (Ethernet, IPv4,
# TCP by hand; no dependency).

TLS_CONTENT = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


def _pdeathsig():
    """Child side: SIGTERM when the owner dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Capture:
    """tcpdump on one interface into a pcap file; segments() returns the new TCP segments with
    payload since the last call as (src, sport, dst, dport, payload prefix)."""

    def __init__(self, interface, pcap_path, log_path, snaplen=0, bpf="tcp"):
        self.pcap_path = pcap_path
        self.log_path = log_path
        self.offset = 24
        self.header = None
        # -Z root: no switch to the tcpdump user, which would clear the parent-death signal.
        argv = ["tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "-s", str(snaplen),
                "-Z", "root", "-w", pcap_path, bpf]
        self.log = open(log_path, "wb")  # pylint: disable=consider-using-with
        # Its own session: a Ctrl-C on the terminal reaches the owner, which stops it in order.
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with,subprocess-popen-preexec-fn
            [which("tcpdump") or "tcpdump"] + argv[1:], stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pdeathsig)

    def wait_started(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump exited {self.proc.returncode}: {_read(self.log_path)}")
            if "listening on" in _read(self.log_path):
                return
            time.sleep(0.05)
        raise RuntimeError(f"tcpdump did not start within {timeout:g} s: {_read(self.log_path)}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()

    def segments(self):
        try:
            with open(self.pcap_path, "rb") as f:
                if self.header is None:
                    head = f.read(24)
                    if len(head) < 24:
                        return []
                    magic = struct.unpack("<I", head[:4])[0]
                    self.header = ("<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">",
                                   struct.unpack(("<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">")
                                                 + "I", head[20:24])[0])
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        endian, linktype = self.header
        off, out = 0, []
        while off + 16 <= len(data):
            incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
            if off + 16 + incl > len(data):
                break  # a record still being written
            frame = data[off + 16:off + 16 + incl]
            off += 16 + incl
            seg = _tcp_segment(frame) if linktype == 1 else None
            if seg:
                out.append(seg)
        self.offset += off
        return out


def _tcp_segment(frame):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 6 or len(ip) < ihl + 20:
        return None
    total = struct.unpack(">H", ip[2:4])[0]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    tcp = ip[ihl:total]
    sport, dport = struct.unpack(">HH", tcp[:4])
    payload_len = total - ihl - (tcp[12] >> 4) * 4 if len(tcp) >= 13 else 0
    payload = tcp[(tcp[12] >> 4) * 4:] if len(tcp) >= 13 else b""
    if payload_len <= 0:
        return None
    return (src, sport, dst, dport, payload)


def classify(payload):
    """'tls' if the segment starts with a TLS record header, 'http' if with plaintext HTTP,
    else 'other' (e.g. the middle of a record split over segments)."""
    if len(payload) >= 3 and payload[0] in TLS_CONTENT and payload[1] == 3 and payload[2] <= 4:
        return "tls"
    if payload[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"HTTP"):
        return "http"
    return "other"


def is_client_hello(payload):
    return len(payload) > 5 and payload[0] == 22 and payload[5] == 1


def _read(path):
    try:
        with open(path, errors="replace", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.split("Command line")[1].split("\n", 1)[1])
        return 0 if len(argv) >= 2 else 2
    if os.geteuid() != 0:
        print("netns_pods.py: needs root", file=sys.stderr)
        return 1
    cmd = argv[1]
    if cmd == "sweep":
        swept = sweep()
        print(f"removed {len(swept)} stale runs{': ' + ' '.join(swept) if swept else ''}")
        return 0
    if cmd == "list":
        for rec in _records():
            state = "kept" if rec.get("kept") else ("running" if _owner_alive(rec) else "stale")
            print(f"{rec['run']}  {rec['kind']:<5} {state:<7} {rec.get('subnet')}.0/24  bridge "
                  f"{rec['bridge']}  owner pid {rec.get('owner_pid')}  {' '.join(rec.get('netns', []))}")
        return 0
    if cmd in ("remove", "leftovers") and len(argv) == 3:
        rec = _read_record(argv[2])
        if rec is None:
            print(f"no run {argv[2]} in {REGISTRY}", file=sys.stderr)
            return 1
        left = remove_run(argv[2]) if cmd == "remove" else leftovers(rec["run"], rec["kind"], _pods_of(rec))
        for item in left:
            print(item)
        return 1 if left else 0
    print(__doc__.split("Command line")[1].split("\n", 1)[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
