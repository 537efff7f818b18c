#include "control-plane/auth/jwks.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"

namespace trellis::control_plane {
namespace {

using json = nlohmann::json;

// Owners for the OpenSSL objects common/crypto/handles.h has no deleter for.
struct RsaDeleter {
  void operator()(RSA* p) const { RSA_free(p); }
};
struct EcKeyDeleter {
  void operator()(EC_KEY* p) const { EC_KEY_free(p); }
};
using RsaPtr = std::unique_ptr<RSA, RsaDeleter>;
using EcKeyPtr = std::unique_ptr<EC_KEY, EcKeyDeleter>;

constexpr int kMinRsaBits = 2048;
constexpr int kMaxRsaBits = 8192;
constexpr int kMaxRsaExponentBits = 64;
constexpr size_t kP256CoordinateBytes = 32;
constexpr size_t kMaxQuotedBytes = 64;

// "key 2 (kid \"abc\")" or "key 2 (no kid)", for messages.
std::string KeyName(size_t index, const json& jwk) {
  auto kid = jwk.find("kid");
  if (kid != jwk.end() && kid->is_string()) {
    return absl::StrCat("key ", index, " (kid ", QuoteUntrusted(kid->get_ref<const std::string&>()),
                        ")");
  }
  return absl::StrCat("key ", index, " (no kid)");
}

// Reads the base64url member `name` of `jwk` as a big-endian unsigned integer.
absl::StatusOr<std::string> Base64UrlMember(const json& jwk, const char* name,
                                            absl::string_view key_name) {
  auto it = jwk.find(name);
  if (it == jwk.end() || !it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, " has no string member \"", name, "\""));
  }
  absl::StatusOr<std::string> bytes = DecodeBase64Url(it->get_ref<const std::string&>());
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, " member \"", name, "\": ", bytes.status().message()));
  }
  if (bytes->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, " member \"", name, "\" is empty"));
  }
  return bytes;
}

crypto::UniquePtr<BIGNUM> ToBignum(const std::string& bytes) {
  return crypto::UniquePtr<BIGNUM>(BN_bin2bn(reinterpret_cast<const uint8_t*>(bytes.data()),
                                             static_cast<int>(bytes.size()), nullptr));
}

absl::StatusOr<crypto::UniquePtr<EVP_PKEY>> RsaPublicKey(const json& jwk,
                                                         absl::string_view key_name) {
  absl::StatusOr<std::string> n_bytes = Base64UrlMember(jwk, "n", key_name);
  if (!n_bytes.ok()) return n_bytes.status();
  absl::StatusOr<std::string> e_bytes = Base64UrlMember(jwk, "e", key_name);
  if (!e_bytes.ok()) return e_bytes.status();
  // Cheap size checks before any arithmetic (a leading zero byte still counts here, which is
  // what the bit checks below are for).
  if (n_bytes->size() > kMaxRsaBits / 8 + 1 || e_bytes->size() > kMaxRsaExponentBits / 8 + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, ": RSA modulus or exponent too large"));
  }
  crypto::UniquePtr<BIGNUM> n = ToBignum(*n_bytes);
  crypto::UniquePtr<BIGNUM> e = ToBignum(*e_bytes);
  if (n == nullptr || e == nullptr) return crypto::OpenSslInternalError("BN_bin2bn failed");
  const int n_bits = BN_num_bits(n.get());
  if (n_bits < kMinRsaBits || n_bits > kMaxRsaBits) {
    return absl::InvalidArgumentError(absl::StrCat("JWKS ", key_name, ": RSA modulus of ", n_bits,
                                                   " bits; ", kMinRsaBits, " to ", kMaxRsaBits,
                                                   " bits are accepted"));
  }
  if (!BN_is_odd(n.get())) {
    return absl::InvalidArgumentError(absl::StrCat("JWKS ", key_name, ": RSA modulus is even"));
  }
  if (!BN_is_odd(e.get()) || BN_is_one(e.get()) || BN_num_bits(e.get()) > kMaxRsaExponentBits) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, ": RSA exponent must be odd, above 1 and at most 64 bits"));
  }
  RsaPtr rsa(RSA_new());
  if (rsa == nullptr) return crypto::OpenSslInternalError("RSA_new failed");
  if (RSA_set0_key(rsa.get(), n.get(), e.get(), nullptr) != 1) {
    return crypto::OpenSslInternalError("RSA_set0_key failed");
  }
  n.release();  // now owned by rsa
  e.release();
  crypto::UniquePtr<EVP_PKEY> pkey(EVP_PKEY_new());
  if (pkey == nullptr || EVP_PKEY_assign_RSA(pkey.get(), rsa.get()) != 1) {
    return crypto::OpenSslInternalError("EVP_PKEY_assign_RSA failed");
  }
  rsa.release();  // now owned by pkey
  return pkey;
}

