#include "common/identity/csr.h"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"
#include "common/identity/der.h"

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

// What a PKCS#10 request is made of, as ParseCsrDer reads it (RFC 2986):
//
//   CertificationRequest ::= SEQUENCE {
//     certificationRequestInfo  SEQUENCE {        -- the signed bytes
//       version        INTEGER { v1(0) },
//       subject        Name,                      -- read for shape only: never used
//       subjectPKInfo  SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve OID }, BIT STRING },
//       attributes [0] IMPLICIT SET OF Attribute OPTIONAL },  -- extensionRequest is read
//     signatureAlgorithm  SEQUENCE { ecdsa-with-SHA256 | ecdsa-with-SHA384 },  -- no parameters
//     signature           BIT STRING }            -- a DER ECDSA-Sig-Value
//
// The request is parsed by hand instead of with d2i_X509_REQ because OpenSSL 3 decodes the
// request's key through its provider decoders (OSSL_DECODER), which costs about three times the
// ECDSA verify itself; and because only this much is accepted anyway. The key is made from the
// raw point on a named curve and the signature checked with ECDSA over the exact signed bytes.

// OBJECT IDENTIFIER contents (the bytes after tag and length).
constexpr absl::string_view kOidEcPublicKey("\x2a\x86\x48\xce\x3d\x02\x01", 7);
constexpr absl::string_view kOidP256("\x2a\x86\x48\xce\x3d\x03\x01\x07", 8);
constexpr absl::string_view kOidP384("\x2b\x81\x04\x00\x22", 5);
constexpr absl::string_view kOidEcdsaSha256("\x2a\x86\x48\xce\x3d\x04\x03\x02", 8);
constexpr absl::string_view kOidEcdsaSha384("\x2a\x86\x48\xce\x3d\x04\x03\x03", 8);
constexpr absl::string_view kOidExtensionRequest("\x2a\x86\x48\x86\xf7\x0d\x01\x09\x0e", 9);
constexpr absl::string_view kOidSubjectAltName("\x55\x1d\x11", 3);

// Only for naming what was sent instead.
constexpr absl::string_view kOidRsaEncryption("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01", 9);
constexpr absl::string_view kOidRsaPss("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a", 9);
constexpr absl::string_view kOidEd25519("\x2b\x65\x70", 3);
constexpr absl::string_view kOidEd448("\x2b\x65\x71", 3);
constexpr absl::string_view kOidDsa("\x2a\x86\x48\xce\x38\x04\x01", 7);

absl::string_view NonEcKeyName(absl::string_view oid) {
  if (oid == kOidRsaEncryption || oid == kOidRsaPss) return "RSA";
  if (oid == kOidEd25519) return "Ed25519";
  if (oid == kOidEd448) return "Ed448";
  if (oid == kOidDsa) return "DSA";
  return "an unsupported key type";
}

absl::string_view OtherCurveName(absl::string_view oid) {
  struct Named {
    absl::string_view oid;
    absl::string_view name;
  };
  static constexpr Named kCurves[] = {
      {absl::string_view("\x2a\x86\x48\xce\x3d\x03\x01\x01", 8), "P-192"},
      {absl::string_view("\x2b\x81\x04\x00\x21", 5), "P-224"},
      {absl::string_view("\x2b\x81\x04\x00\x23", 5), "P-521"},
      {absl::string_view("\x2b\x81\x04\x00\x0a", 5), "secp256k1"},
  };
  for (const Named& curve : kCurves) {
    if (oid == curve.oid) return curve.name;
  }
  return "an unsupported curve";
}

constexpr absl::string_view kKeyPolicy = "Trellis accepts only ECDSA P-256 or P-384 keys";

absl::Status Malformed(absl::string_view der, absl::string_view what) {
  // The usual mistake is sending the PEM text; say so when the input does not even start as DER.
  const bool pem_like = der.empty() || der[0] != '\x30';
  return absl::InvalidArgumentError(
      absl::StrCat("CSR is not a DER-encoded PKCS#10 request (", what, ")",
                   pem_like ? "; send the DER bytes, not PEM text" : ""));
}

struct EcKeyDeleter {
  void operator()(EC_KEY* key) const { EC_KEY_free(key); }
};
using EcKeyPtr = std::unique_ptr<EC_KEY, EcKeyDeleter>;

