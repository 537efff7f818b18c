#include "common/identity/ca.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"

namespace trellis::identity {
namespace {

constexpr int kSerialBytes = 16;

absl::Status SetRandomSerial(X509* cert) {
  uint8_t bytes[kSerialBytes];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return crypto::OpenSslInternalError("cannot draw a random serial");
  }
  // Positive and of full length: the top bit clear keeps DER from adding a sign byte; the next
  // bit set keeps 128 bits of entropy from being shortened by leading zeros.
  bytes[0] = (bytes[0] & 0x7f) | 0x40;
  crypto::UniquePtr<BIGNUM> bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  crypto::UniquePtr<ASN1_INTEGER> serial(bn == nullptr ? nullptr
                                                       : BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (serial == nullptr || X509_set_serialNumber(cert, serial.get()) != 1) {
    return crypto::OpenSslInternalError("cannot set the serial");
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* cert, absl::Time not_before, absl::Time not_after) {
  if (not_after <= not_before) {
    return absl::InvalidArgumentError(absl::StrCat("validity is empty: notAfter ",
                                                   absl::FormatTime(not_after), " is not after ",
                                                   absl::FormatTime(not_before)));
  }
  crypto::UniquePtr<ASN1_TIME> nb(ASN1_TIME_set(nullptr, absl::ToTimeT(not_before)));
  crypto::UniquePtr<ASN1_TIME> na(ASN1_TIME_set(nullptr, absl::ToTimeT(not_after)));
  if (nb == nullptr || na == nullptr || X509_set1_notBefore(cert, nb.get()) != 1 ||
      X509_set1_notAfter(cert, na.get()) != 1) {
    return crypto::OpenSslInternalError("cannot set the validity");
  }
  return absl::OkStatus();
}

// The extension `nid` holding `value`, encoded as X509_add1_ext_i2d would add it.
absl::StatusOr<X509ExtensionPtr> MakeExtension(int nid, void* value, bool critical) {
  X509ExtensionPtr ext(X509V3_EXT_i2d(nid, critical ? 1 : 0, value));
  if (ext == nullptr) {
    return crypto::OpenSslInternalError(absl::StrCat("cannot encode extension ", OBJ_nid2sn(nid)));
  }
  return ext;
}

// Appends a copy of `ext` (certificates here never carry an extension twice).
absl::Status AppendExtension(X509* cert, const X509_EXTENSION* ext) {
  if (X509_add_ext(cert, const_cast<X509_EXTENSION*>(ext), -1) != 1) {
    return crypto::OpenSslInternalError("cannot add an extension");
  }
  return absl::OkStatus();
}

absl::Status AddExtension(X509* cert, absl::StatusOr<X509ExtensionPtr> ext) {
  if (!ext.ok()) return ext.status();
  return AppendExtension(cert, ext->get());
}

absl::StatusOr<X509ExtensionPtr> BasicConstraints(bool is_ca, int path_length) {
  crypto::UniquePtr<BASIC_CONSTRAINTS> bc(BASIC_CONSTRAINTS_new());
  if (bc == nullptr) return crypto::OpenSslInternalError("cannot allocate basicConstraints");
  bc->ca = is_ca ? 0xff : 0;
  if (is_ca && path_length >= 0) {
    bc->pathlen = ASN1_INTEGER_new();
    if (bc->pathlen == nullptr || ASN1_INTEGER_set(bc->pathlen, path_length) != 1) {
      return crypto::OpenSslInternalError("cannot set pathLenConstraint");
    }
  }
  return MakeExtension(NID_basic_constraints, bc.get(), /*critical=*/true);
}

absl::StatusOr<X509ExtensionPtr> KeyUsage(std::initializer_list<int> bits) {
  crypto::UniquePtr<ASN1_BIT_STRING> usage(ASN1_BIT_STRING_new());
  if (usage == nullptr) return crypto::OpenSslInternalError("cannot allocate keyUsage");
  for (int bit : bits) {
    if (ASN1_BIT_STRING_set_bit(usage.get(), bit, 1) != 1) {
      return crypto::OpenSslInternalError("cannot set a keyUsage bit");
    }
  }
  return MakeExtension(NID_key_usage, usage.get(), /*critical=*/true);
}

absl::StatusOr<X509ExtensionPtr> ExtendedKeyUsage() {
  crypto::UniquePtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
  if (eku == nullptr || sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_server_auth)) == 0 ||
      sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_client_auth)) == 0) {
    return crypto::OpenSslInternalError("cannot build extendedKeyUsage");
  }
  return MakeExtension(NID_ext_key_usage, eku.get(), /*critical=*/false);
}

