#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/crypto/handles.h"
#include "common/identity/certificate.h"

namespace trellis::identity {

// The set of root certificates a workload trusts for its peers. During a root rotation it holds
// the old and the new root at once. Immutable once built; cheap to copy.
class TrustBundle {
 public:
  // Builds a bundle from one or more CA certificates. Duplicates are dropped; a certificate that
  // is not a CA, or an empty list, is refused with a message naming the offending certificate.
  static absl::StatusOr<TrustBundle> Create(std::vector<Certificate> roots);

  // Parses every CERTIFICATE block of a PEM text (a bundle file or ConfigMap value).
  static absl::StatusOr<TrustBundle> FromPem(absl::string_view pem);

  // Parses DER roots (as carried in the gRPC API).
  static absl::StatusOr<TrustBundle> FromDer(const std::vector<std::string>& roots_der);

  const std::vector<Certificate>& roots() const { return roots_; }

  std::string ToPem() const { return ToPemChain(roots_); }
  std::vector<std::string> ToDer() const;

  // True if `cert` (compared by its encoding) is one of the roots.
  bool Contains(const Certificate& cert) const;

  // A new X509_STORE holding the roots, for chain verification or an SSL_CTX. The store has
  // X509_V_FLAG_X509_STRICT set and, since the bundle is the only trust anchor, no default paths.
  absl::StatusOr<crypto::UniquePtr<X509_STORE>> NewX509Store() const;

 private:
  explicit TrustBundle(std::vector<Certificate> roots) : roots_(std::move(roots)) {}

  std::vector<Certificate> roots_;
};

}  // namespace trellis::identity
