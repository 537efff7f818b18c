#!/usr/bin/env python3
"""Runs the real trellis-control-plane process as an operator would, and checks what they notice.

Usage: process_test.py CONTROL_PLANE TRELLISCTL [MAIN_CC]

MAIN_CC is control-plane/main.cc, whose ABSL_FLAG definitions --help must document. Without it,
the file is found in the source tree this script's runfiles symlink points into.

Every wait is bounded; every started process is killed on any exit; all files live under
$TEST_TMPDIR. Ports come from the binary's :0 support (read back from the "listening" log line).
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

CONTROL_PLANE, TRELLISCTL = (os.path.abspath(p) for p in sys.argv[1:3])


def find_main_cc():
    if len(sys.argv) > 3:
        return os.path.abspath(sys.argv[3])
    # tests/e2e/control_plane/process_test.py -> the workspace root, three folders up.
    source_root = os.path.dirname(os.path.realpath(__file__))
    for _ in range(3):
        source_root = os.path.dirname(source_root)
    return os.path.join(source_root, "control-plane", "main.cc")


MAIN_CC = find_main_cc()
WORK = tempfile.mkdtemp(prefix="cp_process_test.", dir=os.environ.get("TEST_TMPDIR", "/tmp"))

# Start-up of an ASan build with a fresh serving certificate can take a while; the "within 5 s"
# promises below are the operator-visible ones and are not scaled.
STARTUP_TIMEOUT = 90.0
PROPAGATION_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0
SHUTDOWN_GRACE_SECONDS = 3
SPIFFE_SERVING_ID = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane"

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness  # noqa: E402 pylint: disable=wrong-import-position
from harness import (FAILURES, PROCESSES, Fatal, check, fail, kill_all,  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
                     log_entries, wait_for)
harness.install_signal_handlers()


def path(*parts):
    return os.path.join(WORK, *parts)


def run(args, timeout=COMMAND_TIMEOUT):
    """Runs a command to completion (bounded); returns (rc, stdout, stderr)."""
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout}s: {args}"
    return done.returncode, done.stdout, done.stderr


def trellisctl(*args):
    rc, out, err = run([TRELLISCTL, *args])
    if rc != 0:
        raise Fatal(f"trellisctl {' '.join(args)}: exit {rc}: {err}")
    return out


def write_file(file_path, text, mode=None):
    """Rewrites a file in place, as an editor would (same inode, new contents)."""
    with open(file_path, "w", encoding="utf-8") as f:
        f.write(text)
    if mode is not None:
        os.chmod(file_path, mode)


def log_lines(text):
    """Parses every stderr line as JSON; reports lines that are not JSON objects."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            entries.append({"__invalid__": line, "__error__": str(e), "__line__": number})
            continue
        if not isinstance(entry, dict):
            entries.append({"__invalid__": line, "__error__": "not an object", "__line__": number})
            continue
        entries.append(entry)
    return entries


def check_all_json(text, what):
    """Every line on stderr is a JSON object with ts, level, component and msg."""
    for entry in log_lines(text):
        if "__invalid__" in entry:
            # ASan/UBSan reports are not our log lines but still break the rule; show them.
            fail(f"{what}: stderr line {entry['__line__']} is not a JSON object "
                 f"({entry['__error__']}): {entry['__invalid__'][:300]}")
            continue
        for key in ("ts", "level", "component", "msg"):
            check(key in entry, f"{what}: log line without \"{key}\": {entry}")
        check(entry.get("level") in ("debug", "info", "warn", "error"),
              f"{what}: unexpected level in {entry}")


