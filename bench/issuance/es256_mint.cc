#include "bench/issuance/es256_mint.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/handles.h"

namespace trellis::bench {
namespace {

std::string B64(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

absl::StatusOr<std::string> Fixed32(const BIGNUM* bn) {
  std::string out(32, '\0');
  if (BN_bn2binpad(bn, reinterpret_cast<uint8_t*>(out.data()), 32) != 32) {
    return absl::InternalError("BN_bn2binpad");
  }
  return out;
}

struct SigDeleter {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};

absl::StatusOr<std::string> SignEs256(const identity::PrivateKey& key, absl::string_view data) {
  crypto::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  if (ctx == nullptr ||
      EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1) {
    return absl::InternalError("EVP_DigestSignInit");
  }
  const auto* in = reinterpret_cast<const uint8_t*>(data.data());
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, in, data.size()) != 1) {
    return absl::InternalError("EVP_DigestSign");
  }
  std::string der(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<uint8_t*>(der.data()), &len, in, data.size()) !=
      1) {
    return absl::InternalError("EVP_DigestSign");
  }
  const auto* p = reinterpret_cast<const uint8_t*>(der.data());
  std::unique_ptr<ECDSA_SIG, SigDeleter> sig(
      d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(len)));  // NOLINT(runtime/int)
  if (sig == nullptr) return absl::InternalError("d2i_ECDSA_SIG");
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  absl::StatusOr<std::string> rb = Fixed32(r);
  absl::StatusOr<std::string> sb = Fixed32(s);
  if (!rb.ok()) return rb.status();
  if (!sb.ok()) return sb.status();
  return *rb + *sb;
}

}  // namespace

absl::StatusOr<std::string> JwksFor(const identity::PrivateKey& issuer_key, absl::string_view kid) {
  const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(issuer_key.get());
  if (ec == nullptr) return absl::InvalidArgumentError("issuer key is not an EC key");
  crypto::UniquePtr<BIGNUM> x(BN_new());
  crypto::UniquePtr<BIGNUM> y(BN_new());
  if (EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec),
                                          x.get(), y.get(), nullptr) != 1) {
    return absl::InternalError("EC_POINT_get_affine_coordinates");
  }
  absl::StatusOr<std::string> xb = Fixed32(x.get());
  absl::StatusOr<std::string> yb = Fixed32(y.get());
  if (!xb.ok()) return xb.status();
  if (!yb.ok()) return yb.status();
  nlohmann::json jwk = {{"kty", "EC"},     {"crv", "P-256"},          {"x", B64(*xb)},
                        {"y", B64(*yb)},   {"kid", std::string(kid)}, {"alg", "ES256"},
                        {"use", "sig"}};
  nlohmann::json doc = {{"keys", nlohmann::json::array({jwk})}};
  return doc.dump();
}

absl::StatusOr<std::string> MintServiceAccountToken(const identity::PrivateKey& issuer_key,
                                                    absl::string_view kid, absl::string_view ns,
                                                    absl::string_view sa, absl::Time now,
                                                    absl::Duration lifetime) {
  const int64_t t = absl::ToUnixSeconds(now);
  nlohmann::json header = {{"alg", "ES256"}, {"kid", std::string(kid)}};
  nlohmann::json claims = {
      {"iss", std::string(kBenchIssuer)},
      {"aud", {"trellis"}},
      {"iat", t},
      {"nbf", t},
      {"exp", t + absl::ToInt64Seconds(lifetime)},
      {"sub", absl::StrCat("system:serviceaccount:", ns, ":", sa)},
      {"kubernetes.io",
       {{"namespace", std::string(ns)},
        {"serviceaccount", {{"name", std::string(sa)}, {"uid", "00000000-bench-sa"}}},
        {"pod", {{"name", absl::StrCat(sa, "-7d9f8-abcde")}, {"uid", "00000000-bench-pod"}}}}},
  };
  const std::string input = absl::StrCat(B64(header.dump()), ".", B64(claims.dump()));
  absl::StatusOr<std::string> sig = SignEs256(issuer_key, input);
  if (!sig.ok()) return sig.status();
  return absl::StrCat(input, ".", B64(*sig));
}

}  // namespace trellis::bench
