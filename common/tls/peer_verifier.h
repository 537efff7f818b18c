#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/deny_list.h"
#include "common/tls/failure_reason.h"

namespace trellis::tls {

// The outcome of checking one peer's certificate chain.
struct PeerVerification {
  bool ok() const { return !reason.has_value(); }

  std::optional<FailureReason> reason;        // empty on success
  std::string detail;                         // what exactly was wrong, for logs; empty on success
  std::optional<identity::SpiffeId> peer_id;  // known once the leaf's SAN parsed
  std::string peer_serial_hex;                // the leaf's serial, when there is a leaf
};

// Which end of the connection the peer is: decides the key purpose checked on its certificate.
enum class PeerRole { kClient, kServer };

// Checks a peer's chain, in this order: chain to a root of the bundle at `now` (unknown CA,
// expired, not yet valid, bad signature), the X.509-SVID rules on the leaf (exactly one SPIFFE
// URI SAN, not a CA), the deny-list, and finally the allowed identities. The first failure wins.
// Thread-safe and immutable: one instance is shared by every connection of a TlsContext.
class PeerVerifier {
 public:
  static absl::StatusOr<std::unique_ptr<PeerVerifier>> Create(identity::TrustBundle bundle,
                                                              DenyList deny_list);

  // `intermediates` may be null. `allowed` lists the acceptable peer identities; a peer must
  // match at least one pattern (an empty list allows nobody).
  PeerVerification Verify(X509* leaf, STACK_OF(X509) * intermediates, PeerRole role, absl::Time now,
                          const std::vector<identity::SpiffeIdPattern>& allowed) const;

  const identity::TrustBundle& bundle() const { return bundle_; }
  const DenyList& deny_list() const { return deny_list_; }

 private:
  PeerVerifier(identity::TrustBundle bundle, DenyList deny_list,
               crypto::UniquePtr<X509_STORE> store)
      : bundle_(std::move(bundle)), deny_list_(std::move(deny_list)), store_(std::move(store)) {}

  identity::TrustBundle bundle_;
  DenyList deny_list_;
  crypto::UniquePtr<X509_STORE> store_;
};

}  // namespace trellis::tls