absl::StatusOr<crypto::UniquePtr<EVP_PKEY>> EcPublicKey(const json& jwk,
                                                        absl::string_view key_name) {
  absl::StatusOr<std::string> x_bytes = Base64UrlMember(jwk, "x", key_name);
  if (!x_bytes.ok()) return x_bytes.status();
  absl::StatusOr<std::string> y_bytes = Base64UrlMember(jwk, "y", key_name);
  if (!y_bytes.ok()) return y_bytes.status();
  if (x_bytes->size() != kP256CoordinateBytes || y_bytes->size() != kP256CoordinateBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, ": P-256 coordinates x and y must be 32 bytes each, not ",
                     x_bytes->size(), " and ", y_bytes->size()));
  }
  crypto::UniquePtr<BIGNUM> x = ToBignum(*x_bytes);
  crypto::UniquePtr<BIGNUM> y = ToBignum(*y_bytes);
  if (x == nullptr || y == nullptr) return crypto::OpenSslInternalError("BN_bin2bn failed");
  EcKeyPtr ec(EC_KEY_new_by_curve_name(NID_X9_62_prime256v1));
  if (ec == nullptr) return crypto::OpenSslInternalError("EC_KEY_new_by_curve_name failed");
  // Checks that the point is on the curve (and not the point at infinity).
  if (EC_KEY_set_public_key_affine_coordinates(ec.get(), x.get(), y.get()) != 1) {
    crypto::ClearOpenSslErrors();
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS ", key_name, ": (x, y) is not a point on the P-256 curve"));
  }
  crypto::UniquePtr<EVP_PKEY> pkey(EVP_PKEY_new());
  if (pkey == nullptr || EVP_PKEY_assign_EC_KEY(pkey.get(), ec.get()) != 1) {
    return crypto::OpenSslInternalError("EVP_PKEY_assign_EC_KEY failed");
  }
  ec.release();  // now owned by pkey
  return pkey;
}

// A string member of `jwk`, or "" if absent. Sets *bad if present but not a string.
std::string OptionalString(const json& jwk, const char* name, bool* bad) {
  auto it = jwk.find(name);
  if (it == jwk.end()) return "";
  if (!it->is_string()) {
    *bad = true;
    return "";
  }
  return it->get<std::string>();
}

}  // namespace

std::string QuoteUntrusted(absl::string_view value) {
  const bool cut = value.size() > kMaxQuotedBytes;
  if (cut) value = value.substr(0, kMaxQuotedBytes);
  return absl::StrCat("\"", absl::CHexEscape(value), cut ? "\"..." : "\"");
}

absl::StatusOr<std::string> DecodeBase64Url(absl::string_view text) {
  for (char c : text) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok) {
      return absl::InvalidArgumentError(
          "not unpadded base64url: only A-Z, a-z, 0-9, '-' and '_' are allowed");
    }
  }
  if (text.size() % 4 == 1) {
    return absl::InvalidArgumentError("not base64url: the length is impossible");
  }
  std::string decoded;
  if (!absl::WebSafeBase64Unescape(text, &decoded)) {
    return absl::InvalidArgumentError("not base64url");
  }
  // Only the canonical encoding: rejects texts whose unused trailing bits are not zero.
  if (absl::WebSafeBase64Escape(decoded) != text) {
    return absl::InvalidArgumentError("not canonical base64url (non-zero trailing bits)");
  }
  return decoded;
}

