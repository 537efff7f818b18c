#!/bin/bash
# Runs the built trellisctl through a whole root rotation of a CA directory, as an operator would:
# ca init, then `ca rotate status / prepare / activate / retire`, checking every step's files with
# the openssl command-line tool, and the usage errors.
set -u

TRELLISCTL="$1"
command -v openssl >/dev/null 2>&1 || {
  echo "FAIL: openssl is not on PATH: install openssl (scripts/test does)" >&2
  exit 1
}
TEST_NAME=ca_rotate_test
# shellcheck source=tests/cli/cli_test_lib.sh
. "$(dirname "$0")/cli_test_lib.sh"

# Number of certificates in a PEM file.
cert_count() { grep -c -- "-----BEGIN CERTIFICATE-----" "$1"; }

# Number of certificates as openssl parses them (so a garbled PEM block does not count).
openssl_cert_count() {
  openssl crl2pkcs7 -nocrl -certfile "$1" 2>/dev/null | openssl pkcs7 -print_certs -noout 2>/dev/null |
    grep -c "subject"
}

# Lowercase SHA-256 of a certificate's DER, as `ca rotate status` abbreviates it.
sha256_of() { openssl x509 -in "$1" -outform DER | sha256sum | cut -c1-16; }

# The roots listed by `ca rotate status` (indented lines under "roots:").
status_root_count() { grep -c '^  .*(sha256 ' "$WORK/out"; }

# verifies CAFILE CERT: true if openssl verifies CERT against CAFILE alone.
verifies() {
  case "$(openssl verify -CAfile "$1" "$2" 2>&1)" in
    *": OK") return 0 ;;
    *) return 1 ;;
  esac
}

CA="$WORK/ca"

# --- setup: a fresh CA ---
run ca init --dir "$CA"
expect_rc 0 "ca init"
cp "$CA/roots.crt" "$WORK/old_root.pem"
cp "$CA/ca.crt" "$WORK/old_ca.crt"
cp "$CA/ca.key" "$WORK/old_ca.key"
cp "$CA/root.key" "$WORK/old_root.key"
OLD_ROOT_SHA="$(sha256_of "$WORK/old_root.pem")"

# --- status: idle, one root, chains to it ---
run ca rotate status --dir "$CA"
expect_rc 0 "status after init"
grep -qE '^step: +idle$' "$WORK/out" || fail "status after init: step is not idle: $(cat "$WORK/out")"
[ "$(status_root_count)" = "1" ] || fail "status after init: want 1 root listed, got: $(cat "$WORK/out")"
grep -E '^chains to:' "$WORK/out" | grep -qF "$OLD_ROOT_SHA" ||
  fail "status after init: 'chains to' is not the root ($OLD_ROOT_SHA): $(cat "$WORK/out")"

# --- steps out of order are refused and change nothing ---
run ca rotate activate --dir "$CA"
expect_rc 1 "activate before prepare"
expect_in "$WORK/err" "prepare" "activate before prepare says to prepare first"
run ca rotate retire --dir "$CA" --force
expect_rc 1 "retire before prepare"
cmp -s "$CA/ca.crt" "$WORK/old_ca.crt" || fail "a refused step changed ca.crt"
cmp -s "$CA/roots.crt" "$WORK/old_root.pem" || fail "a refused step changed roots.crt"

# --- prepare: two roots published, the new CA waits in next/ ---
run ca rotate prepare --dir "$CA"
expect_rc 0 "prepare"
[ "$(cert_count "$CA/roots.crt")" = "2" ] ||
  fail "prepare: roots.crt has $(cert_count "$CA/roots.crt") PEM certificates, want 2"
[ "$(openssl_cert_count "$CA/roots.crt")" = "2" ] ||
  fail "prepare: openssl reads $(openssl_cert_count "$CA/roots.crt") certificates in roots.crt, want 2"
