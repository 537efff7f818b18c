#!/usr/bin/env bash
# Regenerates the binary fixtures in this directory with the `openssl` command-line tool
# (OpenSSL 3; Debian package `openssl`). See README.md for what each fixture is for.
#
#   tests/common/identity/testdata/make_fixtures.sh
#
# The keys are thrown away: the tests need only the requests. Output differs on every run (fresh
# keys, random ECDSA nonces), which is fine; commit whatever it produces.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/trellis-fixtures.XXXXXX")
trap 'rm -rf "$work"' EXIT

# csr_p192.der: a well-formed, correctly self-signed PKCS#10 request for an ECDSA key on P-192
# (prime192v1), which Trellis must refuse. BoringSSL cannot generate P-192 keys, so the tests
# cannot make this one themselves.
openssl ecparam -name prime192v1 -genkey -noout -out "$work/p192.key"
openssl req -new -key "$work/p192.key" -sha256 -subj "/O=Trellis tests/CN=p192" \
  -addext "subjectAltName=URI:spiffe://example.org/ns/test/sa/p192" \
  -outform DER -out "$here/csr_p192.der"

# csr_p256_explicit.der: a correctly self-signed request for a P-256 key whose SubjectPublicKeyInfo
# spells the curve out as explicit parameters instead of naming it. RFC 5480 requires the named
# curve form, and OpenSSL 3 refuses certificates carrying explicit parameters under
# X509_V_FLAG_X509_STRICT, so a CA that accepted this request would issue an unusable certificate.
openssl ecparam -name prime256v1 -param_enc explicit -genkey -noout -out "$work/explicit.key"
openssl req -new -key "$work/explicit.key" -sha256 -subj "/O=Trellis tests/CN=p256-explicit" \
  -outform DER -out "$here/csr_p256_explicit.der"

echo "wrote $here/csr_p192.der $here/csr_p256_explicit.der"