// SKI = SHA-1 of the subjectPublicKey bits (RFC 5280 method 1).
absl::Status AddSubjectKeyId(X509* cert) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_pubkey_digest(cert, EVP_sha1(), digest, &len) != 1) {
    return crypto::OpenSslInternalError("cannot hash the public key");
  }
  crypto::UniquePtr<ASN1_OCTET_STRING> ski(ASN1_OCTET_STRING_new());
  if (ski == nullptr || ASN1_OCTET_STRING_set(ski.get(), digest, static_cast<int>(len)) != 1) {
    return crypto::OpenSslInternalError("cannot build subjectKeyIdentifier");
  }
  return AddExtension(cert,
                      MakeExtension(NID_subject_key_identifier, ski.get(), /*critical=*/false));
}

absl::Status MissingIssuerKeyIdError() {
  return absl::FailedPreconditionError(
      "issuer certificate has no subjectKeyIdentifier; re-create the CA with trellisctl ca init");
}

// The AKI naming `issuer`'s SKI; null if the issuer has none.
absl::StatusOr<X509ExtensionPtr> AuthorityKeyId(X509* issuer) {
  const ASN1_OCTET_STRING* issuer_ski = X509_get0_subject_key_id(issuer);
  if (issuer_ski == nullptr) return X509ExtensionPtr();
  crypto::UniquePtr<AUTHORITY_KEYID> akid(AUTHORITY_KEYID_new());
  if (akid == nullptr) return crypto::OpenSslInternalError("cannot allocate AKI");
  akid->keyid = ASN1_OCTET_STRING_dup(issuer_ski);
  if (akid->keyid == nullptr) return crypto::OpenSslInternalError("cannot copy the issuer SKI");
  return MakeExtension(NID_authority_key_identifier, akid.get(), /*critical=*/false);
}

absl::Status AddAuthorityKeyId(X509* cert, X509* issuer) {
  absl::StatusOr<X509ExtensionPtr> aki = AuthorityKeyId(issuer);
  if (!aki.ok()) return aki.status();
  if (*aki == nullptr) return MissingIssuerKeyIdError();
  return AppendExtension(cert, aki->get());
}

absl::Status AddUriAndDnsSans(X509* cert, const std::string& uri,
                              const std::vector<std::string>& dns_names) {
  crypto::UniquePtr<GENERAL_NAMES> names(GENERAL_NAMES_new());
  if (names == nullptr) return crypto::OpenSslInternalError("cannot allocate SANs");
  auto push = [&](int type, const std::string& text) -> absl::Status {
    crypto::UniquePtr<GENERAL_NAME> name(GENERAL_NAME_new());
    ASN1_IA5STRING* value = ASN1_IA5STRING_new();
    if (name == nullptr || value == nullptr ||
        ASN1_STRING_set(value, text.data(), static_cast<int>(text.size())) != 1) {
      ASN1_IA5STRING_free(value);
      return crypto::OpenSslInternalError("cannot build a SAN");
    }
    GENERAL_NAME_set0_value(name.get(), type, value);
    if (sk_GENERAL_NAME_push(names.get(), name.get()) == 0) {
      return crypto::OpenSslInternalError("cannot add a SAN");
    }
    name.release();
    return absl::OkStatus();
  };
  if (absl::Status s = push(GEN_URI, uri); !s.ok()) return s;
  for (const std::string& dns : dns_names) {
    if (dns.empty() || dns.find_first_of(" ,/:@") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("invalid DNS name \"", dns, "\""));
    }
    if (absl::Status s = push(GEN_DNS, dns); !s.ok()) return s;
  }
  // The SAN is critical because the subject is empty (RFC 5280 4.2.1.6, X.509-SVID 4.1).
  return AddExtension(cert, MakeExtension(NID_subject_alt_name, names.get(), /*critical=*/true));
}

