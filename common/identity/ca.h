#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"

namespace trellis::identity {

// Certificate-authority operations: making roots and intermediates, and signing workload
// certificates. Pure functions of their inputs (plus randomness for serials); the caller supplies
// the clock, so tests can mint expired and not-yet-valid certificates.

// What a CA certificate says about itself.
struct CaCertificateSpec {
  std::string common_name;  // e.g. "Trellis Root CA"; display only.
  std::string organization = "Trellis";
  absl::Time not_before;
  absl::Time not_after;
  // pathLenConstraint; -1 leaves it unset. A root above one intermediate would use 1.
  int path_length = -1;
};

// Creates a self-signed root: basicConstraints critical CA:TRUE, keyUsage critical
// keyCertSign+cRLSign, SKI, random 128-bit serial.
absl::StatusOr<Certificate> CreateRootCertificate(const PrivateKey& key,
                                                  const CaCertificateSpec& spec);

// Creates an intermediate CA for `subject_key` signed by `issuer`/`issuer_key`, with AKI pointing
// at the issuer. The validity is clamped to the issuer's.
absl::StatusOr<Certificate> CreateIntermediateCertificate(const Certificate& issuer,
                                                          const PrivateKey& issuer_key,
                                                          EVP_PKEY* subject_key,
                                                          const CaCertificateSpec& spec);

// What a workload certificate (X.509-SVID) says.
struct LeafCertificateSpec {
  SpiffeId spiffe_id;     // the only URI SAN
  absl::Time not_before;  // already backdated by the caller for clock skew
  absl::Time not_after;   // clamped to the issuer's notAfter
  // Optional DNS SANs (for serving certificates such as the control plane's own).
  std::vector<std::string> dns_names;
};

// Signs a workload certificate for `subject_key`: exactly one URI SAN (the SPIFFE ID), the SAN
// marked critical because the subject is empty, basicConstraints CA:FALSE, keyUsage
// digitalSignature(+keyEncipherment for RSA keys), EKU serverAuth+clientAuth, SKI, AKI, random
// 128-bit serial, signed with SHA-256 (ECDSA P-256 keys) or SHA-384 (P-384).
absl::StatusOr<Certificate> IssueLeafCertificate(const Certificate& issuer,
                                                 const PrivateKey& issuer_key,
                                                 EVP_PKEY* subject_key,
                                                 const LeafCertificateSpec& spec);

// Returns true if `key` is the private half of `cert`'s public key.
bool KeyMatchesCertificate(const PrivateKey& key, const Certificate& cert);

// Owns one X509_EXTENSION.
struct X509ExtensionDeleter {
  void operator()(X509_EXTENSION* ext) const { X509_EXTENSION_free(ext); }
};
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, X509ExtensionDeleter>;

// IssueLeafCertificate for one issuing CA, with everything every leaf repeats prepared once: the
// issuer checks (CA, key matches), the issuer's notAfter, and the extensions that do not depend on
// the subject (basicConstraints, keyUsage, EKU, AKI). A signer that issues thousands of leaves per
// second keeps one instead of redoing that work per leaf. Issue() makes exactly the certificate
// IssueLeafCertificate makes. Immutable once created; Issue() may be called from many threads.
class LeafIssuer {
 public:
  // Checks the issuer as IssueLeafCertificate does (same errors) and prepares the shared parts.
  // Takes a reference on the certificate and on the key, so `issuer_key` need not outlive it.
  static absl::StatusOr<LeafIssuer> Create(const Certificate& issuer, const PrivateKey& issuer_key);

  LeafIssuer(LeafIssuer&&) = default;
  LeafIssuer& operator=(LeafIssuer&&) = default;

  // As IssueLeafCertificate(issuer, issuer_key, subject_key, spec).
  absl::StatusOr<Certificate> Issue(EVP_PKEY* subject_key, const LeafCertificateSpec& spec) const;

  const Certificate& issuer() const { return issuer_; }

 private:
  LeafIssuer(Certificate issuer, crypto::UniquePtr<EVP_PKEY> key);

  Certificate issuer_;
  crypto::UniquePtr<EVP_PKEY> key_;
  // EVP_DigestSignInit done once for key_: copying it per leaf skips OpenSSL 3's algorithm and
  // provider lookups. Never used directly, only copied (a const source, so thread-safe).
  crypto::UniquePtr<EVP_MD_CTX> sign_template_;
  absl::Time issuer_not_after_;
  X509ExtensionPtr basic_constraints_;
  X509ExtensionPtr key_usage_;      // digitalSignature (ECDSA subject keys)
  X509ExtensionPtr key_usage_rsa_;  // digitalSignature + keyEncipherment (RSA subject keys)
  X509ExtensionPtr extended_key_usage_;
  // Null when the issuer has no SKI; Issue() then fails where IssueLeafCertificate always did.
  X509ExtensionPtr authority_key_id_;
};

}  // namespace trellis::identity
