#!/usr/bin/env python3
"""Writes the seed corpora corpus/jwt/ and corpus/jwks/ for jwt_fuzz and jwks_fuzz.

Run from anywhere: python3 tests/fuzz/make_jwt_seeds.py (needs python3-cryptography). The valid
seed tokens are signed with the fixed test keys embedded in jwt_fuzz.cc, so jwt_fuzz (whose clock
is fixed at 1700000000) accepts them; ES256 signatures are randomized, so a re-run changes those
files' bytes but not what they exercise.
"""

import base64
import json
import os
import re

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

HERE = os.path.dirname(os.path.abspath(__file__))
NOW = 1700000000
ISSUER = "https://kubernetes.default.svc.cluster.local"


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_keys():
    with open(os.path.join(HERE, "jwt_fuzz.cc")) as f:
        src = f.read()
    pems = re.findall(r"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----", src, re.S)
    ec_key, rsa_key = (serialization.load_pem_private_key(p.encode(), None) for p in pems)
    return ec_key, rsa_key


def sign(key, header, payload):
    signing_input = (b64(header) + "." + b64(payload)).encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64(sig)


def claims(**overrides):
    c = {
        "aud": ["trellis"],
        "exp": NOW + 3600,
        "iat": NOW,
        "nbf": NOW,
        "iss": ISSUER,
        "sub": "system:serviceaccount:shop:web",
        "kubernetes.io": {
            "namespace": "shop",
            "serviceaccount": {"name": "web", "uid": "sa-uid"},
            "pod": {"name": "web-0", "uid": "pod-uid"},
        },
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def write(corpus, name, data):
    path = os.path.join(HERE, "corpus", corpus)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def jwk(key, kid):
    pub = key.public_key().public_numbers()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(pub.x.to_bytes(32, "big")), "y": b64(pub.y.to_bytes(32, "big"))}
    n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(n),
            "e": b64(pub.e.to_bytes(3, "big"))}


def main():
    ec_key, rsa_key = load_keys()
    es = json.dumps({"alg": "ES256", "kid": "fuzz-ec"})
    rs = json.dumps({"alg": "RS256", "kid": "fuzz-rsa"})
    # Tokens (jwt_fuzz checks any input not starting with '{' as a token).
    write("jwt", "valid_es256", sign(ec_key, es, json.dumps(claims())))
    write("jwt", "valid_rs256", sign(rsa_key, rs, json.dumps(claims())))
    write("jwt", "valid_rs256_no_kid", sign(rsa_key, '{"alg":"RS256"}', json.dumps(claims())))
    sub_only = claims(**{"kubernetes.io": None, "sub": "system:serviceaccount:batch:cron"})
    write("jwt", "valid_sub_fallback", sign(ec_key, es, json.dumps(sub_only)))
    write("jwt", "expired", sign(rsa_key, rs, json.dumps(claims(exp=NOW - 3600))))
    write("jwt", "wrong_audience", sign(ec_key, es, json.dumps(claims(aud="api"))))
    write("jwt", "wrong_issuer", sign(ec_key, es, json.dumps(claims(iss="https://evil"))))
    write("jwt", "not_json_payload", sign(rsa_key, rs, "not json"))
    good = sign(ec_key, es, json.dumps(claims())).split(".")
    write("jwt", "tampered_payload", ".".join([good[0], b64(json.dumps(claims(sub="x"))), good[2]]))
    write("jwt", "alg_none", b64('{"alg":"none"}') + "." + good[1] + ".")
    write("jwt", "alg_hs256", b64('{"alg":"HS256","kid":"fuzz-ec"}') + "." + good[1] + "." + good[2])
    write("jwt", "two_parts", good[0] + "." + good[1])
    write("jwt", "four_parts", ".".join(good + [good[2]]))
    write("jwt", "garbage_base64", "%%%.@@@.###")
    write("jwt", "empty", "")
    # Payloads (jwt_fuzz signs an input starting with '{' itself).
    write("jwt", "payload_valid", json.dumps(claims()))
    write("jwt", "payload_float_dates", json.dumps(claims(exp=NOW + 10.5, nbf=NOW - 0.5)))
    write("jwt", "payload_bad_namespace",
          json.dumps(claims(**{"kubernetes.io": {"namespace": "Bad_NS",
                                                  "serviceaccount": {"name": "web"}}})))
    write("jwt", "payload_no_exp", json.dumps(claims(exp=None)))
    write("jwt", "payload_aud_array", json.dumps(claims(aud=["a", "trellis", "b"])))

    # JWKS documents.
    write("jwks", "valid_rsa_ec",
          json.dumps({"keys": [jwk(ec_key, "fuzz-ec"), jwk(rsa_key, "fuzz-rsa")]}))
    write("jwks", "valid_with_unknown_kty", json.dumps({"keys": [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
        jwk(ec_key, "fuzz-ec")]}))
    bad_point = jwk(ec_key, "bad")
    bad_point["y"] = bad_point["x"]
    write("jwks", "invalid_point_not_on_curve", json.dumps({"keys": [bad_point]}))
    bad_n = jwk(rsa_key, "bad")
    bad_n["n"] = bad_n["n"][:40]
    write("jwks", "invalid_rsa_small_modulus", json.dumps({"keys": [bad_n]}))
    write("jwks", "invalid_no_keys", '{"keys": []}')
    write("jwks", "invalid_only_oct", '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    write("jwks", "invalid_json", '{"keys": [')
    write("jwks", "base64url", "Zm9vYmFy")


if __name__ == "__main__":
    main()