absl::Status SetSubject(X509* cert, const CaCertificateSpec& spec) {
  X509_NAME* name = X509_get_subject_name(cert);
  if (!spec.organization.empty() &&
      X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(spec.organization.c_str()),
                                 -1, -1, 0) != 1) {
    return crypto::OpenSslInternalError("cannot set the subject O");
  }
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(spec.common_name.c_str()),
                                 -1, -1, 0) != 1) {
    return crypto::OpenSslInternalError("cannot set the subject CN");
  }
  return absl::OkStatus();
}

const EVP_MD* DigestFor(const PrivateKey& signer) {
  return signer.algorithm() == KeyAlgorithm::kEcdsaP384 ? EVP_sha384() : EVP_sha256();
}

absl::StatusOr<Certificate> Sign(crypto::UniquePtr<X509> cert, const PrivateKey& signer) {
  if (X509_sign(cert.get(), signer.get(), DigestFor(signer)) <= 0) {
    return crypto::OpenSslInternalError("cannot sign the certificate");
  }
  return Certificate::FromX509(cert.get());
}

// Sets the certificate's subjectPublicKeyInfo to `key`.
//
// OpenSSL 3 holds the keys its decoders produce (a CSR's, a PEM file's) in a provider, and
// X509_set_pubkey encodes such a key with the provider encoders and decodes the DER back into a
// second key, which it then discards: ~150 us, most of a leaf's signing cost. For an EC key that
// work is avoided by handing X509_set_pubkey an EVP_PKEY that wraps the key's EC_KEY directly: it
// takes the built-in path (i2o_ECPublicKey, named curve, the key's own point format), producing the
// same SubjectPublicKeyInfo bytes, and keeps that EVP_PKEY as the certificate's public key.
// EVP_PKEY_get0_EC_KEY is deprecated in OpenSSL 3 but is the one call both backends share; OpenSSL
// caches the EC_KEY in the key, and ParseCsrDer has already made it. BoringSSL only has that path.
absl::Status SetSubjectPublicKey(X509* cert, EVP_PKEY* key) {
  if (EVP_PKEY_id(key) != EVP_PKEY_EC) {
    if (X509_set_pubkey(cert, key) != 1) return crypto::OpenSslInternalError("cannot set the key");
    return absl::OkStatus();
  }
  // OpenSSL 3 returns the cached EC_KEY as const; set1 only takes a reference on it.
  auto* ec = const_cast<EC_KEY*>(EVP_PKEY_get0_EC_KEY(key));
  crypto::UniquePtr<EVP_PKEY> direct(EVP_PKEY_new());
  if (ec == nullptr || direct == nullptr || EVP_PKEY_set1_EC_KEY(direct.get(), ec) != 1 ||
      X509_set_pubkey(cert, direct.get()) != 1) {
    return crypto::OpenSslInternalError("cannot set the EC public key");
  }
  return absl::OkStatus();
}

