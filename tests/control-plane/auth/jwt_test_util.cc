#include "tests/control-plane/auth/jwt_test_util.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace trellis::control_plane::testing {
namespace {

struct EcdsaSigDeleter {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};

// Test helpers abort on an OpenSSL failure: it means the test machinery, not the code under
// test, is broken.
void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "jwt_test_util: %s failed\n", what);
    std::abort();
  }
}

std::string BigEndian(const BIGNUM* bn, int width) {
  std::string out(width > 0 ? width : BN_num_bytes(bn), '\0');
  Check(BN_bn2binpad(bn, reinterpret_cast<uint8_t*>(out.data()), static_cast<int>(out.size())) ==
            static_cast<int>(out.size()),
        "BN_bn2binpad");
  return out;
}

crypto::UniquePtr<EVP_PKEY> Generate(int type, int param) {
  crypto::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(type, nullptr));
  Check(ctx != nullptr && EVP_PKEY_keygen_init(ctx.get()) == 1, "EVP_PKEY_keygen_init");
  if (type == EVP_PKEY_RSA) {
    Check(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), param) == 1, "set_rsa_keygen_bits");
  } else {
    Check(EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), param) == 1, "set_ec_curve");
  }
  EVP_PKEY* key = nullptr;
  Check(EVP_PKEY_keygen(ctx.get(), &key) == 1, "EVP_PKEY_keygen");
  return crypto::UniquePtr<EVP_PKEY>(key);
}

}  // namespace

std::string Base64Url(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

TestSigningKey TestSigningKey::NewRsa(std::string kid) {
  return TestSigningKey(std::move(kid), true, Generate(EVP_PKEY_RSA, 2048));
}

TestSigningKey TestSigningKey::NewEc(std::string kid) {
  return TestSigningKey(std::move(kid), false, Generate(EVP_PKEY_EC, NID_X9_62_prime256v1));
}

std::string TestSigningKey::alg() const { return rsa_ ? "RS256" : "ES256"; }

nlohmann::json TestSigningKey::PublicJwk() const {
  nlohmann::json jwk = {{"use", "sig"}, {"alg", alg()}, {"kid", kid_}};
  if (rsa_) {
    const RSA* rsa = EVP_PKEY_get0_RSA(key_.get());
    const BIGNUM* n = nullptr;
    const BIGNUM* e = nullptr;
    RSA_get0_key(rsa, &n, &e, nullptr);
    jwk["kty"] = "RSA";
    jwk["n"] = Base64Url(BigEndian(n, 0));
    jwk["e"] = Base64Url(BigEndian(e, 0));
  } else {
    const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(key_.get());
    crypto::UniquePtr<BIGNUM> x(BN_new());
    crypto::UniquePtr<BIGNUM> y(BN_new());
    Check(EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec),
                                              x.get(), y.get(), nullptr) == 1,
          "EC_POINT_get_affine_coordinates");
    jwk["kty"] = "EC";
    jwk["crv"] = "P-256";
    jwk["x"] = Base64Url(BigEndian(x.get(), 32));
    jwk["y"] = Base64Url(BigEndian(y.get(), 32));
  }
  return jwk;
}

std::string TestSigningKey::Sign(absl::string_view data) const {
  crypto::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  Check(ctx != nullptr &&
            EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key_.get()) == 1,
        "EVP_DigestSignInit");
  size_t len = 0;
  const auto* in = reinterpret_cast<const uint8_t*>(data.data());
  Check(EVP_DigestSign(ctx.get(), nullptr, &len, in, data.size()) == 1, "EVP_DigestSign size");
  std::string sig(len, '\0');
  Check(
      EVP_DigestSign(ctx.get(), reinterpret_cast<uint8_t*>(sig.data()), &len, in, data.size()) == 1,
      "EVP_DigestSign");
  sig.resize(len);
  if (rsa_) return sig;
  // DER ECDSA-Sig-Value -> r||s.
  const auto* p = reinterpret_cast<const uint8_t*>(sig.data());
  std::unique_ptr<ECDSA_SIG, EcdsaSigDeleter> ecdsa(
      d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size())));  // NOLINT(runtime/int)
  Check(ecdsa != nullptr, "d2i_ECDSA_SIG");
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(ecdsa.get(), &r, &s);
  return BigEndian(r, 32) + BigEndian(s, 32);
}

std::string JwksDocument(const std::vector<const TestSigningKey*>& keys) {
  nlohmann::json doc = {{"keys", nlohmann::json::array()}};
  for (const TestSigningKey* key : keys) doc["keys"].push_back(key->PublicJwk());
  return doc.dump();
}

std::string MintRawToken(const TestSigningKey& key, absl::string_view header,
                         absl::string_view payload) {
  std::string signing_input = absl::StrCat(Base64Url(header), ".", Base64Url(payload));
  return absl::StrCat(signing_input, ".", Base64Url(key.Sign(signing_input)));
}

std::string MintToken(const TestSigningKey& key, const nlohmann::json& claims, bool with_kid) {
  nlohmann::json header = {{"alg", key.alg()}};
  if (with_kid) header["kid"] = key.kid();
  return MintRawToken(key, header.dump(), claims.dump());
}

nlohmann::json ServiceAccountClaims(absl::Time now, absl::string_view ns, absl::string_view sa,
                                    absl::string_view pod) {
  const int64_t t = absl::ToUnixSeconds(now);
  nlohmann::json k8s = {
      {"namespace", std::string(ns)},
      {"serviceaccount", {{"name", std::string(sa)}, {"uid", "0b6f1a2e-sa"}}},
  };
  if (!pod.empty()) k8s["pod"] = {{"name", std::string(pod)}, {"uid", "5c1d3e4f-pod"}};
  return {
      {"iss", std::string(kTestIssuer)},
      {"aud", {"trellis"}},
      {"iat", t},
      {"nbf", t},
      {"exp", t + 3600},
      {"sub", absl::StrCat("system:serviceaccount:", ns, ":", sa)},
      {"kubernetes.io", k8s},
  };
}

std::string SignaturePart(absl::string_view token) {
  const size_t dot = token.rfind('.');
  return std::string(dot == absl::string_view::npos ? token : token.substr(dot + 1));
}

}  // namespace trellis::control_plane::testing