[ "$(mode_of "$CA/roots.crt")" = "644" ] || fail "prepare: roots.crt mode $(mode_of "$CA/roots.crt"), want 644"
for f in root.key ca.key; do
  if [ ! -f "$CA/next/$f" ]; then
    fail "prepare: next/$f missing"
  elif [ "$(mode_of "$CA/next/$f")" != "600" ]; then
    fail "prepare: next/$f mode $(mode_of "$CA/next/$f"), want 600"
  fi
done
for f in root.crt ca.crt; do
  [ -f "$CA/next/$f" ] || fail "prepare: next/$f missing"
done
cmp -s "$CA/ca.crt" "$WORK/old_ca.crt" || fail "prepare changed the signing CA (ca.crt)"
cmp -s "$CA/ca.key" "$WORK/old_ca.key" || fail "prepare changed the signing key (ca.key)"
# The old root is still the first one; the new root is the one in next/.
cp "$CA/next/root.crt" "$WORK/new_root.pem"
NEW_ROOT_SHA="$(sha256_of "$WORK/new_root.pem")"
[ "$NEW_ROOT_SHA" != "$OLD_ROOT_SHA" ] || fail "prepare: the new root is the old one"
openssl x509 -in "$WORK/new_root.pem" -noout -text | grep -q "CA:TRUE" || fail "next/root.crt is not a CA"
verifies "$WORK/new_root.pem" "$CA/next/ca.crt" || fail "next/ca.crt does not chain to next/root.crt"
[ "$(openssl x509 -in "$CA/next/ca.crt" -noout -pubkey)" = "$(openssl pkey -in "$CA/next/ca.key" -pubout)" ] ||
  fail "next/ca.key does not match next/ca.crt"
verifies "$CA/roots.crt" "$CA/ca.crt" || fail "after prepare, ca.crt no longer verifies against roots.crt"
verifies "$CA/roots.crt" "$CA/next/ca.crt" || fail "after prepare, next/ca.crt does not verify against roots.crt"

run ca rotate status --dir "$CA"
expect_rc 0 "status after prepare"
grep -qE '^step: +prepared$' "$WORK/out" || fail "status after prepare: step: $(cat "$WORK/out")"
[ "$(status_root_count)" = "2" ] || fail "status after prepare: want 2 roots listed: $(cat "$WORK/out")"
grep -E '^chains to:' "$WORK/out" | grep -qF "$OLD_ROOT_SHA" ||
  fail "status after prepare: the signing CA should still chain to the old root: $(cat "$WORK/out")"

# --- prepare again: refused, says to activate, changes nothing ---
cp "$CA/roots.crt" "$WORK/prepared_roots.pem"
run ca rotate prepare --dir "$CA"
expect_rc 1 "second prepare"
expect_in "$WORK/err" "activate" "second prepare says to activate"
[ -s "$WORK/out" ] && fail "second prepare printed on stdout: $(cat "$WORK/out")"
cmp -s "$CA/roots.crt" "$WORK/prepared_roots.pem" || fail "second prepare changed roots.crt"
cmp -s "$CA/next/root.crt" "$WORK/new_root.pem" || fail "second prepare changed next/root.crt"

# --- activate: sign with the new intermediate, keep the old CA in previous/ ---
run ca rotate activate --dir "$CA"
expect_rc 0 "activate"
verifies "$WORK/new_root.pem" "$CA/ca.crt" || fail "after activate, ca.crt does not verify against the NEW root alone"
verifies "$WORK/old_root.pem" "$CA/ca.crt" && fail "after activate, ca.crt still verifies against the OLD root"
verifies "$CA/roots.crt" "$CA/ca.crt" || fail "after activate, ca.crt does not verify against roots.crt"
[ "$(openssl x509 -in "$CA/ca.crt" -noout -pubkey)" = "$(openssl pkey -in "$CA/ca.key" -pubout)" ] ||
  fail "after activate, ca.key does not match ca.crt"
