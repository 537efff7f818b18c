#!/usr/bin/env bash
# Regenerates the seed corpus of //tests/fuzz:csr_fuzz in corpus/csr/ with the `openssl`
# command-line tool (Debian package `openssl`). Output differs on every run (fresh keys, random
# ECDSA nonces); commit whatever it produces.
#
#   tests/fuzz/corpus/make_csr_seeds.sh
#
# Seeds (DER PKCS#10):
#   valid_p256_san, valid_p256_nosan, valid_p384_san, valid_p384_nosan   accepted by ParseCsrDer
#   refused_p192, refused_rsa2048                                         well-formed, wrong key
#   truncated_half, truncated_last_byte                                   cut-off P-256 requests
#   flipped_length, flipped_point, flipped_san, flipped_signature         one bit flipped
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/csr"
work=$(mktemp -d "${TMPDIR:-/tmp}/trellis-csr-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT

san="subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/checkout"

# csr KEYFILE NAME [REQ_ARGS...]: writes $out/NAME, a DER request signed with KEYFILE.
csr() {
  local key=$1 name=$2
  shift 2
  openssl req -new -key "$key" -sha256 -subj "/O=Trellis/CN=seed" "$@" -outform DER \
    -out "$out/$name"
}

# flip IN OUT OFFSET MASK: copies IN to OUT with the byte at OFFSET xor-ed with MASK.
flip() {
  local in=$1 dst=$2 offset=$3 mask=$4 byte
  cp "$in" "$dst"
  byte=$(od -An -tu1 -j "$offset" -N1 "$in" | tr -d ' ')
  # shellcheck disable=SC2059  # the format is the octal escape of the new byte
  printf "$(printf '\\%03o' $((byte ^ mask)))" |
    dd of="$dst" bs=1 seek="$offset" conv=notrunc status=none
}

# offset_of FILE HEX_PATTERN: byte offset of the first match of a grep -P pattern.
offset_of() {
  LC_ALL=C grep -obUaP "$2" "$1" | head -n 1 | cut -d: -f1
}

rm -rf "$out"
mkdir -p "$out"

openssl ecparam -name prime256v1 -genkey -noout -out "$work/p256.key"
openssl ecparam -name secp384r1 -genkey -noout -out "$work/p384.key"
openssl ecparam -name prime192v1 -genkey -noout -out "$work/p192.key"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.key" 2>/dev/null

csr "$work/p256.key" valid_p256_san -addext "$san"
csr "$work/p256.key" valid_p256_nosan
csr "$work/p384.key" valid_p384_san -addext "$san"
csr "$work/p384.key" valid_p384_nosan
csr "$work/p192.key" refused_p192 -addext "$san"
csr "$work/rsa.key" refused_rsa2048 -addext "$san"

base="$out/valid_p256_san"
size=$(wc -c <"$base")
head -c $((size / 2)) "$base" >"$out/truncated_half"
head -c $((size - 1)) "$base" >"$out/truncated_last_byte"
# The outer SEQUENCE's length (bytes 2-3 of 30 82 LL LL).
flip "$base" "$out/flipped_length" 3 0x01
# The X coordinate of the public point (after BIT STRING 03 42 00 04): no longer on the curve.
flip "$base" "$out/flipped_point" $(($(offset_of "$base" '\x03\x42\x00\x04') + 8)) 0x10
# A letter of the requested SPIFFE ID: the signature no longer covers the request.
flip "$base" "$out/flipped_san" $(($(offset_of "$base" 'checkout') + 2)) 0x01
# The last byte of the signature.
flip "$base" "$out/flipped_signature" $((size - 1)) 0x01

ls -l "$out"
