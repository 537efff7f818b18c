#!/usr/bin/env python3
"""Runs the local mesh demo's orchestrator (scripts/lib/demo.py) against the real binaries.

Usage: demo_test.py CONTROL_PLANE PROXY TRELLISCTL [DEMO_PY]

Without DEMO_PY, scripts/lib/demo.py is found in the source tree this script's runfiles symlink
points into (tests/e2e/demo/demo_test.py -> three folders up).

1. A short run (--duration 12): exit 0; the summary shows frontend calls > 0 with 0 failures,
   intruder 0 successes and its refusals, handshake failures with reason identity_not_allowed,
   at least 2 rotations per pod; the live view shows the refusal with its reason and both
   identities; no process the demo started is left running.
2. Ctrl-C (SIGINT) in the middle of a 60 s run: it stops early, still prints the summary, cleans up.
3. --keep: everything stays up and the printed commands work; then --stop removes it all.

Every wait is bounded; any process left over is killed at the end (and the test fails).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CONTROL_PLANE, PROXY, TRELLISCTL = (os.path.abspath(p) for p in sys.argv[1:4])


def find_demo():
    if len(sys.argv) > 4:
        return os.path.abspath(sys.argv[4])
    source_root = os.path.dirname(os.path.realpath(__file__))
    for _ in range(3):
        source_root = os.path.dirname(source_root)
    return os.path.join(source_root, "scripts", "lib", "demo.py")


DEMO = find_demo()
TMP = os.environ.get("TEST_TMPDIR") or tempfile.mkdtemp(prefix="demo_test.")
# The demo keeps its --keep state file in $TMPDIR: keep this test's apart from a user's demo.
os.environ["TMPDIR"] = TMP
FAILURES = []
FRONTEND = "spiffe://cluster.local/ns/demo/sa/frontend"
INTRUDER = "spiffe://cluster.local/ns/demo/sa/intruder"
CHECKOUT = "spiffe://cluster.local/ns/demo/sa/checkout"


def fail(message):
    print(f"FAIL: {message}", flush=True)
    FAILURES.append(message)


def check(condition, message):
    if not condition:
        fail(message)
    return bool(condition)


def demo_argv(work, *extra):
    return [sys.executable, DEMO, "--control-plane", CONTROL_PLANE, "--proxy", PROXY,
            "--trellisctl", TRELLISCTL, "--work-dir", work, "--color", "never", *extra]


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


def check_no_leftovers(work, when):
    deadline = time.monotonic() + 5
    left = leftovers(work)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(work)
    if check(not left, f"{when}: processes left running: {left}"):
        return
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
    return fe, it, rot


def run_short():
    work = os.path.join(TMP, "short")
    start = time.monotonic()
    try:
        done = subprocess.run(demo_argv(work, "--duration", "12"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired as err:
        fail(f"short run: no exit within 180 s; output so far:\n{err.stdout}")
        check_no_leftovers(work, "short run")
        return
    out = done.stdout
    print(f"--- short run: exit {done.returncode} after {time.monotonic() - start:.1f} s; output:\n{out}"
          f"{done.stderr}", flush=True)
    check(done.returncode == 0, f"short run: exit status {done.returncode}, want 0")
    check("network-namespace mode" in out.lower() and "trellis-init" in out,
          "short run: the output does not say that network-namespace mode arrives with trellis-init")
    check(re.search(r"^\[ *[\d.]+s\] frontend -> checkout +200 .*" + re.escape(FRONTEND) + " -> "
                    + re.escape(CHECKOUT), out, re.M),
          "short run: no live call line showing both identities (frontend -> checkout 200 ... mTLS)")
    refused = re.search(r"REFUSED by checkout's proxy: reason=identity_not_allowed\n +client "
                        + re.escape(INTRUDER) + r".*\n +server " + re.escape(CHECKOUT), out)
    check(refused, "short run: no live refusal line with reason identity_not_allowed and both identities")
    check(len(re.findall(r"^\[ *[\d.]+s\] rotated +checkout +certificate #\d+ +serial [0-9a-f]{8,}", out, re.M)) >= 2,
          "short run: fewer than 2 live rotation lines (with the new serial) for checkout")
    check_summary(out, 2, "short run")
    check(re.search(r"^  cleanup +all 7 processes stopped", out, re.M), "short run: no 'cleanup all 7 processes stopped'")
    check(re.search(r"^  result +PASS", out, re.M), "short run: no 'result PASS'")
    check_no_leftovers(work, "short run")


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
            if re.match(r"^\[ *[\d.]+s\] rotated ", line):
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
    check_no_leftovers(work, "ctrl-c run")


def run_keep():
    work = os.path.join(TMP, "keep")
    try:
        done = subprocess.run(demo_argv(work, "--duration", "3", "--keep"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        fail("keep run: no exit within 120 s")
        check_no_leftovers(work, "keep run")
        return
    out = done.stdout
    print(f"--- keep run: exit {done.returncode}; output:\n{out}{done.stderr}", flush=True)
    check(done.returncode == 0, f"keep run: exit status {done.returncode}, want 0")
    left = leftovers(work)
    check(len(left) == 7, f"keep run: {len(left)} processes running after --keep, want 7: {left}")
    check("scripts/demo --stop" in out, "keep run: the output does not say how to stop it")
    m = re.search(r"^  curl -s (http://127\.0\.0\.1:\d+/) +# a call as frontend", out, re.M)
    if check(m, "keep run: no curl command for a call as frontend"):
        try:
            with urllib.request.urlopen(m.group(1), timeout=5) as r:
                body = r.read().decode()
            check("checkout says hi" in body, f"keep run: the printed curl command got {body!r}")
        except OSError as err:
            fail(f"keep run: the printed curl command failed: {err}")
    m = re.search(r"^  curl -s (http://127\.0\.0\.1:\d+/certs)", out, re.M)
    if check(m, "keep run: no /certs command"):
        try:
            with urllib.request.urlopen(m.group(1), timeout=5) as r:
                check(CHECKOUT in r.read().decode(), "keep run: /certs does not show checkout's identity")
        except OSError as err:
            fail(f"keep run: /certs failed: {err}")
    stop = subprocess.run([sys.executable, DEMO, "--stop"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)
    print(f"--- --stop: exit {stop.returncode}; output:\n{stop.stdout}{stop.stderr}", flush=True)
    check(stop.returncode == 0, f"--stop: exit status {stop.returncode}")
    check("Stopped 7 processes" in stop.stdout, "--stop: does not report 7 processes stopped")
    check(not os.path.exists(work), f"--stop: {work} is still there")
    check_no_leftovers(work, "--stop")


def main():
    if not os.path.isfile(DEMO) or not os.path.isfile(os.path.join(os.path.dirname(DEMO), "demo_app.py")):
        print(f"FAIL: the demo's orchestrator is not at {DEMO} (with demo_app.py next to it)", flush=True)
        return 1
    print(f"demo: {DEMO}", flush=True)
    for name, test in (("short run", run_short), ("ctrl-c", run_ctrl_c), ("keep/stop", run_keep)):
        print(f"=== {name}", flush=True)
        try:
            test()
        except Exception as err:  # pylint: disable=broad-except
            fail(f"{name}: {type(err).__name__}: {err}")
    if FAILURES:
        print(f"\n{len(FAILURES)} failures:\n  " + "\n  ".join(FAILURES), flush=True)
        return 1
    print("\nPASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