[ "$(mode_of "$CA/ca.key")" = "600" ] || fail "after activate, ca.key mode $(mode_of "$CA/ca.key"), want 600"
[ "$(cert_count "$CA/roots.crt")" = "2" ] || fail "activate must keep both roots until retire"
cmp -s "$CA/previous/ca.crt" "$WORK/old_ca.crt" || fail "previous/ca.crt is not the old ca.crt"
cmp -s "$CA/previous/ca.key" "$WORK/old_ca.key" || fail "previous/ca.key is not the old ca.key"
[ -f "$CA/previous/ca.key" ] && [ "$(mode_of "$CA/previous/ca.key")" != "600" ] &&
  fail "previous/ca.key mode $(mode_of "$CA/previous/ca.key"), want 600"
cmp -s "$CA/previous/root.key" "$WORK/old_root.key" || fail "previous/root.key is not the old root key"
[ -f "$CA/root.key" ] && [ "$(mode_of "$CA/root.key")" != "600" ] && fail "root.key mode after activate"
[ "$(openssl x509 -in "$WORK/new_root.pem" -noout -pubkey)" = "$(openssl pkey -in "$CA/root.key" -pubout)" ] ||
  fail "after activate, root.key is not the new root's key (the summary says it is)"
[ -e "$CA/next" ] && fail "after activate, next/ still exists: $(ls -la "$CA/next")"

run ca rotate status --dir "$CA"
expect_rc 0 "status after activate"
grep -qE '^step: +activated$' "$WORK/out" || fail "status after activate: step: $(cat "$WORK/out")"
grep -E '^chains to:' "$WORK/out" | grep -qF "$NEW_ROOT_SHA" ||
  fail "status after activate: 'chains to' is not the new root ($NEW_ROOT_SHA): $(cat "$WORK/out")"
grep -q '^activated at: ' "$WORK/out" || fail "status after activate does not say when: $(cat "$WORK/out")"

run ca rotate activate --dir "$CA"
expect_rc 1 "second activate"
run ca rotate prepare --dir "$CA"
expect_rc 1 "prepare while activated"
expect_in "$WORK/err" "retire" "prepare while activated says to retire first"

# --- retire without --force: refused until activation + --max-ttl, naming that time ---
cp "$CA/roots.crt" "$WORK/activated_roots.pem"
run ca rotate retire --dir "$CA"
expect_rc 1 "retire without --force"
expect_in "$WORK/err" "--force" "retire without --force says how to override"
# The time is activation + 24h (the default --max-ttl): tomorrow, in local time or UTC.
TOMORROW_LOCAL="$(date -d '+24 hours' +%Y-%m-%d)"
TOMORROW_UTC="$(date -u -d '+24 hours' +%Y-%m-%d)"
grep -qE "($TOMORROW_LOCAL|$TOMORROW_UTC)[T ][0-9]{2}:[0-9]{2}" "$WORK/err" ||
  fail "retire without --force does not name the time (~$TOMORROW_UTC) it becomes safe: $(cat "$WORK/err")"
cmp -s "$CA/roots.crt" "$WORK/activated_roots.pem" || fail "a refused retire changed roots.crt"
run ca rotate retire --dir "$CA" --max-ttl 1h
expect_rc 1 "retire --max-ttl 1h right after activate"
run ca rotate retire --dir "$CA" --max-ttl forever
expect_rc 2 "retire --max-ttl garbage"
expect_in "$WORK/err" "--max-ttl" "bad --max-ttl message names the flag"

# --- retire --force: exactly the new root remains ---
run ca rotate retire --dir "$CA" --force
expect_rc 0 "retire --force"
[ "$(cert_count "$CA/roots.crt")" = "1" ] ||
  fail "retire: roots.crt has $(cert_count "$CA/roots.crt") certificates, want 1"
[ "$(openssl_cert_count "$CA/roots.crt")" = "1" ] || fail "retire: openssl does not read exactly 1 root"
[ "$(sha256_of "$CA/roots.crt")" = "$NEW_ROOT_SHA" ] || fail "retire kept the wrong root"
verifies "$CA/roots.crt" "$CA/ca.crt" || fail "after retire, ca.crt does not verify against roots.crt"
[ "$(mode_of "$CA/roots.crt")" = "644" ] || fail "after retire, roots.crt mode $(mode_of "$CA/roots.crt")"

