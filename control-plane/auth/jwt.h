#pragma once

// Compact JSON Web Signatures (RFC 7515) as used for JSON Web Tokens (RFC 7519), verified against a
// JwksKeySet. Only RS256 and ES256 are accepted: Kubernetes signs service-account tokens with one
// of them.

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "control-plane/auth/jwks.h"

namespace trellis::control_plane {

// The longest token VerifyJwt accepts (a Kubernetes token is about 1 KiB).
inline constexpr size_t kMaxJwtSize = 16 * 1024;

// A token whose signature verified.
struct VerifiedJwt {
  JwkType algorithm;      // RS256 or ES256
  std::string kid;        // the header's kid, "" if it has none
  std::string key_kid;    // the kid of the JWKS key that verified it ("" if that key has none)
  nlohmann::json header;  // a JSON object
  nlohmann::json claims;  // a JSON object: the payload
};

// Parses `token` as header.payload.signature (three unpadded base64url parts) and verifies the
// signature with the keys of `keys`: those with the header's kid, or all keys of the algorithm's
// type when the header has no kid. RS256 is RSASSA-PKCS1-v1_5 with SHA-256; the ES256 signature is
// the 64-byte r||s of RFC 7518 section 3.4. The claims are not checked here (exp, aud, ...).
//
// Errors (the message says what was wrong; it never contains the token or any part of it):
//   InvalidArgument   malformed: empty or larger than kMaxJwtSize, not exactly three parts, a part
//                     that is not base64url, a header or payload that is not a JSON object, no
//                     string "alg", alg "none" or another algorithm than RS256/ES256, a "crit"
//                     header, a signature of the wrong length;
//   Unauthenticated   no key of the set matches (unknown kid), or the signature does not verify.
absl::StatusOr<VerifiedJwt> VerifyJwt(absl::string_view token, const JwksKeySet& keys);

}  // namespace trellis::control_plane
