#!/usr/bin/env python3
"""Runs the local mesh demo's orchestrator (scripts/lib/demo.py) against the real binaries.

Usage: demo_test.py MODE DEMO_PY CONTROL_PLANE PROXY TRELLISCTL TRELLIS_INIT

MODE loopback: the demo with --mode loopback (explicit listeners on 127.0.0.1), as any user.
MODE auto: the demo as scripts/demo runs it by default. As root that is network-namespace mode
(pods as namespaces with trellis-init's rules) and this test checks it; as another user it checks
that the demo falls back to loopback mode and says why.

1. A short run (--duration 12): exit 0; the summary shows frontend calls > 0 with 0 failures,
   intruder 0 successes and its refusals, handshake failures with reason identity_not_allowed,
   at least 2 rotations per pod; the live view shows the refusal with its reason and both
   identities and rotations with their serials; nothing the demo started is left (processes; in
   netns mode also namespaces, veths, the bridge and the host rule). In netns mode also: pod IPs,
   the apps' plain HTTP to checkout's pod IP, and the capture's count (TLS > 0, plaintext 0).
2. Ctrl-C (SIGINT) in the middle of a 60 s run: it stops early, still prints the summary, cleans up.
3. --keep: everything stays up and the printed commands work; then --stop removes it all.
4. netns mode only: a proxy that cannot start (a binary that exits at once) fails the start-up
   with the proxy's log, and the namespaces are removed all the same.
5. netns mode only: the demo SIGKILLed once live: its processes go by themselves, and the sweep
   every run starts with (netns_pods.py sweep) removes the namespaces, links and host rule.

Every wait is bounded; anything left over is removed at the end (and the test fails).
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

MODE = sys.argv[1]
DEMO, CONTROL_PLANE, PROXY, TRELLISCTL, TRELLIS_INIT = (os.path.abspath(p) for p in sys.argv[2:7])
sys.path.insert(0, os.path.dirname(DEMO))
import netns_pods  # noqa: E402  pylint: disable=wrong-import-position

ROOT = os.geteuid() == 0
NETNS = MODE == "auto" and ROOT and netns_pods.why_not_usable() is None
# The demo's work directory must be reachable by UID 1337 and nobody in netns mode: /tmp, not the
# test's own temp dir under Bazel's output base (which may not be).
TMP = tempfile.mkdtemp(prefix="demo_test.", dir="/tmp" if NETNS else os.environ.get("TEST_TMPDIR"))
os.chmod(TMP, 0o711)
# The demo keeps its --keep state file in $TMPDIR: keep this test's apart from a user's demo.
os.environ["TMPDIR"] = TMP
FAILURES = []
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
INTRUDER = "spiffe://cluster.local/ns/demo/sa/intruder"
CHECKOUT = "spiffe://cluster.local/ns/demo/sa/checkout"
LIVE = r"^\[ *[\d.]+s\] "


def fail(message):
    print(f"FAIL: {message}", flush=True)
    FAILURES.append(message)


def check(condition, message):
    if not condition:
        fail(message)
    return bool(condition)


def demo_argv(work, *extra, proxy=PROXY):
    return [sys.executable, DEMO, "--control-plane", CONTROL_PLANE, "--proxy", proxy,
            "--trellisctl", TRELLISCTL, "--trellis-init", TRELLIS_INIT, "--work-dir", work,
            "--color", "never", "--mode", "loopback" if MODE == "loopback" else "auto", *extra]


def leftovers(work):
    """Pids of processes whose command line names the work directory (everything the demo starts)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if work.encode() in cmdline:
            found.append((int(entry), cmdline.replace(b"\0", b" ").decode("utf-8", "replace")[:200]))
    return found


def run_id_of(out):
    m = re.search(r"bridge trb-([a-z0-9]{6})", out)
    return m.group(1) if m else None