absl::string_view JwsAlgorithmName(JwkType type) {
  return type == JwkType::kRsa ? "RS256" : "ES256";
}

absl::StatusOr<JwksKeySet> JwksKeySet::Parse(absl::string_view text) {
  if (text.size() > kMaxJwksSize) {
    return absl::InvalidArgumentError(absl::StrCat("JWKS document of ", text.size(),
                                                   " bytes is larger than the limit of ",
                                                   kMaxJwksSize, " bytes"));
  }
  const json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(
        "JWKS document is not valid JSON: expected the output of "
        "`kubectl get --raw /openid/v1/jwks`");
  }
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("JWKS document is not a JSON object");
  }
  auto keys = doc.find("keys");
  if (keys == doc.end() || !keys->is_array()) {
    return absl::InvalidArgumentError("JWKS document has no \"keys\" array");
  }
  JwksKeySet set;
  for (size_t i = 0; i < keys->size(); ++i) {
    const json& jwk = (*keys)[i];
    if (!jwk.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("JWKS key ", i, " is not a JSON object"));
    }
    const std::string name = KeyName(i, jwk);
    bool bad = false;
    const std::string kty = OptionalString(jwk, "kty", &bad);
    const std::string alg = OptionalString(jwk, "alg", &bad);
    const std::string use = OptionalString(jwk, "use", &bad);
    const std::string crv = OptionalString(jwk, "crv", &bad);
    std::string kid = OptionalString(jwk, "kid", &bad);
    if (bad) {
      return absl::InvalidArgumentError(absl::StrCat(
          "JWKS ", name, ": \"kty\", \"kid\", \"alg\", \"use\" and \"crv\" must be strings"));
    }
    if (!use.empty() && use != "sig") {
      set.skipped_reasons_.push_back(
          absl::StrCat(name, ": use ", QuoteUntrusted(use), " is not \"sig\""));
      continue;
    }
    JwkType type;
    if (kty == "RSA") {
      type = JwkType::kRsa;
    } else if (kty == "EC") {
      type = JwkType::kEc;
      if (crv != "P-256") {
        set.skipped_reasons_.push_back(
            absl::StrCat(name, ": unsupported EC curve ", QuoteUntrusted(crv)));
        continue;
      }
    } else {
      set.skipped_reasons_.push_back(absl::StrCat(name, ": unsupported kty ", QuoteUntrusted(kty)));
      continue;
    }
    if (!alg.empty() && alg != JwsAlgorithmName(type)) {
      set.skipped_reasons_.push_back(absl::StrCat(name, ": unsupported alg ", QuoteUntrusted(alg)));
      continue;
    }
    absl::StatusOr<crypto::UniquePtr<EVP_PKEY>> pkey =
        type == JwkType::kRsa ? RsaPublicKey(jwk, name) : EcPublicKey(jwk, name);
    if (!pkey.ok()) return pkey.status();
    set.keys_.push_back(Jwk{std::move(kid), type, *std::move(pkey)});
  }
  if (set.keys_.empty()) {
    std::string message = absl::StrCat("JWKS document has no usable key (", keys->size(),
                                       " keys; RS256 and ES256 P-256 keys are supported)");
    for (const std::string& reason : set.skipped_reasons_) absl::StrAppend(&message, "; ", reason);
    if (message.size() > 1024) message = absl::StrCat(message.substr(0, 1024), "...");
    return absl::InvalidArgumentError(message);
  }
  return set;
}

std::vector<const Jwk*> JwksKeySet::Candidates(std::optional<absl::string_view> kid,
                                               JwkType type) const {
  std::vector<const Jwk*> result;
  for (const Jwk& key : keys_) {
    if (key.type == type && (!kid.has_value() || key.kid == *kid)) result.push_back(&key);
  }
  return result;
}

}  // namespace trellis::control_plane
