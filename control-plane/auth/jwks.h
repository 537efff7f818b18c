#pragma once

// JSON Web Key Sets (RFC 7517) as served by a Kubernetes API server at /openid/v1/jwks: the public
// keys of the cluster's service-account token issuer.

#include <openssl/evp.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/crypto/handles.h"

namespace trellis::control_plane {

// The largest JWKS document Parse accepts (a cluster has a handful of keys of ~500 bytes each).
inline constexpr size_t kMaxJwksSize = 1 << 20;

// Decodes unpadded base64url (RFC 7515, section 2): only [A-Za-z0-9_-], no '=', no whitespace, and
// the canonical encoding only (unused trailing bits zero), so every byte string has exactly one
// accepted text. InvalidArgument otherwise; the message never quotes the input.
absl::StatusOr<std::string> DecodeBase64Url(absl::string_view text);

// Quotes a string taken from a token or a key set for an error message: at most 64 bytes of it,
// non-printable bytes escaped, "..." appended when cut, e.g. "\"RS512\"".
std::string QuoteUntrusted(absl::string_view value);

// The JWS algorithm a key is used with. Only these two are supported.
enum class JwkType {
  kRsa,  // kty "RSA", alg RS256 (or no alg): RSASSA-PKCS1-v1_5 with SHA-256
  kEc,   // kty "EC", crv "P-256", alg ES256 (or no alg): ECDSA P-256 with SHA-256
};

// "RS256" or "ES256".
absl::string_view JwsAlgorithmName(JwkType type);

// One verification key.
struct Jwk {
  std::string kid;  // "" when the key has no kid
  JwkType type;
  // Never null. An EC key is always built over an EC_KEY (not a provider key): VerifyJwt reads
  // it with EVP_PKEY_get0_EC_KEY and verifies with ECDSA directly.
  crypto::UniquePtr<EVP_PKEY> public_key;
};

// An immutable set of verification keys. Thread-compatible (const methods may be called from many
// threads at once).
class JwksKeySet {
 public:
  // Parses a JWKS document: a JSON object whose "keys" member is an array of JWK objects.
  //  - RSA keys need "n" and "e" (base64url big-endian integers; a modulus of 2048 to 8192 bits,
  //    an odd exponent above 1 of at most 64 bits); EC keys need "crv" "P-256" and "x", "y"
  //    (32 bytes each, a point on the curve).
  //  - Keys of another kty or crv, with an alg other than RS256/ES256, or with a "use" other than
  //    "sig" are skipped and counted (skipped_keys()), so a new key type in a cluster does not
  //    break the set.
  //  - A supported key that is malformed (missing or bad n/e/x/y, a non-string kid) makes the whole
  //    document invalid: a corrupted file should be noticed, not half-used.
  // InvalidArgument if the text is larger than kMaxJwksSize, is not JSON, has no "keys" array, has
  // a malformed supported key, or has no usable key at all.
  static absl::StatusOr<JwksKeySet> Parse(absl::string_view text);

  JwksKeySet(JwksKeySet&&) = default;
  JwksKeySet& operator=(JwksKeySet&&) = default;

  // The keys a token signed with `type` may be checked against: those of that type whose kid is
  // `kid`, or every key of that type when the token names no kid (std::nullopt).
  std::vector<const Jwk*> Candidates(std::optional<absl::string_view> kid, JwkType type) const;

  const std::vector<Jwk>& keys() const { return keys_; }

  // How many JWKs were skipped as unsupported, and a short reason for each (for logs).
  size_t skipped_keys() const { return skipped_reasons_.size(); }
  const std::vector<std::string>& skipped_reasons() const { return skipped_reasons_; }

 private:
  JwksKeySet() = default;

  std::vector<Jwk> keys_;
  std::vector<std::string> skipped_reasons_;
};

}  // namespace trellis::control_plane