def network_leftovers(run_id):
    """What of a netns run still exists: namespaces, links, host rules (named after run_id)."""
    if not run_id:
        return []
    left = [f"netns {n}" for n in netns_pods.run(["ip", "netns", "list"], check=False).stdout.split()
            if f"-{run_id}-" in n]
    links = netns_pods.run(["ip", "-o", "link", "show"], check=False).stdout
    left += [f"link {m}" for m in re.findall(r"^\d+: (tr[bv]-" + run_id + r"[^:@]*)", links, re.M)]
    rules = netns_pods.run(["iptables-save", "-t", "filter"], check=False).stdout
    left += [f"host rule {line}" for line in rules.splitlines() if f"trellis-{run_id}" in line]
    if os.path.exists(f"{netns_pods.REGISTRY}/{run_id}.json"):
        left.append(f"record {netns_pods.REGISTRY}/{run_id}.json")
    return left


def check_no_leftovers(work, when, run_id=None):
    deadline = time.monotonic() + 5
    left = leftovers(work)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(work)
    if not check(not left, f"{when}: processes left running: {left}"):
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if NETNS:
        check(run_id, f"{when}: no network run id (bridge trb-XXXXXX) in the output")
        net_left = network_leftovers(run_id)
        if not check(not net_left, f"{when}: network objects left: {net_left}"):
            netns_pods.remove_run(run_id)


def number(pattern, text, what):
    m = re.search(pattern, text, re.M)
    if not check(m, f"the output has no {what} (pattern {pattern!r})"):
        return None
    return [int(g) for g in m.groups()]


def check_summary(out, min_rotations, label):
    fe = number(r"^  calls +frontend -> checkout: (\d+) ok, (\d+) failed$", out, f"{label}: frontend summary")
    if fe:
        check(fe[0] > 0, f"{label}: frontend made no successful call")
        check(fe[1] == 0, f"{label}: frontend had {fe[1]} failed calls")
    it = number(r"^  calls +intruder -> checkout: (\d+) ok, (\d+) refused$", out, f"{label}: intruder summary")
    if it:
        check(it[0] == 0, f"{label}: intruder had {it[0]} successful calls")
        check(it[1] > 0, f"{label}: no intruder call was refused")
    na = number(r"^  handshake failures +identity_not_allowed: (\d+) +\(checkout inbound (\d+)\)", out,
                f"{label}: identity_not_allowed handshake failures")
    if na:
        check(na[0] > 0, f"{label}: identity_not_allowed count is 0")
    rot = number(r"^  rotations +checkout (\d+), frontend (\d+), intruder (\d+)", out, f"{label}: rotations")
    if rot:
        check(min(rot) >= min_rotations,
              f"{label}: fewer than {min_rotations} rotations for some pod (checkout, frontend, intruder = {rot})")
    if NETNS:
        wire = number(r"^  wire +port 8080 on bridge trb-\w+: (\d+) segments starting a TLS record \((\d+) "
                      r"ClientHello\), (\d+) plaintext HTTP", out, f"{label}: wire summary")
        if wire:
            check(wire[0] > 0 and wire[1] > 0, f"{label}: the capture saw no TLS between pods: {wire}")
            check(wire[2] == 0, f"{label}: {wire[2]} plaintext HTTP segments between pods")
    return fe, it, rot


def check_mode_banner(out, label):
    if NETNS:
        check("network-namespace mode" in out, f"{label}: the output does not say network-namespace mode")
    else:
        check("loopback mode" in out, f"{label}: the output does not say loopback mode")
        why = "--loopback" if MODE == "loopback" else ("not running as root" if not ROOT else "missing tools")
        check(re.search(r"^Why not network namespaces: .*" + re.escape(why), out, re.M),
              f"{label}: the output does not say why not network namespaces ({why})")


