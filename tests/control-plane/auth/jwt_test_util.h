#pragma once

// Mints JSON Web Tokens for tests: fresh RSA-2048 and P-256 issuer keys, their JWKS document, and
// tokens signed with them (RS256, ES256), built with OpenSSL in the test itself.

#include <openssl/evp.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"

namespace trellis::control_plane::testing {

// Unpadded base64url.
std::string Base64Url(absl::string_view bytes);

// A private signing key of a test issuer.
class TestSigningKey {
 public:
  static TestSigningKey NewRsa(std::string kid);  // RSA-2048, RS256
  static TestSigningKey NewEc(std::string kid);   // P-256, ES256

  const std::string& kid() const { return kid_; }
  // "RS256" or "ES256".
  std::string alg() const;
  // The public key as a JWK (with kid, alg and use, like the API server's).
  nlohmann::json PublicJwk() const;
  // The JWS signature of `data`: PKCS#1 v1.5 for RSA, the 64-byte r||s for P-256.
  std::string Sign(absl::string_view data) const;

 private:
  TestSigningKey(std::string kid, bool rsa, crypto::UniquePtr<EVP_PKEY> key)
      : kid_(std::move(kid)), rsa_(rsa), key_(std::move(key)) {}

  std::string kid_;
  bool rsa_;
  crypto::UniquePtr<EVP_PKEY> key_;
};

// {"keys": [<PublicJwk of each key>]}.
std::string JwksDocument(const std::vector<const TestSigningKey*>& keys);

// header.payload.signature with `header` and `payload` taken verbatim (JSON or not).
std::string MintRawToken(const TestSigningKey& key, absl::string_view header,
                         absl::string_view payload);
// A token with header {"alg": key.alg(), "kid": key.kid()} (no kid when `with_kid` is false).
std::string MintToken(const TestSigningKey& key, const nlohmann::json& claims,
                      bool with_kid = true);

inline constexpr absl::string_view kTestIssuer = "https://kubernetes.default.svc.cluster.local";

// The claims of a projected service-account token as kube-apiserver makes them: iss kTestIssuer,
// aud ["trellis"], iat/nbf `now`, exp `now` + 1 h, sub system:serviceaccount:NS:SA and the
// "kubernetes.io" claim with namespace, serviceaccount and pod (no pod if `pod` is empty).
nlohmann::json ServiceAccountClaims(absl::Time now, absl::string_view ns, absl::string_view sa,
                                    absl::string_view pod = "web-7d9f8-abcde");

// The last dot-separated part of a token (its signature).
std::string SignaturePart(absl::string_view token);

}  // namespace trellis::control_plane::testing