run ca rotate status --dir "$CA"
expect_rc 0 "status after retire"
grep -qE '^step: +idle$' "$WORK/out" || fail "status after retire: step is not idle: $(cat "$WORK/out")"
[ "$(status_root_count)" = "1" ] || fail "status after retire: want 1 root: $(cat "$WORK/out")"

# --- a second rotation from here works the same (roots of the same name, told apart by key) ---
run ca rotate prepare --dir "$CA" --root-ttl 1000h --intermediate-ttl 100h
expect_rc 0 "prepare of a second rotation"
[ "$(cert_count "$CA/roots.crt")" = "2" ] || fail "second rotation: roots.crt does not have 2 roots"
cp "$CA/next/root.crt" "$WORK/third_root.pem"
NOT_AFTER="$(date -d "$(openssl x509 -in "$WORK/third_root.pem" -noout -enddate | sed 's/notAfter=//')" +%s)"
WANT=$(($(date +%s) + 1000 * 3600))
[ $((NOT_AFTER - WANT)) -lt 600 ] && [ $((WANT - NOT_AFTER)) -lt 600 ] ||
  fail "prepare --root-ttl 1000h: the new root expires at $NOT_AFTER, want about $WANT"
run ca rotate activate --dir "$CA"
expect_rc 0 "activate of a second rotation"
verifies "$WORK/third_root.pem" "$CA/ca.crt" || fail "second rotation: ca.crt does not verify against the third root"
verifies "$WORK/new_root.pem" "$CA/ca.crt" && fail "second rotation: ca.crt still verifies against the second root"
verifies "$CA/roots.crt" "$CA/ca.crt" || fail "second rotation: ca.crt does not verify against roots.crt (2 roots)"
run ca rotate retire --dir "$CA" --max-ttl 1h
expect_rc 1 "retire --max-ttl 1h right after the second activation"
sleep 2
run ca rotate retire --dir "$CA" --max-ttl 1s
expect_rc 0 "retire --max-ttl 1s once it has passed, without --force"
[ "$(cert_count "$CA/roots.crt")" = "1" ] && [ "$(sha256_of "$CA/roots.crt")" = "$(sha256_of "$WORK/third_root.pem")" ] ||
  fail "second rotation: retire did not leave exactly the third root"

# --- usage errors exit 2 ---
run ca rotate bogus --dir "$CA"
expect_rc 2 "unknown step"
expect_in "$WORK/err" "unknown step \"bogus\"" "unknown step message"
run ca rotate bogus
expect_rc 2 "unknown step without --dir"
run ca rotate status
expect_rc 2 "missing --dir"
expect_in "$WORK/err" "--dir is required" "missing --dir message"
run ca rotate prepare
expect_rc 2 "prepare without --dir"
run ca rotate status --dir "$CA" --bogus
expect_rc 2 "unknown flag"
expect_in "$WORK/err" "--bogus" "unknown flag message"
run ca rotate prepare --dir "$WORK/z" --root-ttl soon
expect_rc 2 "bad --root-ttl"
run ca rotate
expect_rc 2 "no step"
[ -e "$WORK/z" ] && fail "a usage error created a directory"
run ca rotate status --dir "$WORK/nonexistent"
expect_rc 1 "status of a missing CA directory"
[ -s "$WORK/err" ] || fail "status of a missing CA directory printed no error"

# --- help ---
for args in "ca rotate --help" "ca rotate -h" "ca rotate status --help"; do
  # shellcheck disable=SC2086
  run $args
  expect_rc 0 "$args"
  for step in status prepare activate retire; do
    expect_in "$WORK/out" "  $step" "$args lists the step $step"
  done
  for flag in --dir --max-ttl --root-ttl --intermediate-ttl --force; do
    expect_in "$WORK/out" "$flag" "$args documents $flag"
  done
done
run --help
expect_rc 0 "trellisctl --help"
expect_in "$WORK/out" "ca rotate" "trellisctl --help lists ca rotate"

finish