// A new EC_KEY on P-256 or P-384. The curve is built once per process and copied into each key:
// EC_KEY_new_by_curve_name rebuilds it from the curve's constants every time (~12 us under
// OpenSSL 3, a sixth of a whole CSR check). The two groups live as long as the process (never
// freed, so no thread can see one go away at exit). Null if OpenSSL cannot allocate.
EcKeyPtr NewEcKey(int nid) {
  static const EC_GROUP* const p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  static const EC_GROUP* const p384 = EC_GROUP_new_by_curve_name(NID_secp384r1);
  const EC_GROUP* group = nid == NID_X9_62_prime256v1 ? p256 : p384;
  EcKeyPtr key(EC_KEY_new());
  if (group == nullptr || key == nullptr || EC_KEY_set_group(key.get(), group) != 1) {
    return nullptr;
  }
  return key;
}

// True if `s` is well-formed UTF-8 (RFC 3629: shortest form, no surrogates, at most U+10FFFF).
bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xe0) == 0xc0) {
      n = 1;
      cp = b & 0x1f;
    } else if ((b & 0xf0) == 0xe0) {
      n = 2;
      cp = b & 0x0f;
    } else if ((b & 0xf8) == 0xf0) {
      n = 3;
      cp = b & 0x07;
    } else {
      return false;
    }
    if (n >= s.size() - i) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

bool IsAscii(absl::string_view s) {
  for (char c : s) {
    if (static_cast<uint8_t>(c) > 0x7f) return false;
  }
  return true;
}

// A directory string Trellis accepts where it does not read the value (subject, attributes):
// UTF8String (well-formed), PrintableString, TeletexString or IA5String (7-bit). Other types are
// refused rather than passed over, so that nothing is accepted that the TLS library's own parser
// would refuse.
bool IsAcceptedString(uint8_t tag, absl::string_view value) {
  switch (tag) {
    case 0x0c:  // UTF8String
      return IsUtf8(value);
    case 0x13:  // PrintableString
      for (char c : value) {
        if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) &&
            absl::string_view(" '()+,-./:=?").find(c) == absl::string_view::npos) {
          return false;
        }
      }
      return true;
    case 0x14:  // TeletexString (read as Latin-1)
      return true;
    case 0x16:  // IA5String
      return IsAscii(value);
    default:
      return false;
  }
}

// Checks the shape of a Name: SEQUENCE OF SET OF SEQUENCE { OID, one value }. The subject is never
// used (identity comes from the credential), but a request is only accepted whole.
bool IsWellFormedName(absl::string_view contents) {
  der::Reader rdns(contents);
  while (!rdns.empty()) {
    absl::string_view rdn;
    if (!rdns.Read(der::kSet, &rdn) || rdn.empty()) return false;
    der::Reader atvs(rdn);
    while (!atvs.empty()) {
      absl::string_view atv, oid, value;
      uint8_t tag = 0;
      if (!atvs.Read(der::kSequence, &atv)) return false;
      der::Reader parts(atv);
      if (!parts.Read(der::kObjectIdentifier, &oid) || !der::IsValidOid(oid) ||
          !parts.ReadAny(&tag, &value) || !parts.empty() || !IsAcceptedString(tag, value)) {
        return false;
      }
    }
  }
  return true;
}

// Appends the URI entries of a GeneralNames value (the subjectAltName extension's value).
absl::Status ReadUriSans(absl::string_view ext_value, std::vector<std::string>* uris) {
  const absl::Status malformed =
      absl::InvalidArgumentError("CSR subjectAltName extension is malformed");
  der::Reader outer(ext_value);
  absl::string_view names_contents;
  if (!outer.Read(der::kSequence, &names_contents) || !outer.empty() || names_contents.empty()) {
    return malformed;
  }
  der::Reader names(names_contents);
  while (!names.empty()) {
    uint8_t tag = 0;
    absl::string_view value;
    if (!names.ReadAny(&tag, &value)) return malformed;
    // GeneralName is a CHOICE of context-specific tags [0]..[8].
    if ((tag & 0xc0) != der::kContextSpecific || (tag & 0x1f) > 8) return malformed;
    switch (tag) {
      case der::kContextSpecific | 1:  // rfc822Name, IA5String
      case der::kContextSpecific | 2:  // dNSName, IA5String
        if (!IsAscii(value)) return malformed;
        break;
      case der::kContextSpecific | 6:  // uniformResourceIdentifier, IA5String
        if (!IsAscii(value)) return malformed;
        uris->emplace_back(value);
        break;
      case der::kContextSpecific | 7:  // iPAddress
        if (value.size() != 4 && value.size() != 16) return malformed;
        break;
      default:
        return absl::InvalidArgumentError(
            "CSR subjectAltName holds a name type Trellis does not accept (only URI, DNS, email "
            "and IP names)");
    }
  }
  return absl::OkStatus();
}

