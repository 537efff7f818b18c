#include "common/identity/csr.h"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"

namespace trellis::identity {
namespace {

// Builds a subjectAltName extension holding one URI.
absl::StatusOr<crypto::UniquePtr<GENERAL_NAMES>> UriSan(absl::string_view uri) {
  crypto::UniquePtr<GENERAL_NAMES> names(GENERAL_NAMES_new());
  crypto::UniquePtr<GENERAL_NAME> name(GENERAL_NAME_new());
  ASN1_IA5STRING* value = ASN1_IA5STRING_new();
  if (names == nullptr || name == nullptr || value == nullptr) {
    ASN1_IA5STRING_free(value);
    return crypto::OpenSslInternalError("cannot allocate a SAN");
  }
  if (ASN1_STRING_set(value, uri.data(), static_cast<int>(uri.size())) != 1) {
    ASN1_IA5STRING_free(value);
    return crypto::OpenSslInternalError("cannot set a SAN value");
  }
  GENERAL_NAME_set0_value(name.get(), GEN_URI, value);  // `name` now owns `value`.
  if (sk_GENERAL_NAME_push(names.get(), name.get()) == 0) {
    return crypto::OpenSslInternalError("cannot add a SAN");
  }
  name.release();  // `names` owns it now.
  return names;
}

bool HasExplicitCurveParameters(const EVP_PKEY* key) {
  const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(const_cast<EVP_PKEY*>(key));
  const EC_GROUP* group = ec == nullptr ? nullptr : EC_KEY_get0_group(ec);
  // BoringSSL always reports a named curve (it cannot parse explicit parameters at all).
  return group != nullptr && EC_GROUP_get_asn1_flag(group) != OPENSSL_EC_NAMED_CURVE;
}

}  // namespace

absl::StatusOr<std::string> CreateCsrDer(const PrivateKey& key, const std::optional<SpiffeId>& id) {
  crypto::UniquePtr<X509_REQ> req(X509_REQ_new());
  if (req == nullptr || X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key.get()) != 1) {
    return crypto::OpenSslInternalError("cannot build the CSR");
  }
  if (id.has_value()) {
    absl::StatusOr<crypto::UniquePtr<GENERAL_NAMES>> san = UriSan(id->ToString());
    if (!san.ok()) return san.status();
    crypto::X509ExtensionStack extensions(sk_X509_EXTENSION_new_null());
    X509_EXTENSION* ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, san->get());
    if (extensions == nullptr || ext == nullptr ||
        sk_X509_EXTENSION_push(extensions.get(), ext) == 0) {
      X509_EXTENSION_free(ext);
      return crypto::OpenSslInternalError("cannot add the SAN to the CSR");
    }
    if (X509_REQ_add_extensions(req.get(), extensions.get()) != 1) {
      return crypto::OpenSslInternalError("cannot add extensions to the CSR");
    }
  }
  if (X509_REQ_sign(req.get(), key.get(), EVP_sha256()) <= 0) {
    return crypto::OpenSslInternalError("cannot sign the CSR");
  }
  uint8_t* der = nullptr;
  const int len = i2d_X509_REQ(req.get(), &der);
  if (len <= 0) return crypto::OpenSslInternalError("cannot encode the CSR");
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<ParsedCsr> ParseCsrDer(absl::string_view der) {
  if (der.empty()) {
    return absl::InvalidArgumentError("CSR is empty: send a DER-encoded PKCS#10 request");
  }
  if (der.size() > kMaxCsrBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR is ", der.size(), " bytes; the limit is ", kMaxCsrBytes));
  }
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  const unsigned char* const end = p + der.size();
  crypto::UniquePtr<X509_REQ> req(
      d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (req == nullptr || p != end) {
    crypto::ClearOpenSslErrors();
    return absl::InvalidArgumentError(
        "CSR is not a DER-encoded PKCS#10 request (send the DER bytes, not PEM text)");
  }
  crypto::UniquePtr<EVP_PKEY> key(X509_REQ_get_pubkey(req.get()));
  if (key == nullptr) {
    crypto::ClearOpenSslErrors();
    return absl::InvalidArgumentError(
        "CSR public key cannot be read (unsupported algorithm or curve); Trellis accepts only "
        "ECDSA P-256 or P-384 keys");
  }
  const KeyAlgorithm algorithm = KeyAlgorithmOf(key.get());
  if (algorithm != KeyAlgorithm::kEcdsaP256 && algorithm != KeyAlgorithm::kEcdsaP384) {
    return absl::InvalidArgumentError(absl::StrCat("CSR key is ", KeyAlgorithmName(algorithm),
                                                   "; Trellis accepts only ECDSA P-256 or "
                                                   "P-384 keys"));
  }
  if (HasExplicitCurveParameters(key.get())) {
    // OpenSSL reads such a key as P-256, but the leaf would copy the explicit parameters and
    // every peer (RFC 5480, strict verification) would refuse it.
    return absl::InvalidArgumentError(
        "CSR key uses explicit EC curve parameters; encode it with the named curve (P-256 or "
        "P-384) as RFC 5480 requires");
  }
  if (X509_REQ_verify(req.get(), key.get()) != 1) {
    crypto::ClearOpenSslErrors();
    return absl::InvalidArgumentError(
        "CSR signature does not verify: the request was not signed by the key it contains");
  }
  ParsedCsr parsed;
  parsed.algorithm = algorithm;
  crypto::X509ExtensionStack extensions(X509_REQ_get_extensions(req.get()));
  if (extensions != nullptr) {
    for (size_t i = 0; i < sk_X509_EXTENSION_num(extensions.get()); ++i) {
      X509_EXTENSION* ext = sk_X509_EXTENSION_value(extensions.get(), i);
      if (OBJ_obj2nid(X509_EXTENSION_get_object(ext)) != NID_subject_alt_name) continue;
      crypto::UniquePtr<GENERAL_NAMES> names(static_cast<GENERAL_NAMES*>(X509V3_EXT_d2i(ext)));
      if (names == nullptr) {
        crypto::ClearOpenSslErrors();
        return absl::InvalidArgumentError("CSR subjectAltName extension is malformed");
      }
      for (size_t j = 0; j < sk_GENERAL_NAME_num(names.get()); ++j) {
        const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), j);
        if (name->type != GEN_URI) continue;
        const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
        parsed.requested_uri_sans.emplace_back(
            reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
            static_cast<size_t>(ASN1_STRING_length(uri)));
      }
    }
  }
  crypto::ClearOpenSslErrors();
  parsed.public_key = std::move(key);
  return parsed;
}

}  // namespace trellis::identity