// A fresh v3 certificate with serial, public key and validity set.
absl::StatusOr<crypto::UniquePtr<X509>> NewCertificate(EVP_PKEY* subject_key, absl::Time not_before,
                                                       absl::Time not_after) {
  crypto::UniquePtr<X509> cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), 2) != 1) {
    return crypto::OpenSslInternalError("cannot build a certificate");
  }
  if (absl::Status s = SetSubjectPublicKey(cert.get(), subject_key); !s.ok()) return s;
  if (absl::Status s = SetRandomSerial(cert.get()); !s.ok()) return s;
  if (absl::Status s = SetValidity(cert.get(), not_before, not_after); !s.ok()) return s;
  return cert;
}

absl::Status CheckIssuer(const Certificate& issuer, const PrivateKey& issuer_key) {
  if (!issuer.is_ca()) {
    return absl::InvalidArgumentError("the issuing certificate is not a CA (basicConstraints)");
  }
  if (!KeyMatchesCertificate(issuer_key, issuer)) {
    // Otherwise every certificate would carry a signature no peer can verify.
    return absl::InvalidArgumentError("the issuing key does not match the issuing certificate");
  }
  return absl::OkStatus();
}

}  // namespace

bool KeyMatchesCertificate(const PrivateKey& key, const Certificate& cert) {
  const bool match = X509_check_private_key(cert.get(), key.get()) == 1;
  crypto::ClearOpenSslErrors();
  return match;
}

absl::StatusOr<Certificate> CreateRootCertificate(const PrivateKey& key,
                                                  const CaCertificateSpec& spec) {
  absl::StatusOr<crypto::UniquePtr<X509>> cert =
      NewCertificate(key.get(), spec.not_before, spec.not_after);
  if (!cert.ok()) return cert.status();
  X509* x = cert->get();
  absl::Status s = SetSubject(x, spec);
  if (s.ok() && X509_set_issuer_name(x, X509_get_subject_name(x)) != 1) {
    s = crypto::OpenSslInternalError("cannot set the issuer");
  }
  if (s.ok()) s = AddExtension(x, BasicConstraints(/*is_ca=*/true, spec.path_length));
  if (s.ok()) s = AddExtension(x, KeyUsage({5 /*keyCertSign*/, 6 /*cRLSign*/}));
  if (s.ok()) s = AddSubjectKeyId(x);
  if (!s.ok()) return s;
  return Sign(*std::move(cert), key);
}

absl::StatusOr<Certificate> CreateIntermediateCertificate(const Certificate& issuer,
                                                          const PrivateKey& issuer_key,
                                                          EVP_PKEY* subject_key,
                                                          const CaCertificateSpec& spec) {
  if (absl::Status s = CheckIssuer(issuer, issuer_key); !s.ok()) return s;
  absl::StatusOr<crypto::UniquePtr<X509>> cert =
      NewCertificate(subject_key, spec.not_before, std::min(spec.not_after, issuer.not_after()));
  if (!cert.ok()) return cert.status();
  X509* x = cert->get();
  absl::Status s = SetSubject(x, spec);
  if (s.ok() && X509_set_issuer_name(x, X509_get_subject_name(issuer.get())) != 1) {
    s = crypto::OpenSslInternalError("cannot set the issuer");
  }
  if (s.ok()) s = AddExtension(x, BasicConstraints(/*is_ca=*/true, spec.path_length));
  if (s.ok()) s = AddExtension(x, KeyUsage({5 /*keyCertSign*/, 6 /*cRLSign*/}));
  if (s.ok()) s = AddSubjectKeyId(x);
  if (s.ok()) s = AddAuthorityKeyId(x, issuer.get());
  if (!s.ok()) return s;
  return Sign(*std::move(cert), issuer_key);
}

absl::StatusOr<Certificate> IssueLeafCertificate(const Certificate& issuer,
                                                 const PrivateKey& issuer_key,
                                                 EVP_PKEY* subject_key,
                                                 const LeafCertificateSpec& spec) {
  absl::StatusOr<LeafIssuer> leaf_issuer = LeafIssuer::Create(issuer, issuer_key);
  if (!leaf_issuer.ok()) return leaf_issuer.status();
  return leaf_issuer->Issue(subject_key, spec);
}

