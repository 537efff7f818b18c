#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/identity/spiffe_id.h"

namespace trellis::control_plane {

// Who a caller turned out to be, as decided by one Authenticator. The identity comes only from
// the credential, never from the CSR.
struct AuthenticatedIdentity {
  identity::SpiffeId spiffe_id;
  // Which authenticator decided: a fixed metric label ("kubernetes_jwt", "tokenreview",
  // "join_token", "renewal").
  std::string authenticator;
  // Informational, for logs: the pod a Kubernetes token was bound to, the join token's name.
  std::string detail;
};

// Checks one kind of credential (a Kubernetes service-account token, a join token) and says which
// SPIFFE ID it proves. Implementations are thread-safe: the gRPC server calls them from many
// threads at once.
//
// Errors:
//   UNAUTHENTICATED    the credential does not verify (bad signature, expired, wrong audience,
//                      unknown issuer, unknown or used token); the message says which, and never
//                      contains the credential itself.
//   PERMISSION_DENIED  the credential verified but may not be used (e.g. a namespace not allowed).
//   UNAVAILABLE        a dependency needed to decide (the Kubernetes API server) cannot be reached;
//                      the caller should retry.
class Authenticator {
 public:
  virtual ~Authenticator() = default;

  virtual absl::StatusOr<AuthenticatedIdentity> Authenticate(absl::string_view credential) = 0;

  // The metric label of this authenticator, as in AuthenticatedIdentity::authenticator.
  virtual absl::string_view name() const = 0;
};

}  // namespace trellis::control_plane