class ControlPlane:
    """One trellis-control-plane process; stderr goes to a file the test reads."""

    def __init__(self, name, args):
        self.name = name
        self.stderr_path = path(f"{name}.stderr")
        self.stdout_path = path(f"{name}.stdout")
        self.stderr_file = open(self.stderr_path, "wb")  # pylint: disable=consider-using-with
        self.stdout_file = open(self.stdout_path, "wb")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [CONTROL_PLANE, *args], stdin=subprocess.DEVNULL, stdout=self.stdout_file,
            stderr=self.stderr_file, env=dict(os.environ, TMPDIR=WORK))
        PROCESSES.append(self.proc)
        self.grpc_port = None
        self.admin_port = None

    def stderr(self):
        with open(self.stderr_path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()

    def logs(self):
        return [e for e in log_lines(self.stderr()) if "__invalid__" not in e]

    def find_log(self, predicate):
        for entry in self.logs():
            if predicate(entry):
                return entry
        return None

    def count_logs(self, predicate):
        return sum(1 for e in self.logs() if predicate(e))

    def wait_listening(self, timeout=STARTUP_TIMEOUT):
        def listening():
            if self.proc.poll() is not None:
                return "exited"
            return self.find_log(lambda e: e.get("msg") == "listening")

        entry = wait_for(listening, timeout)
        if entry == "exited":
            raise Fatal(f"{self.name}: exited with {self.proc.returncode} before listening:\n"
                        f"{self.stderr()}")
        if not entry:
            raise Fatal(f"{self.name}: no 'listening' log line within {timeout}s:\n{self.stderr()}")
        self.grpc_port = entry.get("grpc_port")
        self.admin_port = entry.get("admin_port")
        for key in ("grpc_port", "admin_port"):
            port = entry.get(key)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise Fatal(f"{self.name}: 'listening' line has no usable {key}: {entry}")
        check(self.grpc_port != self.admin_port, f"{self.name}: gRPC and admin on one port")
        return entry

    def get(self, endpoint, timeout=5.0):
        """GET http://127.0.0.1:ADMIN/endpoint; returns (status, body) or (None, error)."""
        return harness.http_get(self.admin_port, endpoint, timeout)

    def metrics(self):
        status, body = self.get("/metrics")
        if status != 200:
            return None
        values = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                fail(f"{self.name}: /metrics line is not 'name value': {line!r}")
        return values

    def metric(self, name):
        values = self.metrics()
        return None if values is None else values.get(name)

    def wait_metric(self, name, predicate, timeout=PROPAGATION_TIMEOUT):
        """Waits until predicate(value of metric `name`) holds; returns the last value."""
        last = [None]

        def holds():
            last[0] = self.metric(name)
            return last[0] is not None and predicate(last[0])

        wait_for(holds, timeout, interval=0.1)
        return last[0]

    def signal(self, signum):
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """SIGTERM, then SIGKILL if it does not go within the grace period and a margin."""
        self.signal(signal.SIGTERM)
        rc = self.wait_exit(SHUTDOWN_GRACE_SECONDS + 30)
        if rc is None:
            self.proc.kill()
            rc = self.wait_exit(10)
        self.stderr_file.close()
        self.stdout_file.close()
        return rc


def reloads(what, result):
    return f'trellis_cp_reloads_total{{what="{what}",result="{result}"}}'


def s_client(port, ca_file):
    """openssl s_client against the gRPC port, verifying the server against ca_file."""
    return run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2",
                "-servername", "localhost", "-CAfile", ca_file, "-verify_return_error",
                "-showcerts"], timeout=30)


def first_pem(text):
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return match.group(0) + "\n" if match else None


