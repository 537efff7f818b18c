#!/usr/bin/env python3
"""Regenerates the seed corpus of //tests/fuzz:csr_der_fuzz in corpus/csr_der/.

Hand-built DER PKCS#10 requests, each at one edge of what ParseCsrDer's own DER parser accepts,
signed for real (python3-cryptography) so that the signature check is reached. Output differs on
every run (fresh keys, random ECDSA nonces); commit whatever it produces. The seeds of corpus/csr/
(made with the openssl tool) are copied in too.

    tests/fuzz/corpus/make_csr_der_seeds.py
"""

import os
import shutil

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "csr_der")

EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")
P256 = bytes.fromhex("2a8648ce3d030107")
P384 = bytes.fromhex("2b81040022")
P521 = bytes.fromhex("2b81040023")
ECDSA_SHA256 = bytes.fromhex("2a8648ce3d040302")
ECDSA_SHA384 = bytes.fromhex("2a8648ce3d040303")
EXTENSION_REQUEST = bytes.fromhex("2a864886f70d01090e")
CHALLENGE_PASSWORD = bytes.fromhex("2a864886f70d010907")
SUBJECT_ALT_NAME = bytes.fromhex("551d11")
ED25519 = bytes.fromhex("2b6570")
ID = b"spiffe://cluster.local/ns/shop/sa/checkout"


def tlv(tag, contents):
    n = len(contents)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + length + contents


def seq(*parts):
    return tlv(0x30, b"".join(parts))


def set_of(*parts):
    return tlv(0x31, b"".join(parts))


def oid(contents):
    return tlv(0x06, contents)


def bits(data, unused=0):
    return tlv(0x03, bytes([unused]) + data)


def point(key, compressed=False):
    fmt = (serialization.PublicFormat.CompressedPoint if compressed
           else serialization.PublicFormat.UncompressedPoint)
    return key.public_key().public_bytes(serialization.Encoding.X962, fmt)


def spki(curve, pt):
    return seq(seq(oid(EC_PUBLIC_KEY), oid(curve)), bits(pt))


def san(*names):
    return seq(oid(SUBJECT_ALT_NAME), tlv(0x04, seq(*names)))


def ext_request(*extensions):
    return seq(oid(EXTENSION_REQUEST), set_of(seq(*extensions)))


def csr(key, key_info, attributes=tlv(0xA0, b""), version=tlv(0x02, b"\x00"),
        subject=seq(), sig_alg=None, digest=None, unused=0, after=b""):
    info = seq(version, subject, key_info, attributes)
    digest = digest or hashes.SHA256()
    sig_alg = sig_alg if sig_alg is not None else seq(oid(ECDSA_SHA256))
    signature = key.sign(info, ec.ECDSA(digest))
    return seq(info, sig_alg, bits(signature, unused), after)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    k256 = ec.generate_private_key(ec.SECP256R1())
    k384 = ec.generate_private_key(ec.SECP384R1())
    good = spki(P256, point(k256))
    with_san = tlv(0xA0, ext_request(san(tlv(0x86, ID))))
    seeds = {
        "valid_minimal": csr(k256, good),
        "valid_san": csr(k256, good, with_san),
        "valid_p384_sha384": csr(k384, spki(P384, point(k384)), with_san,
                                 sig_alg=seq(oid(ECDSA_SHA384)), digest=hashes.SHA384()),
        "valid_no_attributes": csr(k256, good, attributes=b""),
        "valid_other_attributes": csr(k256, good, tlv(
            0xA0, seq(oid(CHALLENGE_PASSWORD), set_of(tlv(0x0C, b"pw"))) +
            ext_request(seq(oid(b"\x2b\x06\x01\x04\x01"), tlv(0x01, b"\xff"), tlv(0x04, b"x")),
                        san(tlv(0x82, b"a.example"), tlv(0x86, ID))))),
        "valid_subject": csr(k256, good, subject=seq(set_of(seq(oid(b"\x55\x04\x03"),
                                                                tlv(0x0C, b"seed"))))),
        "refused_version1": csr(k256, good, version=tlv(0x02, b"\x01")),
        "refused_compressed": csr(k256, spki(P256, point(k256, compressed=True))),
        "refused_p521_label": csr(k256, spki(P521, point(k256))),
        "refused_ed25519": csr(k256, seq(seq(oid(ED25519)), bits(b"k" * 32))),
        "refused_explicit_null_params": csr(k256, seq(seq(oid(EC_PUBLIC_KEY), tlv(0x05, b"")),
                                                      bits(point(k256)))),
        "refused_sigalg_null": csr(k256, good, sig_alg=seq(oid(ECDSA_SHA256), tlv(0x05, b""))),
        "refused_sig_unused_bits": csr(k256, good, unused=1),
        "refused_after_signature": csr(k256, good, after=tlv(0x05, b"")),
        "refused_long_form_length": csr(k256, good, version=b"\x02\x81\x01\x00"),
        "refused_duplicate_san": csr(k256, good, tlv(0xA0, ext_request(
            san(tlv(0x86, ID)), san(tlv(0x86, b"spiffe://x/y"))))),
        "refused_non_ia5_uri": csr(k256, good, tlv(0xA0, ext_request(
            san(tlv(0x86, b"spiffe://\xc3\xa9"))))),
        "refused_critical_false": csr(k256, good, tlv(0xA0, ext_request(
            seq(oid(SUBJECT_ALT_NAME), tlv(0x01, b"\x00"), tlv(0x04, seq(tlv(0x86, ID))))))),
        "refused_sha384_labelled_sha256": csr(k256, good, digest=hashes.SHA384()),
        "refused_san_other_name": csr(k256, good, tlv(0xA0, ext_request(san(
            tlv(0xA0, oid(b"\x2b\x06\x01\x04\x01") + tlv(0xA0, tlv(0x0C, b"x"))),
            tlv(0x86, ID))))),
        "refused_subject_integer": csr(k256, good, subject=seq(set_of(seq(
            oid(b"\x55\x04\x03"), tlv(0x02, b"\x01"))))),
    }
    indefinite = seeds["valid_minimal"]
    header = 3 if indefinite[1] == 0x81 else 2
    seeds["refused_indefinite_length"] = b"\x30\x80" + indefinite[header:] + b"\x00\x00"
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    csr_dir = os.path.join(HERE, "csr")
    for name in sorted(os.listdir(csr_dir)):
        shutil.copy(os.path.join(csr_dir, name), os.path.join(OUT, "openssl_" + name))
    print(f"wrote {len(os.listdir(OUT))} seeds to {OUT}")


if __name__ == "__main__":
    main()
