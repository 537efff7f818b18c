#pragma once

// Mints Kubernetes-style projected service-account tokens (ES256) for the issuance benchmark, the
// way kube-apiserver does, and the matching JWKS document. A small stand-alone copy of what
// //tests/control-plane/auth:jwt_test_util does (that target is testonly and private to its
// package); only ES256, which is what the benchmark measures.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/identity/private_key.h"

namespace trellis::bench {

inline constexpr absl::string_view kBenchIssuer = "https://kubernetes.default.svc.cluster.local";
inline constexpr absl::string_view kBenchKid = "bench-issuer-1";

// {"keys":[{"kty":"EC","crv":"P-256","x":..,"y":..,"kid":kid,"alg":"ES256","use":"sig"}]}.
absl::StatusOr<std::string> JwksFor(const identity::PrivateKey& issuer_key, absl::string_view kid);

// A projected service-account token for system:serviceaccount:<ns>:<sa>, audience "trellis",
// valid from `now` for `lifetime`, signed ES256 with `issuer_key`.
absl::StatusOr<std::string> MintServiceAccountToken(const identity::PrivateKey& issuer_key,
                                                    absl::string_view kid, absl::string_view ns,
                                                    absl::string_view sa, absl::Time now,
                                                    absl::Duration lifetime);

}  // namespace trellis::bench