def check_serving_tls(cp, ca_dir, trust_domain="cluster.local"):
    """The gRPC port serves TLS (ALPN h2) with a certificate from the mesh CA naming us."""
    roots = os.path.join(ca_dir, "roots.crt")
    rc, out, err = s_client(cp.grpc_port, roots)
    if not check(rc == 0, f"{cp.name}: openssl s_client -verify_return_error failed (exit {rc}): "
                 f"{err[-2000:]}"):
        return
    check("Verify return code: 0 (ok)" in out, f"{cp.name}: s_client did not verify: {out[-2000:]}")
    check("ALPN protocol: h2" in out, f"{cp.name}: the gRPC port did not negotiate ALPN h2")
    leaf = first_pem(out)
    if not check(leaf, f"{cp.name}: s_client showed no certificate"):
        return
    leaf_path = path(f"{cp.name}.serving.pem")
    write_file(leaf_path, leaf)
    rc, san, err = run(["openssl", "x509", "-in", leaf_path, "-noout", "-ext", "subjectAltName"])
    check(rc == 0, f"{cp.name}: openssl x509 -ext subjectAltName failed: {err}")
    serving_id = f"spiffe://{trust_domain}/ns/trellis-system/sa/trellis-control-plane"
    check(f"URI:{serving_id}" in san, f"{cp.name}: serving certificate SAN lacks URI:{serving_id}: {san}")
    check("DNS:localhost" in san, f"{cp.name}: serving certificate SAN lacks DNS:localhost: {san}")
    check(san.count("URI:") == 1, f"{cp.name}: an X.509-SVID has exactly one URI SAN: {san}")
    # It chains to the mesh root through the signing CA.
    untrusted = os.path.join(ca_dir, "ca.crt")
    rc, out, err = run(["openssl", "verify", "-CAfile", roots, "-untrusted", untrusted, leaf_path])
    check(rc == 0 and out.strip().endswith(": OK"),
          f"{cp.name}: serving certificate does not chain to the mesh root: {out} {err}")


# ---------------------------------------------------------------------------------------------


