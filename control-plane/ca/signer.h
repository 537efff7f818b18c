#pragma once

// Signing workload certificates (X.509-SVIDs) with the mesh CA.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::control_plane::ca {

// Something that signs workload certificates: the local CA key today, a KMS or an external CA
// later. Implementations are thread-safe.
class Signer {
 public:
  virtual ~Signer() = default;

  // Signs a workload certificate for `public_key` (the requester's; ECDSA P-256 or P-384) naming
  // `id` as its only URI SAN and `dns_names` as DNS SANs. `ttl` of zero asks for the default
  // lifetime. Returns the chain leaf first, followed by the intermediates up to but excluding the
  // root. A `ttl` outside the signer's policy is InvalidArgument naming the allowed range.
  virtual absl::StatusOr<std::vector<identity::Certificate>> SignLeaf(
      EVP_PKEY* public_key, const identity::SpiffeId& id, absl::Duration ttl,
      const std::vector<std::string>& dns_names) = 0;
};

struct LocalSignerOptions {
  // The lifetime given when a request asks for none.
  absl::Duration default_ttl = absl::Hours(1);
  // The shortest and longest lifetimes a request may ask for. min_ttl may go down to one second
  // (for tests); max_ttl may be at most kMaxLeafTtl.
  absl::Duration min_ttl = absl::Minutes(1);
  absl::Duration max_ttl = absl::Hours(24);
  // NotBefore is set this far before now, for clock skew between peers (0 to 1 h).
  absl::Duration backdate = absl::Minutes(5);
  // The clock; absl::Now when empty.
  std::function<absl::Time()> clock;
};

inline constexpr absl::Duration kMinLeafTtl = absl::Seconds(1);
inline constexpr absl::Duration kMaxLeafTtl = absl::Hours(24);
inline constexpr absl::Duration kMaxBackdate = absl::Hours(1);

// Signs with a CA loaded into memory (see LoadCaFiles). Leaves are valid from now - backdate
// (but not before the signing CA) until now + ttl, clamped to the earliest notAfter of the
// signing CA and its chain. Thread-safe: SignLeaf may be called from many threads at once.
class LocalSigner : public Signer {
 public:
  // Checks the options (InvalidArgument saying which one is out of range) and the CA (see
  // ValidateCa; checked at the clock's current time).
  static absl::StatusOr<std::unique_ptr<LocalSigner>> Create(CaFiles ca,
                                                             LocalSignerOptions options = {});

  absl::StatusOr<std::vector<identity::Certificate>> SignLeaf(
      EVP_PKEY* public_key, const identity::SpiffeId& id, absl::Duration ttl,
      const std::vector<std::string>& dns_names) override;

  // The roots a workload should trust (roots.crt), for the issuance response.
  const identity::TrustBundle& trust_bundle() const { return ca_.roots; }

  // The DER of what follows the leaf in every chain SignLeaf returns, and of trust_bundle(),
  // encoded once: every issuance response carries them.
  const std::vector<std::string>& chain_tail_der() const { return chain_tail_der_; }
  const std::vector<std::string>& trust_bundle_der() const { return trust_bundle_der_; }

  // The signing CA certificate.
  const identity::Certificate& ca_certificate() const { return ca_.cert; }

  const LocalSignerOptions& options() const { return options_; }

 private:
  LocalSigner(CaFiles ca, LocalSignerOptions options, identity::LeafIssuer issuer,
              std::vector<identity::Certificate> tail, absl::Time chain_not_after);

  const CaFiles ca_;
  // ca_.cert and ca_.key, checked and prepared once (ValidateCa has already checked them), so
  // that a leaf costs only its own work.
  const identity::LeafIssuer issuer_;
  const LocalSignerOptions options_;
  // What follows the leaf in every issued chain: ca.crt (unless it is itself a root) and chain.crt.
  const std::vector<identity::Certificate> chain_tail_;
  const std::vector<std::string> chain_tail_der_;
  const std::vector<std::string> trust_bundle_der_;
  // The earliest notAfter among the signing CA and its chain.
  const absl::Time chain_not_after_;
};

}  // namespace trellis::control_plane::ca