// Reads the attributes' extensionRequest (if any) for its subjectAltName URIs. Other attributes
// and other extensions are allowed and ignored: the CA decides every extension of the leaf.
absl::Status ReadAttributes(absl::string_view der_text, absl::string_view attributes,
                            std::vector<std::string>* uris) {
  der::Reader attrs(attributes);
  bool seen_extension_request = false;
  while (!attrs.empty()) {
    absl::string_view attr, type, values;
    if (!attrs.Read(der::kSequence, &attr)) return Malformed(der_text, "bad attribute");
    der::Reader parts(attr);
    if (!parts.Read(der::kObjectIdentifier, &type) || !der::IsValidOid(type) ||
        !parts.Read(der::kSet, &values) || !parts.empty()) {
      return Malformed(der_text, "bad attribute");
    }
    if (type != kOidExtensionRequest) {
      // Not read, but only plain values are accepted (a challengePassword, an unstructuredName).
      der::Reader set(values);
      while (!set.empty()) {
        uint8_t tag = 0;
        absl::string_view value;
        if (!set.ReadAny(&tag, &value) ||
            (tag != der::kSequence && tag != der::kSet && !IsAcceptedString(tag, value))) {
          return Malformed(der_text, "bad attribute value");
        }
      }
      continue;
    }
    if (seen_extension_request) {
      return absl::InvalidArgumentError("CSR has more than one extensionRequest attribute");
    }
    seen_extension_request = true;
    // SET OF exactly one Extensions ::= SEQUENCE OF Extension.
    der::Reader set(values);
    absl::string_view extensions_contents;
    if (!set.Read(der::kSequence, &extensions_contents) || !set.empty()) {
      return absl::InvalidArgumentError(
          "CSR extensionRequest attribute is malformed (it must hold one list of extensions)");
    }
    der::Reader extensions(extensions_contents);
    std::vector<absl::string_view> seen_oids;
    while (!extensions.empty()) {
      absl::string_view ext, oid, value, critical;
      bool has_critical = false;
      if (!extensions.Read(der::kSequence, &ext)) {
        return absl::InvalidArgumentError("CSR extensionRequest holds a malformed extension");
      }
      der::Reader fields(ext);
      if (!fields.Read(der::kObjectIdentifier, &oid) || !der::IsValidOid(oid) ||
          !fields.ReadOptional(der::kBoolean, &critical, &has_critical) ||
          // DER: critical is absent when FALSE (the default) and 0xff when TRUE.
          (has_critical && critical != absl::string_view("\xff", 1)) ||
          !fields.Read(der::kOctetString, &value) || !fields.empty()) {
        return absl::InvalidArgumentError("CSR extensionRequest holds a malformed extension");
      }
      if (std::find(seen_oids.begin(), seen_oids.end(), oid) != seen_oids.end()) {
        return absl::InvalidArgumentError(
            "CSR extensionRequest lists the same extension twice (RFC 5280 forbids it)");
      }
      seen_oids.push_back(oid);
      if (oid == kOidSubjectAltName) {
        if (absl::Status s = ReadUriSans(value, uris); !s.ok()) return s;
      }
    }
  }
  return absl::OkStatus();
}

