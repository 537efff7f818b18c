#pragma once

// Authenticates Kubernetes service-account tokens by asking the API server (the TokenReview API,
// authentication.k8s.io/v1). Works with any token the API server accepts (projected, bound,
// legacy), at the cost of one HTTPS round trip per new token; positive answers are cached briefly.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "control-plane/auth/authenticator.h"
#include "control-plane/kube/kube_api.h"

namespace trellis::control_plane {

struct TokenReviewOptions {
  // The API server, e.g. "https://10.96.0.1:443" (https only; no path).
  std::string api_server_url;
  // PEM file of the CA(s) that sign the API server's serving certificate.
  std::string ca_file;
  // The control plane's own bearer token (its service account's). Read again for every request
  // to the API server, so a rotated token is picked up without a restart.
  std::string token_file;
  // The audience workload tokens must be minted for; sent as spec.audiences and required in
  // status.audiences.
  std::string audience = "trellis";
  // The trust domain of the SPIFFE IDs this authenticator hands out.
  std::string trust_domain = "cluster.local";
  // Bound on one TokenReview call (connect + TLS + request + answer).
  absl::Duration request_timeout = absl::Seconds(5);
  // How long a successful review is reused for the same token; zero disables the cache. Only
  // SHA-256 digests of tokens are kept, never tokens.
  absl::Duration cache_ttl = absl::Seconds(30);
  size_t cache_max_entries = 10000;
  // The clock for cache expiry (tests inject a fake one).
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

class TokenReviewAuthenticator : public Authenticator {
 public:
  // Where a pod's service-account credentials are mounted.
  static constexpr absl::string_view kServiceAccountDir =
      "/var/run/secrets/kubernetes.io/serviceaccount";

  // Checks the options (https URL, readable CA file, valid trust domain, positive timeout).
  // The token file is not read here: it may appear or rotate later.
  static absl::StatusOr<std::unique_ptr<TokenReviewAuthenticator>> Create(
      TokenReviewOptions options);

  // Options for a control plane running in a pod: the URL from KUBERNETES_SERVICE_HOST and
  // KUBERNETES_SERVICE_PORT, ca.crt and token from `service_account_dir`. Other fields are
  // taken from `base`. FailedPrecondition if not running in a cluster.
  static absl::StatusOr<TokenReviewOptions> InClusterOptions(
      TokenReviewOptions base = {}, absl::string_view service_account_dir = kServiceAccountDir);

  // Create(InClusterOptions(base)).
  static absl::StatusOr<std::unique_ptr<TokenReviewAuthenticator>> FromInCluster(
      TokenReviewOptions base = {});

  ~TokenReviewAuthenticator() override = default;

  // Errors (see Authenticator):
  //   UNAUTHENTICATED    the API server does not accept the token (its status.error is quoted),
  //                      or did not confirm our audience;
  //   PERMISSION_DENIED  the token is valid but belongs to a user that is not a service account;
  //   UNAVAILABLE        the API server cannot be reached or timed out, refused the control
  //                      plane's own credentials (401/403: missing `create tokenreviews` RBAC),
  //                      answered with an error or with something that is not a TokenReview,
  //                      or the control plane's token file cannot be read.
  absl::StatusOr<AuthenticatedIdentity> Authenticate(absl::string_view credential) override;

  absl::string_view name() const override { return "tokenreview"; }

  // How many TokenReview requests were sent (cache hits send none). For tests and metrics.
  uint64_t requests_sent() const;

 private:
  TokenReviewAuthenticator(TokenReviewOptions options, std::unique_ptr<kube::KubeApiClient> api);

  struct CacheEntry {
    AuthenticatedIdentity identity;
    absl::Time expires;
  };

  // One TokenReview call, without the cache.
  absl::StatusOr<AuthenticatedIdentity> Review(absl::string_view token);
  void CachePut(const std::string& key, const AuthenticatedIdentity& identity)
      ABSL_LOCKS_EXCLUDED(mu_);

  const TokenReviewOptions options_;
  // The HTTPS client (the control plane's own token, only the given CA, timeouts).
  const std::unique_ptr<kube::KubeApiClient> api_;

  mutable absl::Mutex mu_;
  // SHA-256 of the token (raw bytes) -> the identity it proved.
  absl::flat_hash_map<std::string, CacheEntry> cache_ ABSL_GUARDED_BY(mu_);
  uint64_t requests_sent_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace trellis::control_plane
