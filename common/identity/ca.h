#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
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

}  // namespace trellis::identity