def run_short():
    work = os.path.join(TMP, "short")
    start = time.monotonic()
    try:
        done = subprocess.run(demo_argv(work, "--duration", "12"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired as err:
        fail(f"short run: no exit within 180 s; output so far:\n{err.stdout}")
        check_no_leftovers(work, "short run", run_id_of(err.stdout or ""))
        return
    out = done.stdout
    print(f"--- short run: exit {done.returncode} after {time.monotonic() - start:.1f} s; output:\n{out}"
          f"{done.stderr}", flush=True)
    check(done.returncode == 0, f"short run: exit status {done.returncode}, want 0")
    check_mode_banner(out, "short run")
    check(re.search(LIVE + r"frontend -> checkout +200 .*" + re.escape(FRONTEND) + " -> " + re.escape(CHECKOUT),
                    out, re.M),
          "short run: no live call line showing both identities (frontend -> checkout 200 ... mTLS)")
    refused = re.search(r"REFUSED by checkout's proxy: reason=identity_not_allowed\n +client "
                        + re.escape(INTRUDER) + r".*\n +server " + re.escape(CHECKOUT), out)
    check(refused, "short run: no live refusal line with reason identity_not_allowed and both identities")
    check(len(re.findall(LIVE + r"rotated +checkout +certificate #\d+ +serial [0-9a-f]{8,}", out, re.M)) >= 2,
          "short run: fewer than 2 live rotation lines (with the new serial) for checkout")
    check(re.search(LIVE + r"checkout's app got GET / from 127\.0\.0\.1:\d+: plain HTTP", out, re.M),
          "short run: no line showing checkout's app receiving plain HTTP from its own proxy")
    check_summary(out, 2, "short run")
    check(re.search(r"^  cleanup +all 7 processes stopped", out, re.M), "short run: no 'cleanup all 7 processes stopped'")
    check(re.search(r"^  result +PASS", out, re.M), "short run: no 'result PASS'")
    if NETNS:
        ips = dict(re.findall(r"^    (checkout|frontend|intruder) +netns trellis-demo-\w+-\1 +eth0 (10\.77\.\d+\.\d+)/24",
                              out, re.M))
        check(len(ips) == 3, f"short run: pod IPs not shown for every pod: {ips}")
        if "checkout" in ips:
            check(re.search(r"^ +its app sent plain HTTP: GET http://" + re.escape(ips["checkout"]) + r":8080/ "
                            r"+\(checkout's pod IP", out, re.M),
                  "short run: no line showing frontend's app calling checkout's pod IP in plain HTTP")
        check(re.search(r"^    iptables -t nat -A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001$", out, re.M),
              "short run: trellis-init's outbound REDIRECT rule is not shown")
        wire = re.findall(LIVE + r"wire +tcpdump on trb-\w+, port 8080, last 5 s: (\d+) segments starting a TLS "
                          r"record \(\d+ ClientHello\), (\d+) plaintext HTTP", out, re.M)
        check(wire and all(int(t) > 0 and int(p) == 0 for t, p in wire),
              f"short run: live wire lines missing or not all TLS: {wire}")
        check(re.search(r"^  cleanup +removed 4 network namespaces, their veths and bridge trb-\w+", out, re.M),
              "short run: no 'cleanup removed 4 network namespaces' line")
    check_no_leftovers(work, "short run", run_id_of(out))


def run_ctrl_c():
    work = os.path.join(TMP, "ctrl-c")
    start = time.monotonic()
    proc = subprocess.Popen(demo_argv(work, "--duration", "60"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        # Interrupt once live output with a rotation has appeared.
        for line in proc.stdout:
            lines.append(line)
            if re.match(LIVE + "rotated ", line):
                break
            if time.monotonic() - start > 90:
                break
        proc.send_signal(signal.SIGINT)
        out_rest, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out_rest, _ = proc.communicate()
        fail("ctrl-c run: no exit within 60 s of SIGINT")
    out = "".join(lines) + (out_rest or "")
    elapsed = time.monotonic() - start
    print(f"--- ctrl-c run: exit {proc.returncode} after {elapsed:.1f} s; output:\n{out}", flush=True)
    check(elapsed < 45, f"ctrl-c run: took {elapsed:.0f} s; SIGINT did not stop it early")
    check("SIGINT: stopping" in out, "ctrl-c run: no 'SIGINT: stopping' line")
    check(re.search(r"^==> Summary after", out, re.M), "ctrl-c run: no summary after SIGINT")
    check_summary(out, 0, "ctrl-c run")
    check(re.search(r"^  cleanup +all 7 processes stopped", out, re.M), "ctrl-c run: no cleanup line")
    check(proc.returncode == 0, f"ctrl-c run: exit status {proc.returncode}, want 0")
    check_no_leftovers(work, "ctrl-c run", run_id_of(out))


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError as err:
        return f"error: {err}"


def poke(command):
    """Runs one printed command (an argv, no shell) and returns (exit status, stdout)."""
    done = subprocess.run(shlex.split(command), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, check=False)
    return done.returncode, done.stdout


def run_keep():
    work = os.path.join(TMP, "keep")
    try:
        done = subprocess.run(demo_argv(work, "--duration", "3", "--keep"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as err:
        fail("keep run: no exit within 120 s")
        subprocess.run([sys.executable, DEMO, "--stop"], capture_output=True, timeout=60, check=False)
        check_no_leftovers(work, "keep run", run_id_of(err.stdout or ""))
        return
    out = done.stdout
    run_id = run_id_of(out)
    print(f"--- keep run: exit {done.returncode}; output:\n{out}{done.stderr}", flush=True)
    check(done.returncode == 0, f"keep run: exit status {done.returncode}, want 0")
    left = leftovers(work)
    check(len(left) == 7, f"keep run: {len(left)} processes running after --keep, want 7: {left}")
    check("scripts/demo --stop" in out, "keep run: the output does not say how to stop it")
    if NETNS:
        there = network_leftovers(run_id)
        check(sum(x.startswith("netns") for x in there) == 4 and sum(x.startswith("link") for x in there) == 5,
              f"keep run: not all 4 namespaces and 5 links are there after --keep: {there}")
        m = re.search(r"^  (ip netns exec trellis-demo-\w+-frontend curl -s http://[\d.]+:8080/) +# as frontend", out, re.M)
        if check(m, "keep run: no 'ip netns exec ... curl' command for a call as frontend's app"):
            rc, body = poke(m.group(1))
            check(rc == 0 and "checkout says hi" in body, f"keep run: {m.group(1)!r}: exit {rc}, {body!r}")
        m = re.search(r"^  (ip netns exec trellis-demo-\w+-intruder curl -s http://[\d.]+:8080/) +# as intruder", out, re.M)
        if check(m, "keep run: no command for a call as intruder"):
            rc, body = poke(m.group(1))
            check(rc != 0 and "checkout says hi" not in body, f"keep run: intruder got through: {rc}, {body!r}")
        m = re.search(r"^  (ip netns exec trellis-demo-\w+-checkout curl -s 127\.0\.0\.1:15000/certs)", out, re.M)
        if check(m, "keep run: no /certs command"):
            rc, body = poke(m.group(1))
            check(rc == 0 and CHECKOUT in body, f"keep run: /certs does not show checkout's identity: {body[:200]!r}")
        m = re.search(r"^  (ip netns exec trellis-demo-\w+-control-plane curl -s 127\.0\.0\.1:\d+/metrics)", out, re.M)
        if check(m, "keep run: no control-plane /metrics command"):
            rc, body = poke(m.group(1))
            check(rc == 0 and "trellis_cp_issuances_total" in body, "keep run: control-plane /metrics failed")
    else:
        m = re.search(r"^  curl -s (http://127\.0\.0\.1:\d+/) +# a call as frontend", out, re.M)
        if check(m, "keep run: no curl command for a call as frontend"):
            body = fetch(m.group(1))
            check("checkout says hi" in body, f"keep run: the printed curl command got {body!r}")
        m = re.search(r"^  curl -s (http://127\.0\.0\.1:\d+/certs)", out, re.M)
        if check(m, "keep run: no /certs command"):
            check(CHECKOUT in fetch(m.group(1)), "keep run: /certs does not show checkout's identity")
    stop = subprocess.run([sys.executable, DEMO, "--stop"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)
    print(f"--- --stop: exit {stop.returncode}; output:\n{stop.stdout}{stop.stderr}", flush=True)
    check(stop.returncode == 0, f"--stop: exit status {stop.returncode}")
    check("Stopped 7 processes" in stop.stdout, "--stop: does not report 7 processes stopped")
    if NETNS:
        check(f"removed network namespaces, veths and bridge of run {run_id}" in stop.stdout,
              "--stop: does not report the network removed")
    check(not os.path.exists(work), f"--stop: {work} is still there")
    check_no_leftovers(work, "--stop", run_id)


def run_broken_proxy():
    """A proxy that exits at once: start-up fails with its log, and nothing is left behind."""
    work = os.path.join(TMP, "broken")
    try:
        done = subprocess.run(demo_argv(work, "--duration", "5", proxy="/bin/false"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as err:
        fail("broken proxy: no exit within 120 s")
        check_no_leftovers(work, "broken proxy", run_id_of(err.stdout or ""))
        return
    out = done.stdout
    print(f"--- broken proxy: exit {done.returncode}; output:\n{out}{done.stderr}", flush=True)
    check(done.returncode == 1, f"broken proxy: exit status {done.returncode}, want 1")
    check(re.search(r"^demo: proxy:checkout exited with status 1 before 'listening' log line", out, re.M),
          "broken proxy: no error naming the proxy that exited")
    check(re.search(r"^  cleanup +removed 4 network namespaces", out, re.M), "broken proxy: no network cleanup line")
    check(re.search(r"^  result +FAIL", out, re.M), "broken proxy: no 'result FAIL'")
    check_no_leftovers(work, "broken proxy", run_id_of(out))


def run_killed():
    """SIGKILL in the middle (no cleanup can run): every process goes (it asked for SIGTERM when
    its parent dies), and `netns_pods.py sweep` (which every new run does first) removes the
    namespaces, links and host rule of a run whose owner is gone."""
    work = os.path.join(TMP, "killed")
    proc = subprocess.Popen(demo_argv(work, "--duration", "60"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, start = [], time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("==> Live for") or time.monotonic() - start > 90:
            break
    proc.kill()
    proc.communicate(timeout=30)
    out = "".join(lines)
    run_id = run_id_of(out)
    print(f"--- killed run (SIGKILL once live): output:\n{out}", flush=True)
    check(run_id and network_leftovers(run_id), "killed run: nothing of the run to sweep (did it start?)")
    left = leftovers(work)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(work)
    check(not left,
          f"killed run: processes still running 10 s after the demo was SIGKILLed: {left}")
    sweep = subprocess.run([sys.executable, os.path.join(os.path.dirname(DEMO), "netns_pods.py"), "sweep"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    print(f"--- netns_pods.py sweep: exit {sweep.returncode}: {sweep.stdout}{sweep.stderr}", flush=True)
    check(sweep.returncode == 0 and run_id and run_id in sweep.stdout, f"sweep did not remove run {run_id}")
    check_no_leftovers(work, "killed run, after the sweep", run_id)


def main():
    if not os.path.isfile(DEMO) or not os.path.isfile(os.path.join(os.path.dirname(DEMO), "demo_app.py")):
        print(f"FAIL: the demo's orchestrator is not at {DEMO} (with demo_app.py next to it)", flush=True)
        return 1
    print(f"demo: {DEMO}; mode {MODE}; {'network namespaces' if NETNS else 'loopback'}"
          f"{'' if ROOT else ' (not root)'}", flush=True)
    tests = [("short run", run_short), ("ctrl-c", run_ctrl_c), ("keep/stop", run_keep)]
    if NETNS:
        tests += [("broken proxy", run_broken_proxy), ("killed", run_killed)]
    for name, test in tests:
        print(f"=== {name}", flush=True)
        try:
            test()
        except Exception as err:  # pylint: disable=broad-except
            fail(f"{name}: {type(err).__name__}: {err}")
    subprocess.run(["rm", "-rf", TMP], check=False)
    if FAILURES:
        print(f"\n{len(FAILURES)} failures:\n  " + "\n  ".join(FAILURES), flush=True)
        return 1
    print("\nPASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
