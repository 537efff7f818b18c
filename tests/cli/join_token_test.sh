#!/bin/bash
# Runs the built trellisctl `join-token create` as an operator would: the token goes to stdout
# only, the control plane's tokens file keeps only its hash at mode 0600, and mistakes are refused
# with a message that says what to fix and without touching the file.
set -u

TRELLISCTL="$1"
TEST_NAME=join_token_test
CLI_TIMEOUT=60
# shellcheck source=tests/cli/cli_test_lib.sh
. "$(dirname "$0")/cli_test_lib.sh"

expect_no_stdout() {  # expect_no_stdout WHAT
  [ -s "$WORK/out" ] && fail "$1: printed on stdout (a failed create must not print a token): $(cat "$WORK/out")"
}

# Lowercase hex SHA-256 of a string, as the tokens file stores it.
sha256_hex() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

FILE="$WORK/etc/join-tokens.json"
mkdir -p "$WORK/etc"

# --- create: the token on stdout, and only there ---
run join-token create --file "$FILE" --name vm-billing-1 --spiffe-id spiffe://cluster.local/vm/billing-1
expect_rc 0 "create"
[ "$(wc -l <"$WORK/out")" = "1" ] || fail "create: stdout should be exactly one line: $(cat "$WORK/out")"
TOKEN="$(cat "$WORK/out")"
case "$TOKEN" in
  trellis-join-*) ;;
  *) fail "create: token \"$TOKEN\" does not start with trellis-join-" ;;
esac
[ "${#TOKEN}" = "56" ] || fail "create: token is ${#TOKEN} characters, want 56 (prefix + 43 base64url)"
printf %s "${TOKEN#trellis-join-}" | grep -qE '^[A-Za-z0-9_-]{43}$' || fail "create: token body is not base64url"
grep -qF -- "$TOKEN" "$WORK/err" && fail "create: the token appears on stderr"
expect_in "$WORK/err" "vm-billing-1" "create: stderr names the token"
expect_in "$WORK/err" "spiffe://cluster.local/vm/billing-1" "create: stderr names the identity"

# --- the tokens file: mode 0600, JSON, the hash but never the token ---
[ -f "$FILE" ] || fail "create did not write $FILE"
[ "$(mode_of "$FILE")" = "600" ] || fail "tokens file mode $(mode_of "$FILE"), want 600"
grep -qF -- "$TOKEN" "$FILE" && fail "the tokens file contains the token itself"
grep -qF -- "${TOKEN#trellis-join-}" "$FILE" && fail "the tokens file contains the token's random part"
expect_in "$FILE" "$(sha256_hex "$TOKEN")" "the tokens file holds the token's SHA-256"
expect_in "$FILE" "spiffe://cluster.local/vm/billing-1" "the tokens file holds the identity"
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert len(d["tokens"]) == 1, d' "$FILE" ||
  fail "the tokens file is not JSON with one token: $(cat "$FILE")"
ls -a "$WORK/etc" | grep -v -e '^\.$' -e '^\.\.$' -e '^join-tokens.json$' >"$WORK/stray" &&
  fail "create left other files next to the tokens file: $(cat "$WORK/stray")"

# --- a second token: a different one, appended; options recorded ---
run join-token create --file "$FILE" --name edge.gw_2 --spiffe-id spiffe://cluster.local/ns/edge/sa/gw \
  --ttl 24h --single-use
expect_rc 0 "create with --ttl and --single-use"
TOKEN2="$(cat "$WORK/out")"
[ "$TOKEN2" != "$TOKEN" ] || fail "two creates printed the same token"
case "$TOKEN2" in trellis-join-*) ;; *) fail "second token \"$TOKEN2\" lacks the prefix" ;; esac
grep -qF -- "$TOKEN2" "$FILE" && fail "the tokens file contains the second token"
[ "$(mode_of "$FILE")" = "600" ] || fail "tokens file mode after a second create: $(mode_of "$FILE")"
python3 - "$FILE" "$(sha256_hex "$TOKEN2")" <<'EOF' || fail "second entry in the tokens file is wrong: $(cat "$FILE")"
import datetime, json, sys
tokens = json.load(open(sys.argv[1]))["tokens"]
assert [t["name"] for t in tokens] == ["vm-billing-1", "edge.gw_2"], tokens
t = tokens[1]
assert t["sha256"] == sys.argv[2], t
assert t["single_use"] is True, t
expires = datetime.datetime.fromisoformat(t["expires"].replace("Z", "+00:00"))
left = expires - datetime.datetime.now(datetime.timezone.utc)
assert datetime.timedelta(hours=23) < left <= datetime.timedelta(hours=24, minutes=1), left
assert "expires" not in tokens[0] or tokens[0]["expires"] in (None, ""), tokens[0]
EOF
cp "$FILE" "$WORK/before"

