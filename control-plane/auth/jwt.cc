#include "control-plane/auth/jwt.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/crypto/handles.h"
#include "common/crypto/openssl_error.h"

namespace trellis::control_plane {
namespace {

using json = nlohmann::json;

struct EcdsaSigDeleter {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, EcdsaSigDeleter>;

constexpr size_t kEs256SignatureBytes = 64;

absl::StatusOr<std::string> DecodePart(absl::string_view part, absl::string_view what) {
  if (part.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("token ", what, " is empty"));
  }
  absl::StatusOr<std::string> bytes = DecodeBase64Url(part);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", what, " is ", bytes.status().message()));
  }
  return bytes;
}

absl::StatusOr<json> ParseJsonObject(const std::string& text, absl::string_view what) {
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded() || !value.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("token ", what, " is not a JSON object"));
  }
  return value;
}

// The r||s signature of ES256 (RFC 7518 section 3.4) as an ECDSA_SIG; null if it cannot be
// allocated.
EcdsaSigPtr Es256Signature(const std::string& raw) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(raw.data());
  crypto::UniquePtr<BIGNUM> r(BN_bin2bn(bytes, kEs256SignatureBytes / 2, nullptr));
  crypto::UniquePtr<BIGNUM> s(
      BN_bin2bn(bytes + kEs256SignatureBytes / 2, kEs256SignatureBytes / 2, nullptr));
  EcdsaSigPtr sig(ECDSA_SIG_new());
  if (r == nullptr || s == nullptr || sig == nullptr ||
      ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
    return nullptr;
  }
  r.release();  // now owned by sig
  s.release();
  return sig;
}

// True if the ES256 signature `sig` verifies `digest` (SHA-256 of the signed data) with `key`.
// The EC_KEY is used directly: OpenSSL 3's EVP_DigestVerify path would export the key to a
// provider, fetch the algorithms and build two contexts per token, as much again as the verify.
bool VerifyEs256(EVP_PKEY* key, const uint8_t* digest, const ECDSA_SIG* sig) {
  // JwksKeySet builds every EC key over an EC_KEY, so this is a plain read on both backends.
  auto* ec = const_cast<EC_KEY*>(EVP_PKEY_get0_EC_KEY(key));
  const bool ok = ec != nullptr && ECDSA_do_verify(digest, SHA256_DIGEST_LENGTH, sig, ec) == 1;
  crypto::ClearOpenSslErrors();
  return ok;
}

// True if the RS256 `signature` verifies `signed_data` with `key`.
bool VerifySha256(EVP_PKEY* key, absl::string_view signed_data, const std::string& signature) {
  crypto::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  bool ok = ctx != nullptr &&
            EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestVerify(ctx.get(), reinterpret_cast<const uint8_t*>(signature.data()),
                             signature.size(), reinterpret_cast<const uint8_t*>(signed_data.data()),
                             signed_data.size()) == 1;
  crypto::ClearOpenSslErrors();
  return ok;
}

}  // namespace

