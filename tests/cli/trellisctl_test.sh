#!/bin/sh
# Runs the built trellisctl: `ca init` into a temporary directory, then checks the result with
# the openssl command-line tool, and checks the usage errors.
set -u

TRELLISCTL="$1"
TEST_NAME=trellisctl_test
# shellcheck source=tests/cli/cli_test_lib.sh
. "$(dirname "$0")/cli_test_lib.sh"

# --- ca init ---
CA="$WORK/ca"
run ca init --dir "$CA"
expect_rc 0 "ca init"
for f in ca.crt ca.key roots.crt root.key; do
  [ -f "$CA/$f" ] || fail "ca init did not write $f"
done
[ -s "$CA/chain.crt" ] && fail "chain.crt should be empty or absent for a root + intermediate"
[ "$(mode_of "$CA/ca.key")" = "600" ] || fail "ca.key mode is $(mode_of "$CA/ca.key"), want 600"
[ "$(mode_of "$CA/root.key")" = "600" ] || fail "root.key mode is $(mode_of "$CA/root.key"), want 600"
expect_in "$WORK/out" "offline" "ca init output says to keep the root key offline"
expect_in "$WORK/out" "OFFLINE" "ca init output says to keep the root key offline"

VERIFY="$(openssl verify -CAfile "$CA/roots.crt" "$CA/ca.crt" 2>&1)"
case "$VERIFY" in
  *": OK") ;;
  *) fail "openssl verify: $VERIFY" ;;
esac
# The printed fingerprint is the root's, as openssl prints it.
FP="$(openssl x509 -in "$CA/roots.crt" -noout -fingerprint -sha256 | sed 's/.*=//')"
expect_in "$WORK/out" "$FP" "ca init prints the root's SHA-256 fingerprint"
# ca.crt is a CA under the root; the key matches.
openssl x509 -in "$CA/ca.crt" -noout -text | grep -q "CA:TRUE" || fail "ca.crt is not a CA"
[ "$(openssl x509 -in "$CA/ca.crt" -noout -pubkey)" = "$(openssl pkey -in "$CA/ca.key" -pubout)" ] ||
  fail "ca.key does not match ca.crt"
openssl x509 -in "$CA/roots.crt" -noout -text | grep -q "ASN1 OID: prime256v1" ||
  fail "root key is not P-256"

# --- a second init refuses to overwrite ---
cp "$CA/ca.crt" "$WORK/first.crt"
run ca init --dir "$CA"
[ "$RC" -ne 0 ] || fail "second ca init without --force succeeded"
expect_in "$WORK/err" "--force" "second init says how to overwrite"
expect_in "$WORK/err" "$CA/ca.crt" "second init names the existing file"
cmp -s "$CA/ca.crt" "$WORK/first.crt" || fail "second init changed ca.crt"

# --- --force replaces it ---
run ca init --dir "$CA" --force --trust-domain example.org --root-ttl 240h --intermediate-ttl 48h
expect_rc 0 "ca init --force"
cmp -s "$CA/ca.crt" "$WORK/first.crt" && fail "--force did not replace ca.crt"
openssl verify -CAfile "$CA/roots.crt" "$CA/ca.crt" >/dev/null 2>&1 || fail "verify after --force"
[ "$(mode_of "$CA/ca.key")" = "600" ] || fail "ca.key mode after --force"
expect_in "$WORK/out" "example.org" "trust domain in output"

# --- help ---
run --help
expect_rc 0 "--help"
expect_in "$WORK/out" "ca init" "--help lists ca init"
run ca init --help
expect_rc 0 "ca init --help"
for flag in --dir --trust-domain --root-ttl --intermediate-ttl --force --help; do
  expect_in "$WORK/out" "$flag" "ca init --help documents $flag"
done

# --- usage errors exit 2 ---
run bogus
expect_rc 2 "unknown command"
expect_in "$WORK/err" "unknown command \"bogus\"" "unknown command message"
run ca bogus
expect_rc 2 "unknown ca subcommand"
expect_in "$WORK/err" "unknown subcommand \"bogus\"" "unknown subcommand message"
run ca init --dir "$WORK/x" --bogus
expect_rc 2 "unknown flag"
expect_in "$WORK/err" "unknown flag \"--bogus\"" "unknown flag message"
run ca init
expect_rc 2 "missing --dir"
expect_in "$WORK/err" "--dir is required" "missing --dir message"
run ca init --dir "$WORK/y" --root-ttl soon
expect_rc 2 "bad duration"
run ca init --dir "$WORK/y" --trust-domain "Bad Domain"
expect_rc 2 "bad trust domain"
run
expect_rc 2 "no command"
[ -e "$WORK/x" ] && fail "a usage error still created a directory"

finish