# --- a duplicate name: exit 1, the file unchanged, no token printed ---
run join-token create --file "$FILE" --name vm-billing-1 --spiffe-id spiffe://cluster.local/vm/other
expect_rc 1 "duplicate name"
expect_in "$WORK/err" "vm-billing-1" "duplicate name message names it"
expect_in "$WORK/err" "already" "duplicate name message says it exists"
expect_no_stdout "duplicate name"
cmp -s "$FILE" "$WORK/before" || fail "a refused duplicate changed the tokens file"

# --- a bad SPIFFE ID: exit 2 with the reason ---
check_bad_id() {  # check_bad_id ID REASON
  run join-token create --file "$FILE" --name bad-id --spiffe-id "$1"
  expect_rc 2 "bad SPIFFE ID $1"
  expect_in "$WORK/err" "--spiffe-id" "bad SPIFFE ID $1: message names the flag"
  expect_in "$WORK/err" "$2" "bad SPIFFE ID $1: message gives the reason"
  expect_no_stdout "bad SPIFFE ID $1"
}
check_bad_id "http://cluster.local/vm/x" "spiffe://"
check_bad_id "spiffe://Cluster.Local/vm/x" "lowercase"
check_bad_id "spiffe://cluster.local/vm/x?y=1" "query"
check_bad_id "spiffe://cluster.local/vm//x" "empty segments"
cmp -s "$FILE" "$WORK/before" || fail "a refused bad SPIFFE ID changed the tokens file"

# --- bad --ttl: exit 2 naming the flag ---
for ttl in garbage 0s -5m 12; do
  run join-token create --file "$FILE" --name ttl-test --spiffe-id spiffe://cluster.local/vm/t --ttl "$ttl"
  expect_rc 2 "--ttl $ttl"
  expect_in "$WORK/err" "--ttl" "--ttl $ttl: message names the flag"
  expect_in "$WORK/err" "$ttl" "--ttl $ttl: message quotes the value"
  expect_no_stdout "--ttl $ttl"
done
cmp -s "$FILE" "$WORK/before" || fail "a refused --ttl changed the tokens file"

# --- other mistakes ---
# A bad --name is a usage error (2) like a bad --spiffe-id or --ttl, quoting the name.
for name in "has space" "-leading-dash" "a/b" "$(printf 'x%.0s' $(seq 200))"; do
  run join-token create --file "$FILE" --name "$name" --spiffe-id spiffe://cluster.local/vm/t
  expect_rc 2 "bad name \"$name\""
  expect_in "$WORK/err" "--name" "bad name \"$name\": message names the flag"
  expect_in "$WORK/err" "${name:0:40}" "bad name \"$name\": message quotes it"
  expect_no_stdout "bad name \"$name\""
done
for missing in --file --name --spiffe-id; do
  set -- --file "$FILE" --name n1 --spiffe-id spiffe://cluster.local/vm/t
  args=()
  while [ $# -gt 0 ]; do
    [ "$1" != "$missing" ] && args+=("$1" "$2")
    shift 2
  done
  run join-token create "${args[@]}"
  expect_rc 2 "missing $missing"
  expect_in "$WORK/err" "$missing is required" "missing $missing message"
done
run join-token create --file "$FILE" --name n1 --spiffe-id spiffe://cluster.local/vm/t --bogus
expect_rc 2 "unknown flag"
run join-token bogus
expect_rc 2 "unknown join-token subcommand"
run join-token
expect_rc 2 "join-token without a subcommand"
cmp -s "$FILE" "$WORK/before" || fail "a usage error changed the tokens file"

# --- a tokens file readable by others is refused, not silently fixed ---
chmod 644 "$FILE"
run join-token create --file "$FILE" --name n2 --spiffe-id spiffe://cluster.local/vm/t
expect_rc 1 "tokens file mode 644"
expect_in "$WORK/err" "chmod 600" "tokens file mode 644: message gives the fix"
expect_no_stdout "tokens file mode 644"
[ "$(mode_of "$FILE")" = "644" ] || fail "a refused create changed the file's mode"
chmod 600 "$FILE"

# --- a broken tokens file: nothing written ---
printf '{"tokens": [' >"$WORK/broken.json"
chmod 600 "$WORK/broken.json"
run join-token create --file "$WORK/broken.json" --name n3 --spiffe-id spiffe://cluster.local/vm/t
expect_rc 1 "broken tokens file"
expect_no_stdout "broken tokens file"
[ "$(cat "$WORK/broken.json")" = '{"tokens": [' ] || fail "create rewrote a broken tokens file"

# --- help ---
run join-token create --help
expect_rc 0 "join-token create --help"
for flag in --file --name --spiffe-id --ttl --single-use; do
  expect_in "$WORK/out" "$flag" "join-token create --help documents $flag"
done
run --help
expect_rc 0 "--help"
expect_in "$WORK/out" "join-token create" "trellisctl --help lists join-token create"

finish