absl::StatusOr<VerifiedJwt> VerifyJwt(absl::string_view token, const JwksKeySet& keys) {
  if (token.empty()) return absl::InvalidArgumentError("token is empty");
  if (token.size() > kMaxJwtSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token of ", token.size(), " bytes is larger than the limit of ", kMaxJwtSize, " bytes"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token has ", parts.size(),
        " dot-separated parts, not 3: expected a compact JWS (header.payload.signature)"
        "; JWE-encrypted and unsigned tokens are not accepted"));
  }

  // The header: which algorithm and key.
  absl::StatusOr<std::string> header_text = DecodePart(parts[0], "header");
  if (!header_text.ok()) return header_text.status();
  absl::StatusOr<json> header = ParseJsonObject(*header_text, "header");
  if (!header.ok()) return header.status();
  auto alg = header->find("alg");
  if (alg == header->end() || !alg->is_string()) {
    return absl::InvalidArgumentError("token header has no string \"alg\"");
  }
  const std::string& alg_name = alg->get_ref<const std::string&>();
  JwkType type;
  if (alg_name == "RS256") {
    type = JwkType::kRsa;
  } else if (alg_name == "ES256") {
    type = JwkType::kEc;
  } else if (alg_name == "none" || alg_name == "None" || alg_name == "NONE") {
    return absl::InvalidArgumentError(
        "token is unsigned (alg \"none\"): only RS256 and ES256 signed tokens are accepted");
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("token algorithm ", QuoteUntrusted(alg_name),
                     " is not supported: only RS256 and ES256 are accepted, as the Kubernetes "
                     "service-account issuer uses"));
  }
  if (header->contains("crit")) {
    return absl::InvalidArgumentError(
        "token header has \"crit\" extensions, which are not supported");
  }
  std::optional<absl::string_view> kid;
  auto kid_it = header->find("kid");
  if (kid_it != header->end()) {
    if (!kid_it->is_string()) {
      return absl::InvalidArgumentError("token header \"kid\" is not a string");
    }
    kid = kid_it->get_ref<const std::string&>();
  }

  // The signature.
  absl::StatusOr<std::string> signature = DecodePart(parts[2], "signature");
  if (!signature.ok()) return signature.status();
  EcdsaSigPtr es256_signature;
  if (type == JwkType::kEc) {
    if (signature->size() != kEs256SignatureBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ES256 signature has ", signature->size(), " bytes, not 64 (r||s, RFC 7518 3.4)"));
    }
    es256_signature = Es256Signature(*signature);
    if (es256_signature == nullptr) {
      return crypto::OpenSslInternalError("allocating an ECDSA signature failed");
    }
  }
  // The payload must at least be base64url before any key is tried.
  absl::StatusOr<std::string> payload_text = DecodePart(parts[1], "payload");
  if (!payload_text.ok()) return payload_text.status();

  std::vector<const Jwk*> candidates = keys.Candidates(kid, type);
  if (candidates.empty()) {
    if (kid.has_value()) {
      return absl::UnauthenticatedError(absl::StrCat(
          "token key id (kid) ", QuoteUntrusted(*kid), " is not in the issuer's key set (",
          alg_name,
          " keys): the token comes from another issuer, or the issuer's keys rotated and the JWKS "
          "file is out of date (refresh it from `kubectl get --raw /openid/v1/jwks`)"));
    }
    return absl::UnauthenticatedError(absl::StrCat("the issuer's key set has no ", alg_name,
                                                   " key to check a token without kid against"));
  }
  const absl::string_view signed_data = token.substr(0, parts[0].size() + 1 + parts[1].size());
  uint8_t es256_digest[SHA256_DIGEST_LENGTH];
  if (type == JwkType::kEc) {
    SHA256(reinterpret_cast<const uint8_t*>(signed_data.data()), signed_data.size(), es256_digest);
  }
  const Jwk* verified_by = nullptr;
  for (const Jwk* key : candidates) {
    if (type == JwkType::kEc) {
      if (VerifyEs256(key->public_key.get(), es256_digest, es256_signature.get())) {
        verified_by = key;
        break;
      }
      continue;
    }
    if (type == JwkType::kRsa &&
        signature->size() != static_cast<size_t>(EVP_PKEY_size(key->public_key.get()))) {
      continue;  // an RS256 signature is exactly as long as the modulus
    }
    if (VerifySha256(key->public_key.get(), signed_data, *signature)) {
      verified_by = key;
      break;
    }
  }
  if (verified_by == nullptr) {
    return absl::UnauthenticatedError(absl::StrCat(
        "token signature does not verify against ",
        kid.has_value()
            ? absl::StrCat("the issuer's key ", QuoteUntrusted(*kid))
            : absl::StrCat("any of the issuer's ", candidates.size(), " ", alg_name, " keys"),
        ": the token was altered or signed by another issuer"));
  }

  absl::StatusOr<json> claims = ParseJsonObject(*payload_text, "payload");
  if (!claims.ok()) return claims.status();
  VerifiedJwt result;
  result.algorithm = type;
  result.kid = kid.has_value() ? std::string(*kid) : "";
  result.key_kid = verified_by->kid;
  result.header = *std::move(header);
  result.claims = *std::move(claims);
  return result;
}

}  // namespace trellis::control_plane