def test_help():
    rc, out, err = run([CONTROL_PLANE, "--help"])
    check(rc == 0, f"--help: exit {rc}, want 0; stderr: {err[-1000:]}")
    text = out + err
    try:
        with open(MAIN_CC, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        fail(f"cannot read control-plane/main.cc to list its flags ({e}); pass it as 4th argument")
        return []
    # ABSL_FLAG(type, name, default, "help" "help"...);
    flags = re.findall(r"ABSL_FLAG\(\s*[\w:<>\s]+?,\s*(\w+)\s*,", source)
    check(len(flags) >= 20, f"found only {len(flags)} ABSL_FLAG definitions in {MAIN_CC}: {flags}")
    for name in flags:
        if not check(f"--{name}" in text, f"--help does not mention --{name}"):
            continue
        # absl prints "--name (help text); default: ...": a flag with empty help shows "()".
        match = re.search(rf"--{name} \((.*?)\); default:", text, re.S)
        check(match and match.group(1).strip(),
              f"--help shows no help text for --{name}: "
              f"{text[text.find('--' + name):][:200]!r}")
    check("--flagfile" in text, "--help does not mention --flagfile")
    check("SIGHUP" in text and "SIGTERM" in text, "--help does not explain the signals")
    return flags


def test_start_errors(ca_dir):
    # A missing --ca_dir.
    rc, _, err = run([CONTROL_PLANE, "--grpc_address=127.0.0.1:0", "--admin_address=127.0.0.1:0"])
    check(rc not in (0, None), f"no --ca_dir: exit {rc}, want non-zero")
    check("--ca_dir" in err, f"no --ca_dir: stderr does not name --ca_dir: {err}")
    check_all_json(err, "no --ca_dir")

    # ca.key readable by others.
    loose = path("ca-loose")
    trellisctl("ca", "init", "--dir", loose)
    os.chmod(os.path.join(loose, "ca.key"), 0o644)
    rc, _, err = run([CONTROL_PLANE, f"--ca_dir={loose}", "--grpc_address=127.0.0.1:0",
                      "--admin_address=127.0.0.1:0", f"--state_dir={path('state-loose')}"])
    check(rc not in (0, None), f"ca.key mode 644: exit {rc}, want non-zero")
    check("chmod 600" in err, f"ca.key mode 644: stderr does not say chmod 600: {err}")
    check_all_json(err, "ca.key mode 644")

    # A CA directory that does not exist.
    rc, _, err = run([CONTROL_PLANE, f"--ca_dir={path('no-such-ca')}", "--grpc_address=127.0.0.1:0",
                      "--admin_address=127.0.0.1:0"])
    check(rc not in (0, None), f"missing CA directory: exit {rc}, want non-zero")
    check("ca.crt" in err or "no-such-ca" in err, f"missing CA directory: unhelpful error: {err}")
    check_all_json(err, "missing CA directory")

    # An unknown flag.
    rc, _, err = run([CONTROL_PLANE, f"--ca_dir={ca_dir}", "--no_such_flag=1"])
    check(rc not in (0, None), f"unknown flag: exit {rc}, want non-zero")
    check("no_such_flag" in err, f"unknown flag: stderr does not name it: {err}")


def test_lifecycle(ca_dir, tokens_file):
    deny_file = path("deny-list.txt")
    write_file(deny_file, "# Revoked certificates and identities, one per line.\n")
    state_dir = path("state")
    os.mkdir(state_dir)
    cp = ControlPlane("cp", [
        f"--ca_dir={ca_dir}", f"--join_tokens_file={tokens_file}", f"--deny_list_file={deny_file}",
        "--grpc_address=127.0.0.1:0", "--admin_address=127.0.0.1:0", f"--state_dir={state_dir}",
        f"--shutdown_grace={SHUTDOWN_GRACE_SECONDS}s"])
    try:
        listening = cp.wait_listening()
        check(listening.get("join_tokens") is True, f"'listening' says join tokens are off: {listening}")

        # --- probes and metrics ---
        status, body = cp.get("/ready")
        check(status == 200 and body.strip() == "ready", f"/ready: {status} {body!r}, want 200 ready")
        status, body = cp.get("/live")
        check(status == 200, f"/live: {status} {body!r}, want 200")
        status, body = cp.get("/no-such-endpoint")
        check(status == 404, f"/no-such-endpoint: {status}, want 404")
        status, text = cp.get("/metrics")
        check(status == 200, f"/metrics: {status}")
        check("# TYPE trellis_cp_issuances_total counter" in text,
              "/metrics lacks the trellis_cp_issuances_total counter family")
        check(re.search(r'^trellis_cp_issuances_total\{result="ok",authenticator="join_token"\} 0$',
                        text, re.M), "/metrics lacks trellis_cp_issuances_total{result=ok,...} 0")
        metrics = cp.metrics()
        check(metrics.get("trellis_cp_trust_bundle_roots") == 1,
              f"trellis_cp_trust_bundle_roots = {metrics.get('trellis_cp_trust_bundle_roots')}, want 1")
        check(metrics.get("trellis_cp_deny_list_entries") == 0,
              f"trellis_cp_deny_list_entries = {metrics.get('trellis_cp_deny_list_entries')}, want 0")
        check((metrics.get("trellis_cp_ca_expiration_timestamp_seconds") or 0) > time.time(),
              "trellis_cp_ca_expiration_timestamp_seconds is not in the future")
        check(metrics.get("trellis_cp_issuances_in_flight") == 0
              and re.search(r'^trellis_cp_issuances_waiting\{kind="renewal"\} 0$', text, re.M),
              "/metrics shows the admission queue (in flight 0, waiting renewals 0)")

        # --- the gRPC port: TLS from our own CA ---
        check_serving_tls(cp, ca_dir)
        serving_files = os.listdir(state_dir)
        check(serving_files, "--state_dir holds no serving certificate")
        for name in serving_files:
            if "key" in name:
                mode = os.stat(os.path.join(state_dir, name)).st_mode & 0o777
                check(mode & 0o077 == 0, f"serving key {name} has mode {oct(mode)}, want 0600")

        # --- a deny-list edit is picked up ---
        ok_before = cp.metric(reloads("deny_list", "ok"))
        write_file(deny_file, "# Revoked certificates and identities, one per line.\n"
                              "serial:3f:9a:01:c2\n")
        entries = cp.wait_metric("trellis_cp_deny_list_entries", lambda v: v == 1)
        check(entries == 1, f"deny-list edit: trellis_cp_deny_list_entries = {entries} after "
                            f"{PROPAGATION_TIMEOUT}s, want 1")
        ok_after = cp.wait_metric(reloads("deny_list", "ok"), lambda v: v > ok_before)
        check(ok_after is not None and ok_after > ok_before,
              f"deny-list edit: reloads ok counter {ok_before} -> {ok_after}, want an increase")
        check(cp.find_log(lambda e: e.get("msg") == "deny-list loaded" and e.get("serials") == 1),
              "deny-list edit: no 'deny-list loaded' log line with serials 1")

        # --- a broken deny-list edit keeps the old list ---
        check(cp.metric(reloads("deny_list", "error")) == 0, "deny-list reload errors before a bad edit")
        write_file(deny_file, "serial:3f9a01c2\nspiffe://cluster.local/ns/a/sa/b\nrevoke everything\n")
        errors = cp.wait_metric(reloads("deny_list", "error"), lambda v: v >= 1)
        check(errors == 1, f"bad deny-list edit: reloads error counter = {errors}, want 1")
        time.sleep(1.5)  # a reload or two later, still the old list and still one error
        check(cp.metric("trellis_cp_deny_list_entries") == 1,
              "bad deny-list edit: the old list (1 entry) did not stay in force")
        check(cp.metric(reloads("deny_list", "error")) == 1,
              "bad deny-list edit: the error is counted more than once for one edit")
        entry = cp.find_log(lambda e: e.get("level") == "error" and "deny" in e.get("msg", ""))
        if check(entry, "bad deny-list edit: no error log line"):
            check(entry.get("file") == deny_file, f"deny-list error log does not name the file: {entry}")
            check("line 3" in json.dumps(entry), f"deny-list error log does not name line 3: {entry}")
        status, _ = cp.get("/ready")
        check(status == 200, f"/ready after a bad deny-list edit: {status}")
        # Fixing it recovers.
        write_file(deny_file, "serial:3f9a01c2\nspiffe://cluster.local/ns/a/sa/b\n")
        entries = cp.wait_metric("trellis_cp_deny_list_entries", lambda v: v == 2)
        check(entries == 2, f"fixed deny-list: entries = {entries}, want 2")

        # --- root rotation: prepare publishes a second root ---
        ca_ok_before = cp.metric(reloads("ca", "ok"))
        trellisctl("ca", "rotate", "prepare", "--dir", ca_dir)
        roots = cp.wait_metric("trellis_cp_trust_bundle_roots", lambda v: v == 2)
        check(roots == 2, f"after `ca rotate prepare`: trellis_cp_trust_bundle_roots = {roots} "
                          f"after {PROPAGATION_TIMEOUT}s, want 2")
        check((cp.metric(reloads("ca", "ok")) or 0) > ca_ok_before,
              "after `ca rotate prepare`: CA reload ok counter did not increase")
        # The serving certificate still verifies against the new bundle (old root still there).
        check_serving_tls(cp, ca_dir)

        # --- SIGHUP: an immediate reload ---
        def sighup_lines():
            return cp.count_logs(lambda e: "SIGHUP" in e.get("msg", ""))

        hups_before = sighup_lines()
        ca_ok_before = cp.metric(reloads("ca", "ok"))
        cp.signal(signal.SIGHUP)
        check(wait_for(lambda: sighup_lines() > hups_before, PROPAGATION_TIMEOUT),
              "SIGHUP: no reload log line within 5s")
        after = cp.wait_metric(reloads("ca", "ok"), lambda v: v > ca_ok_before, timeout=2.0)
        check(after is not None and after > ca_ok_before,
              f"SIGHUP: the CA was not reloaded (reloads ok {ca_ok_before} -> {after})")
        check(cp.proc.poll() is None, "SIGHUP killed the process")

        # --- a corrupt ca.key: keep serving with the previous CA ---
        key_path = os.path.join(ca_dir, "ca.key")
        with open(key_path, encoding="utf-8") as f:
            good_key = f.read()
        key_body = [line for line in good_key.splitlines() if line and not line.startswith("-----")]
        ca_errors_before = cp.metric(reloads("ca", "error"))
        # Truncated in the middle of the base64, as a botched copy would leave it.
        write_file(key_path, good_key[:len(good_key) // 2] + "\n", mode=0o600)
        errors = cp.wait_metric(reloads("ca", "error"), lambda v: v > ca_errors_before)
        check(errors is not None and errors > ca_errors_before,
              f"corrupt ca.key: CA reload error counter {ca_errors_before} -> {errors}, want +1")
        status, body = cp.get("/ready")
        check(status == 200, f"/ready with a corrupt ca.key: {status} {body!r}, want 200")
        check(cp.proc.poll() is None, "a corrupt ca.key killed the process")
        check(cp.metric("trellis_cp_trust_bundle_roots") == 2,
              "a corrupt ca.key changed the published bundle")
        entry = cp.find_log(lambda e: e.get("level") == "error" and "CA" in e.get("msg", ""))
        if check(entry, "corrupt ca.key: no error log line"):
            check(ca_dir in json.dumps(entry) or "ca.key" in json.dumps(entry),
                  f"corrupt ca.key: error log names neither the directory nor the file: {entry}")
        # No key bytes in the log: no line of the key's base64, nor any 16-character piece of it.
        log_text = cp.stderr()
        body = "".join(key_body)
        leaked = [body[i:i + 16] for i in range(0, len(body) - 16, 8) if body[i:i + 16] in log_text]
        check(not leaked, f"corrupt ca.key: key bytes appear in the log: {leaked[:3]}")
        check("-----BEGIN" not in log_text, "a PEM block appears in the log")
        check_serving_tls(cp, ca_dir)
        # A valid key that is not ca.crt's: refused too, without its bytes in the log.
        other = path("other.key")
        rc, _, err = run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                          "ec_paramgen_curve:P-256", "-out", other])
        if check(rc == 0, f"openssl genpkey: {err}"):
            with open(other, encoding="utf-8") as f:
                other_key = f.read()
            errors_before = cp.metric(reloads("ca", "error"))
            write_file(key_path, other_key, mode=0o600)
            errors = cp.wait_metric(reloads("ca", "error"), lambda v: v > errors_before)
            check(errors is not None and errors > errors_before,
                  "a ca.key that does not match ca.crt was not refused")
            other_body = "".join(l for l in other_key.splitlines() if not l.startswith("-----"))
            check(other_body[10:40] not in cp.stderr(), "the mismatched key's bytes appear in the log")
            check(cp.get("/ready")[0] == 200, "/ready with a mismatched ca.key")
        # Restoring the key recovers.
        ok_before = cp.metric(reloads("ca", "ok"))
        write_file(key_path, good_key, mode=0o600)
        after = cp.wait_metric(reloads("ca", "ok"), lambda v: v > ok_before)
        check(after is not None and after > ok_before, "restoring ca.key: no successful reload")

        # --- activate: the live control plane switches to the new CA, serving cert included ---
        new_root = path("new-root.pem")
        with open(os.path.join(ca_dir, "next", "root.crt"), encoding="utf-8") as f:
            write_file(new_root, f.read())
        def serving_verifies(ca_file):
            rc, _, _ = s_client(cp.grpc_port, ca_file)
            return rc == 0

        # Before activation the serving certificate comes from the old CA: a client that trusts
        # only the new root refuses it (the control plane logs the failed handshake).
        check(not serving_verifies(new_root),
              "before activate: the serving certificate verifies against the new root alone")
        check(cp.proc.poll() is None, "a refused TLS handshake killed the process")
        trellisctl("ca", "rotate", "activate", "--dir", ca_dir)
        changed = wait_for(lambda: cp.find_log(lambda e: e.get("msg") == "CA reloaded"
                                               and e.get("signing_ca_changed") is True),
                           PROPAGATION_TIMEOUT)
        check(changed, "after `ca rotate activate`: no 'CA reloaded' log with signing_ca_changed")

        # The serving certificate is re-issued by the new CA and the TLS port picks it up.
        check(wait_for(lambda: serving_verifies(new_root), 2 * PROPAGATION_TIMEOUT, interval=0.5),
              "after activate: the gRPC port does not serve a certificate from the new root "
              f"within {2 * PROPAGATION_TIMEOUT}s")
        check(cp.metric("trellis_cp_trust_bundle_roots") == 2, "activate must keep both roots")
        # retire --force: the bundle shrinks to the new root, and TLS still verifies with it.
        trellisctl("ca", "rotate", "retire", "--dir", ca_dir, "--force")
        roots = cp.wait_metric("trellis_cp_trust_bundle_roots", lambda v: v == 1)
        check(roots == 1, f"after retire: trellis_cp_trust_bundle_roots = {roots}, want 1")
        check_serving_tls(cp, ca_dir)
        check(cp.get("/ready")[0] == 200, "/ready after a full rotation")

        # --- SIGTERM: stop being ready, exit 0, say so ---
        cp.signal(signal.SIGTERM)
        saw = wait_for(lambda: cp.proc.poll() is not None or cp.get("/ready", timeout=1)[0] == 503,
                       SHUTDOWN_GRACE_SECONDS + 5)
        check(saw, "SIGTERM: neither /ready 503 nor an exit within the grace period")
        rc = cp.wait_exit(SHUTDOWN_GRACE_SECONDS + 30)
        check(rc == 0, f"SIGTERM: exit code {rc}, want 0; stderr tail: {cp.stderr()[-3000:]}")
        check(cp.find_log(lambda e: e.get("msg") == "stopped"), "SIGTERM: no 'stopped' log line")
    finally:
        rc = cp.stop()
        check_all_json(cp.stderr(), "control plane")


def test_flagfile(trellisctl_dir_unused=None):
    """--flagfile with the settings works like the flags."""
    ca_dir = path("ca-flagfile")
    trellisctl("ca", "init", "--dir", ca_dir, "--trust-domain", "example.org")
    deny_file = path("flagfile-deny.txt")
    write_file(deny_file, "spiffe://example.org/ns/bad/sa/bad\nserial:01\nserial:02\n")
    state_dir = path("state-flagfile")
    os.mkdir(state_dir)
    config = path("control-plane.flags")
    write_file(config, "\n".join([
        f"--ca_dir={ca_dir}",
        "--trust_domain=example.org",
        "--grpc_address=127.0.0.1:0",
        "--admin_address=127.0.0.1:0",
        f"--deny_list_file={deny_file}",
        f"--state_dir={state_dir}",
        "--dns_names=localhost,cp.example.org",
        "--shutdown_grace=2s",
        "--log_level=info",
    ]) + "\n")
    cp = ControlPlane("cp-flagfile", [f"--flagfile={config}"])
    try:
        cp.wait_listening()
        entry = cp.find_log(lambda e: e.get("msg") == "listening")
        check(entry.get("trust_domain") == "example.org",
              f"--flagfile: trust domain not applied: {entry}")
        check(cp.metric("trellis_cp_deny_list_entries") == 3,
              "--flagfile: the deny-list file was not loaded (want 3 entries)")
        check(cp.get("/ready")[0] == 200, "--flagfile: /ready is not 200")
        check_serving_tls(cp, ca_dir, trust_domain="example.org")
        rc, out, _ = s_client(cp.grpc_port, os.path.join(ca_dir, "roots.crt"))
        leaf = first_pem(out or "")
        if leaf:
            write_file(path("flagfile-leaf.pem"), leaf)
            _, san, _ = run(["openssl", "x509", "-in", path("flagfile-leaf.pem"), "-noout", "-ext",
                             "subjectAltName"])
            check("DNS:cp.example.org" in san, f"--flagfile: --dns_names not applied: {san}")
        check(os.listdir(state_dir), "--flagfile: --state_dir not used")
        rc = cp.stop()
        check(rc == 0, f"--flagfile: exit {rc} after SIGTERM, want 0")
    finally:
        cp.stop()
        check_all_json(cp.stderr(), "control plane (--flagfile)")


def main():
    rc, _, _ = run(["openssl", "version"])
    if rc != 0:
        print("FAIL: openssl is not on PATH: install openssl (scripts/test does)", file=sys.stderr)
        return 1
    try:
        test_help()
        ca_dir = path("ca")
        trellisctl("ca", "init", "--dir", ca_dir)
        tokens_file = path("join-tokens.json")
        token = trellisctl("join-token", "create", "--file", tokens_file, "--name", "vm-1",
                           "--spiffe-id", "spiffe://cluster.local/vm/one").strip()
        check(token.startswith("trellis-join-"), f"unexpected join token {token!r}")
        test_start_errors(ca_dir)
        test_lifecycle(ca_dir, tokens_file)
        test_flagfile()
    except Fatal as e:
        fail(str(e))
    finally:
        kill_all()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
