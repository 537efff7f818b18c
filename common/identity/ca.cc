#include "common/identity/ca.h"

#include <openssl/bn.h>
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

absl::Status AddExtension(X509* cert, int nid, void* value, bool critical) {
  if (X509_add1_ext_i2d(cert, nid, value, critical ? 1 : 0, X509V3_ADD_REPLACE) != 1) {
    return crypto::OpenSslInternalError(absl::StrCat("cannot add extension ", OBJ_nid2sn(nid)));
  }
  return absl::OkStatus();
}

absl::Status AddBasicConstraints(X509* cert, bool is_ca, int path_length) {
  crypto::UniquePtr<BASIC_CONSTRAINTS> bc(BASIC_CONSTRAINTS_new());
  if (bc == nullptr) return crypto::OpenSslInternalError("cannot allocate basicConstraints");
  bc->ca = is_ca ? 0xff : 0;
  if (is_ca && path_length >= 0) {
    bc->pathlen = ASN1_INTEGER_new();
    if (bc->pathlen == nullptr || ASN1_INTEGER_set(bc->pathlen, path_length) != 1) {
      return crypto::OpenSslInternalError("cannot set pathLenConstraint");
    }
  }
  return AddExtension(cert, NID_basic_constraints, bc.get(), /*critical=*/true);
}

absl::Status AddKeyUsage(X509* cert, std::initializer_list<int> bits) {
  crypto::UniquePtr<ASN1_BIT_STRING> usage(ASN1_BIT_STRING_new());
  if (usage == nullptr) return crypto::OpenSslInternalError("cannot allocate keyUsage");
  for (int bit : bits) {
    if (ASN1_BIT_STRING_set_bit(usage.get(), bit, 1) != 1) {
      return crypto::OpenSslInternalError("cannot set a keyUsage bit");
    }
  }
  return AddExtension(cert, NID_key_usage, usage.get(), /*critical=*/true);
}

absl::Status AddExtendedKeyUsage(X509* cert) {
  crypto::UniquePtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
  if (eku == nullptr || sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_server_auth)) == 0 ||
      sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_client_auth)) == 0) {
    return crypto::OpenSslInternalError("cannot build extendedKeyUsage");
  }
  return AddExtension(cert, NID_ext_key_usage, eku.get(), /*critical=*/false);
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
  return AddExtension(cert, NID_subject_key_identifier, ski.get(), /*critical=*/false);
}

absl::Status AddAuthorityKeyId(X509* cert, X509* issuer) {
  const ASN1_OCTET_STRING* issuer_ski = X509_get0_subject_key_id(issuer);
  if (issuer_ski == nullptr) {
    return absl::FailedPreconditionError(
        "issuer certificate has no subjectKeyIdentifier; re-create the CA with trellisctl ca init");
  }
  crypto::UniquePtr<AUTHORITY_KEYID> akid(AUTHORITY_KEYID_new());
  if (akid == nullptr) return crypto::OpenSslInternalError("cannot allocate AKI");
  akid->keyid = ASN1_OCTET_STRING_dup(issuer_ski);
  if (akid->keyid == nullptr) return crypto::OpenSslInternalError("cannot copy the issuer SKI");
  return AddExtension(cert, NID_authority_key_identifier, akid.get(), /*critical=*/false);
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
  return AddExtension(cert, NID_subject_alt_name, names.get(), /*critical=*/true);
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

// A fresh v3 certificate with serial, public key and validity set.
absl::StatusOr<crypto::UniquePtr<X509>> NewCertificate(EVP_PKEY* subject_key, absl::Time not_before,
                                                       absl::Time not_after) {
  crypto::UniquePtr<X509> cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), 2) != 1 ||
      X509_set_pubkey(cert.get(), subject_key) != 1) {
    return crypto::OpenSslInternalError("cannot build a certificate");
  }
  if (absl::Status s = SetRandomSerial(cert.get()); !s.ok()) return s;
  if (absl::Status s = SetValidity(cert.get(), not_before, not_after); !s.ok()) return s;
  return cert;
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
  if (s.ok()) s = AddBasicConstraints(x, /*is_ca=*/true, spec.path_length);
  if (s.ok()) s = AddKeyUsage(x, {5 /*keyCertSign*/, 6 /*cRLSign*/});
  if (s.ok()) s = AddSubjectKeyId(x);
  if (!s.ok()) return s;
  return Sign(*std::move(cert), key);
}