// The requester's key from a SubjectPublicKeyInfo, with the key policy applied.
absl::StatusOr<EcKeyPtr> ReadPublicKey(absl::string_view der_text, absl::string_view spki,
                                       KeyAlgorithm* algorithm) {
  der::Reader fields(spki);
  absl::string_view alg, key_bits, alg_oid, point;
  if (!fields.Read(der::kSequence, &alg) || !fields.Read(der::kBitString, &key_bits) ||
      !fields.empty()) {
    return Malformed(der_text, "bad SubjectPublicKeyInfo");
  }
  der::Reader alg_fields(alg);
  if (!alg_fields.Read(der::kObjectIdentifier, &alg_oid) || !der::IsValidOid(alg_oid)) {
    return Malformed(der_text, "bad public key algorithm");
  }
  if (alg_oid != kOidEcPublicKey) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR key is ", NonEcKeyName(alg_oid), "; ", kKeyPolicy));
  }
  uint8_t params_tag = 0;
  absl::string_view curve_oid;
  if (!alg_fields.ReadAny(&params_tag, &curve_oid) || !alg_fields.empty()) {
    return Malformed(der_text, "bad EC key parameters");
  }
  if (params_tag == der::kSequence) {
    // OpenSSL would read such a key as P-256, but the leaf would copy the explicit parameters and
    // every peer (RFC 5480, strict verification) would refuse it.
    return absl::InvalidArgumentError(
        "CSR key uses explicit EC curve parameters; encode it with the named curve (P-256 or "
        "P-384) as RFC 5480 requires");
  }
  if (params_tag != der::kObjectIdentifier || !der::IsValidOid(curve_oid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR key has no named curve; ", kKeyPolicy, " (RFC 5480 namedCurve)"));
  }
  int nid = NID_undef;
  if (curve_oid == kOidP256) {
    nid = NID_X9_62_prime256v1;
    *algorithm = KeyAlgorithm::kEcdsaP256;
  } else if (curve_oid == kOidP384) {
    nid = NID_secp384r1;
    *algorithm = KeyAlgorithm::kEcdsaP384;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR key is ECDSA on ", OtherCurveName(curve_oid), "; ", kKeyPolicy));
  }
  if (!der::BitStringBytes(key_bits, &point)) {
    return Malformed(der_text, "public key BIT STRING has unused bits");
  }
  const size_t coordinate = nid == NID_X9_62_prime256v1 ? 32 : 48;
  if (point.size() != 1 + 2 * coordinate || point[0] != '\x04') {
    return absl::InvalidArgumentError(absl::StrCat("CSR public key is not an uncompressed ",
                                                   KeyAlgorithmName(*algorithm),
                                                   " point (04 || X || Y, ", 1 + 2 * coordinate,
                                                   " bytes); compressed points are not accepted"));
  }
  EcKeyPtr key = NewEcKey(nid);
  if (key == nullptr) return crypto::OpenSslInternalError("cannot allocate an EC key");
  struct PointDeleter {
    void operator()(EC_POINT* p) const { EC_POINT_free(p); }
  };
  const EC_GROUP* group = EC_KEY_get0_group(key.get());
  std::unique_ptr<EC_POINT, PointDeleter> q(EC_POINT_new(group));
  if (q == nullptr) return crypto::OpenSslInternalError("cannot allocate an EC point");
  // oct2point checks that the point is on the curve (an uncompressed point of the right size is
  // never the point at infinity); P-256 and P-384 have cofactor 1, so that is all a public key
  // needs. Not EC_KEY_oct2key: Debian's BoringSSL lacks it.
  if (EC_POINT_oct2point(group, q.get(), reinterpret_cast<const uint8_t*>(point.data()),
                         point.size(), nullptr) != 1 ||
      EC_KEY_set_public_key(key.get(), q.get()) != 1) {
    crypto::ClearOpenSslErrors();
    return absl::InvalidArgumentError(
        absl::StrCat("CSR public key is not a point on ", KeyAlgorithmName(*algorithm)));
  }
  return key;
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

absl::StatusOr<ParsedCsr> ParseCsrDer(absl::string_view der_text) {
  if (der_text.empty()) {
    return absl::InvalidArgumentError("CSR is empty: send a DER-encoded PKCS#10 request");
  }
  if (der_text.size() > kMaxCsrBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR is ", der_text.size(), " bytes; the limit is ", kMaxCsrBytes));
  }
  // CertificationRequest.
  der::Reader outer(der_text);
  absl::string_view request;
  if (!outer.Read(der::kSequence, &request)) {
    return Malformed(der_text, "it does not start with a complete SEQUENCE");
  }
  if (!outer.empty()) {
    return Malformed(der_text, absl::StrCat(outer.remaining(), " bytes follow the request"));
  }
  der::Reader request_fields(request);
  absl::string_view info, info_element, sig_alg, sig_bits;
  if (!request_fields.Read(der::kSequence, &info, &info_element) ||
      !request_fields.Read(der::kSequence, &sig_alg) ||
      !request_fields.Read(der::kBitString, &sig_bits) || !request_fields.empty()) {
    return Malformed(der_text, "expected request info, signature algorithm and signature");
  }

  // CertificationRequestInfo.
  der::Reader info_fields(info);
  absl::string_view version, subject, spki, attributes;
  bool has_attributes = false;
  if (!info_fields.Read(der::kInteger, &version) || !info_fields.Read(der::kSequence, &subject) ||
      !info_fields.Read(der::kSequence, &spki) ||
      // attributes [0] IMPLICIT SET OF: constructed context tag 0. RFC 2986 requires it, but some
      // encoders leave an empty one out, as OpenSSL tolerates.
      !info_fields.ReadOptional(der::kContextSpecific | der::kConstructed | 0, &attributes,
                                &has_attributes) ||
      !info_fields.empty()) {
    return Malformed(der_text, "expected version, subject, public key and attributes");
  }
  if (version != absl::string_view("\x00", 1)) {
    return absl::InvalidArgumentError(
        "CSR version is not v1 (encoded 0), the only PKCS#10 version (RFC 2986)");
  }
  if (!IsWellFormedName(subject)) return Malformed(der_text, "bad subject name");

  ParsedCsr parsed;
  absl::StatusOr<EcKeyPtr> key = ReadPublicKey(der_text, spki, &parsed.algorithm);
  if (!key.ok()) return key.status();
  if (has_attributes) {
    absl::Status s = ReadAttributes(der_text, attributes, &parsed.requested_uri_sans);
    if (!s.ok()) return s;
  }

  // The signature: ECDSA with SHA-256 or SHA-384 (parameters absent, RFC 5758) over the exact
  // CertificationRequestInfo bytes.
  der::Reader sig_alg_fields(sig_alg);
  absl::string_view sig_oid, signature;
  if (!sig_alg_fields.Read(der::kObjectIdentifier, &sig_oid) || !der::IsValidOid(sig_oid) ||
      !sig_alg_fields.empty() || (sig_oid != kOidEcdsaSha256 && sig_oid != kOidEcdsaSha384)) {
    return absl::InvalidArgumentError(
        "CSR signature algorithm is not ecdsa-with-SHA256 or ecdsa-with-SHA384 without "
        "parameters; sign the request with its ECDSA key");
  }
  if (!der::BitStringBytes(sig_bits, &signature)) {
    return Malformed(der_text, "signature BIT STRING has unused bits");
  }
  uint8_t digest[SHA384_DIGEST_LENGTH];
  size_t digest_len = 0;
  const auto* signed_bytes = reinterpret_cast<const uint8_t*>(info_element.data());
  if (sig_oid == kOidEcdsaSha256) {
    SHA256(signed_bytes, info_element.size(), digest);
    digest_len = SHA256_DIGEST_LENGTH;
  } else {
    SHA384(signed_bytes, info_element.size(), digest);
    digest_len = SHA384_DIGEST_LENGTH;
  }
  // ECDSA_verify refuses a signature that is not the DER encoding of SEQUENCE { r, s } (both
  // backends re-encode and compare).
  const int verified = ECDSA_verify(0, digest, static_cast<int>(digest_len),
                                    reinterpret_cast<const uint8_t*>(signature.data()),
                                    static_cast<int>(signature.size()), key->get());
  crypto::ClearOpenSslErrors();
  if (verified != 1) {
    return absl::InvalidArgumentError(
        "CSR signature does not verify: the request was not signed by the key it contains");
  }

  parsed.public_key.reset(EVP_PKEY_new());
  // An EVP_PKEY over the EC_KEY itself (not a provider key): the CA then encodes it into the leaf
  // directly (see SetSubjectPublicKey in common/identity/ca.cc).
  if (parsed.public_key == nullptr ||
      EVP_PKEY_set1_EC_KEY(parsed.public_key.get(), key->get()) != 1) {
    return crypto::OpenSslInternalError("cannot wrap the CSR public key");
  }
  return parsed;
}

}  // namespace trellis::identity
