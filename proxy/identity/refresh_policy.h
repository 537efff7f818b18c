#pragma once

// When to renew a workload certificate, and how long to wait after a failed attempt. Pure
// functions of their inputs (the random samples are parameters), so they are tested with tables.

#include <optional>

#include "absl/time/time.h"

namespace trellis::proxy {

struct RefreshPolicy {
  // Renew at this fraction of the lifetime, +/- `jitter` (fractions of the lifetime), unless the
  // control plane said otherwise (refresh_after, or a Watch renew_before hint).
  double fraction = 0.5;
  double jitter = 0.1;
  // Never sooner than this after now (a misbehaving control plane cannot make us spin), never
  // later than this.
  absl::Duration min_delay = absl::Seconds(1);
  absl::Duration max_delay = absl::Hours(12);
  // Retry after a failure: base * 2^attempt, +/- 50% jitter, capped; never past the point where
  // the certificate has `expiry_margin` left, so the last attempts happen while it is valid.
  absl::Duration retry_base = absl::Milliseconds(500);
  absl::Duration retry_cap = absl::Seconds(30);
  // Without a valid certificate the proxy cannot serve: retry at least this often (with jitter,
  // so a fleet coming back after a control-plane outage does not arrive at once).
  absl::Duration retry_cap_without_certificate = absl::Seconds(5);
};

struct CertificateTimes {
  absl::Time not_before;
  absl::Time not_after;
  // From IssueCertificateResponse.refresh_after; unset if the control plane gave none.
  std::optional<absl::Time> refresh_after;
  // When we received the certificate. NotBefore is backdated for clock skew (5 min by default),
  // so the usable lifetime starts here, not at NotBefore; unset means NotBefore.
  std::optional<absl::Time> received_at;
};

// When to start renewing. `jitter_sample` is uniform in [0, 1). `renew_before` is the latest Watch
// hint (renew no later than this), if any.
absl::Time NextRefresh(absl::Time now, const CertificateTimes& cert,
                       std::optional<absl::Time> renew_before, double jitter_sample,
                       const RefreshPolicy& policy);

// How long to wait before retry number `attempt` (0 for the first retry). `jitter_sample` is
// uniform in [0, 1). `not_after` is the current certificate's expiry (InfiniteFuture when there
// is none yet).
absl::Duration RetryDelay(int attempt, double jitter_sample, absl::Time now, absl::Time not_after,
                          const RefreshPolicy& policy);

}  // namespace trellis::proxy