absl::StatusOr<Certificate> CreateIntermediateCertificate(const Certificate& issuer,
                                                          const PrivateKey& issuer_key,
                                                          EVP_PKEY* subject_key,
                                                          const CaCertificateSpec& spec) {
  if (!issuer.is_ca()) {
    return absl::InvalidArgumentError("the issuing certificate is not a CA (basicConstraints)");
  }
  if (!KeyMatchesCertificate(issuer_key, issuer)) {
    return absl::InvalidArgumentError("the issuing key does not match the issuing certificate");
  }
  absl::StatusOr<crypto::UniquePtr<X509>> cert =
      NewCertificate(subject_key, spec.not_before, std::min(spec.not_after, issuer.not_after()));
  if (!cert.ok()) return cert.status();
  X509* x = cert->get();
  absl::Status s = SetSubject(x, spec);
  if (s.ok() && X509_set_issuer_name(x, X509_get_subject_name(issuer.get())) != 1) {
    s = crypto::OpenSslInternalError("cannot set the issuer");
  }
  if (s.ok()) s = AddBasicConstraints(x, /*is_ca=*/true, spec.path_length);
  if (s.ok()) s = AddKeyUsage(x, {5 /*keyCertSign*/, 6 /*cRLSign*/});
  if (s.ok()) s = AddSubjectKeyId(x);
  if (s.ok()) s = AddAuthorityKeyId(x, issuer.get());
  if (!s.ok()) return s;
  return Sign(*std::move(cert), issuer_key);
}

absl::StatusOr<Certificate> IssueLeafCertificate(const Certificate& issuer,
                                                 const PrivateKey& issuer_key,
                                                 EVP_PKEY* subject_key,
                                                 const LeafCertificateSpec& spec) {
  if (!issuer.is_ca()) {
    return absl::InvalidArgumentError("the issuing certificate is not a CA (basicConstraints)");
  }
  if (!KeyMatchesCertificate(issuer_key, issuer)) {
    // Otherwise every leaf would carry a signature no peer can verify.
    return absl::InvalidArgumentError("the issuing key does not match the issuing certificate");
  }
  absl::StatusOr<crypto::UniquePtr<X509>> cert =
      NewCertificate(subject_key, spec.not_before, std::min(spec.not_after, issuer.not_after()));
  if (!cert.ok()) return cert.status();
  X509* x = cert->get();
  absl::Status s;
  // The subject stays empty: identity is the URI SAN only.
  if (X509_set_issuer_name(x, X509_get_subject_name(issuer.get())) != 1) {
    s = crypto::OpenSslInternalError("cannot set the issuer");
  }
  if (s.ok()) s = AddBasicConstraints(x, /*is_ca=*/false, -1);
  if (s.ok()) {
    s = KeyAlgorithmOf(subject_key) == KeyAlgorithm::kRsa
            ? AddKeyUsage(x, {0 /*digitalSignature*/, 2 /*keyEncipherment*/})
            : AddKeyUsage(x, {0 /*digitalSignature*/});
  }
  if (s.ok()) s = AddExtendedKeyUsage(x);
  if (s.ok()) s = AddSubjectKeyId(x);
  if (s.ok()) s = AddAuthorityKeyId(x, issuer.get());
  if (s.ok()) s = AddUriAndDnsSans(x, spec.spiffe_id.ToString(), spec.dns_names);
  if (!s.ok()) return s;
  return Sign(*std::move(cert), issuer_key);
}

}  // namespace trellis::identity