// === impl LeafIssuer ===

LeafIssuer::LeafIssuer(Certificate issuer, crypto::UniquePtr<EVP_PKEY> key)
    : issuer_(std::move(issuer)), key_(std::move(key)) {}

absl::StatusOr<LeafIssuer> LeafIssuer::Create(const Certificate& issuer,
                                              const PrivateKey& issuer_key) {
  if (absl::Status s = CheckIssuer(issuer, issuer_key); !s.ok()) return s;
  LeafIssuer out(issuer, crypto::UpRef(issuer_key.get()));
  out.sign_template_.reset(EVP_MD_CTX_new());
  if (out.sign_template_ == nullptr ||
      EVP_DigestSignInit(out.sign_template_.get(), nullptr, DigestFor(issuer_key), nullptr,
                         out.key_.get()) != 1) {
    return crypto::OpenSslInternalError("cannot prepare signing with the issuing key");
  }
  out.issuer_not_after_ = issuer.not_after();
  absl::StatusOr<X509ExtensionPtr> ext = BasicConstraints(/*is_ca=*/false, -1);
  if (!ext.ok()) return ext.status();
  out.basic_constraints_ = *std::move(ext);
  ext = KeyUsage({0 /*digitalSignature*/});
  if (!ext.ok()) return ext.status();
  out.key_usage_ = *std::move(ext);
  ext = KeyUsage({0 /*digitalSignature*/, 2 /*keyEncipherment*/});
  if (!ext.ok()) return ext.status();
  out.key_usage_rsa_ = *std::move(ext);
  ext = ExtendedKeyUsage();
  if (!ext.ok()) return ext.status();
  out.extended_key_usage_ = *std::move(ext);
  ext = AuthorityKeyId(issuer.get());
  if (!ext.ok()) return ext.status();
  out.authority_key_id_ = *std::move(ext);
  return out;
}

absl::StatusOr<Certificate> LeafIssuer::Issue(EVP_PKEY* subject_key,
                                              const LeafCertificateSpec& spec) const {
  absl::StatusOr<crypto::UniquePtr<X509>> cert =
      NewCertificate(subject_key, spec.not_before, std::min(spec.not_after, issuer_not_after_));
  if (!cert.ok()) return cert.status();
  X509* x = cert->get();
  absl::Status s;
  // The subject stays empty: identity is the URI SAN only.
  if (X509_set_issuer_name(x, X509_get_subject_name(issuer_.get())) != 1) {
    s = crypto::OpenSslInternalError("cannot set the issuer");
  }
  // The extensions in the order IssueLeafCertificate has always written them.
  if (s.ok()) s = AppendExtension(x, basic_constraints_.get());
  if (s.ok()) {
    s = AppendExtension(
        x, EVP_PKEY_id(subject_key) == EVP_PKEY_RSA ? key_usage_rsa_.get() : key_usage_.get());
  }
  if (s.ok()) s = AppendExtension(x, extended_key_usage_.get());
  if (s.ok()) s = AddSubjectKeyId(x);
  if (s.ok()) {
    s = authority_key_id_ == nullptr ? MissingIssuerKeyIdError()
                                     : AppendExtension(x, authority_key_id_.get());
  }
  if (s.ok()) s = AddUriAndDnsSans(x, spec.spiffe_id.ToString(), spec.dns_names);
  if (!s.ok()) return s;
  crypto::UniquePtr<EVP_MD_CTX> sign(EVP_MD_CTX_new());
  if (sign == nullptr || EVP_MD_CTX_copy_ex(sign.get(), sign_template_.get()) != 1 ||
      X509_sign_ctx(x, sign.get()) <= 0) {
    return crypto::OpenSslInternalError("cannot sign the certificate");
  }
  return Certificate::FromX509(x);
}

}  // namespace trellis::identity
