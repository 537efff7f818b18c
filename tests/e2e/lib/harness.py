"""What every process-level e2e test here needs: failures collected (not raised) so that one run
reports them all, the processes it started killed on exit or on a signal, bounded polling, and
the JSON log lines of a process read back.

Import it from a test run by Bazel with the directory on sys.path (see harness_path()):
    sys.path.insert(0, <dir of this file>); import harness
and list //tests/e2e/lib:harness.py in the test's data.
"""

import atexit
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

FAILURES = []   # messages of failed checks, in order
PROCESSES = []  # subprocess.Popen of everything started; killed by kill_all()
_PRINT_OK = [False]
_BEFORE_KILL = []


def print_ok(on=True):
    """Also print "ok: <message>" for every check that passes (a readable test log)."""
    _PRINT_OK[0] = on


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    FAILURES.append(message)


def check(condition, message):
    """Records a failure unless `condition`; returns it as a bool so callers can branch."""
    if condition:
        if _PRINT_OK[0]:
            print(f"ok: {message}", flush=True)
    else:
        fail(message)
    return bool(condition)


class Fatal(Exception):
    """A failure after which the rest of the test cannot run."""


def before_kill(hook):
    """Runs `hook` first in kill_all() (e.g. releasing requests a test server holds)."""
    _BEFORE_KILL.append(hook)


def kill_all():
    for hook in _BEFORE_KILL:
        hook()
    for proc in PROCESSES:
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=10)
            except Exception:  # pylint: disable=broad-except
                pass


def install_signal_handlers(hard_exit=False):
    """SIGTERM, SIGINT and SIGHUP (Bazel's timeout, Ctrl-C) kill every started process and exit
    128+signal; kill_all() also runs at exit. hard_exit: os._exit, for tests whose threads
    would block a normal exit."""
    def on_signal(signum, _frame):
        kill_all()
        if hard_exit:
            os._exit(128 + signum)  # pylint: disable=protected-access
        sys.exit(128 + signum)

    atexit.register(kill_all)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)


def wait_for(predicate, timeout, interval=0.1):
    """Polls predicate() until it returns a true value or timeout seconds pass; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def log_entries(log_path):
    """The JSON-object lines of a log file (other lines skipped); [] if it does not exist yet."""
    entries = []
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
    except FileNotFoundError:
        pass
    return entries


def http_get(port, endpoint, timeout=3.0):
    """GET http://127.0.0.1:PORT/endpoint; returns (status, body), or (None, error text)."""
    url = f"http://127.0.0.1:{port}{endpoint}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)
