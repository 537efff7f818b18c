#include "proxy/identity/refresh_policy.h"

#include <algorithm>
#include <cmath>

namespace trellis::proxy {

absl::Time NextRefresh(absl::Time now, const CertificateTimes& cert,
                       std::optional<absl::Time> renew_before, double jitter_sample,
                       const RefreshPolicy& policy) {
  // The usable lifetime starts when the certificate arrived: counting from a backdated NotBefore
  // would schedule renewals of short-lived certificates in the past.
  const absl::Time start =
      cert.received_at.has_value() ? std::max(cert.not_before, *cert.received_at) : cert.not_before;
  const absl::Duration lifetime = cert.not_after - start;
  absl::Time at;
  if (cert.refresh_after.has_value()) {
    at = *cert.refresh_after;  // the control plane already added jitter
  } else {
    const double fraction =
        std::clamp(policy.fraction + policy.jitter * (2.0 * jitter_sample - 1.0), 0.05, 0.95);
    at = start + lifetime * fraction;
  }
  if (renew_before.has_value() && *renew_before < at) {
    // Spread a fleet-wide hint over the window up to it instead of renewing all at once.
    const absl::Duration window = std::max(absl::ZeroDuration(), *renew_before - now);
    at = now + window * jitter_sample;
  }
  // Never past expiry: renew before it with a margin of a tenth of the lifetime at least.
  const absl::Time latest = cert.not_after - lifetime / 10;
  at = std::min(at, latest);
  return std::clamp(at, now + policy.min_delay, now + policy.max_delay);
}

absl::Duration RetryDelay(int attempt, double jitter_sample, absl::Time now, absl::Time not_after,
                          const RefreshPolicy& policy) {
  const double exponent = std::min(attempt, 30);
  absl::Duration delay = std::min(policy.retry_base * std::pow(2.0, exponent), policy.retry_cap);
  delay = delay * (0.5 + jitter_sample);
  if (not_after != absl::InfiniteFuture() && not_after > now) {
    // With a valid certificate, retry at least a few times before it expires.
    delay = std::min(delay, (not_after - now) / 4);
  } else {
    // None, or expired: every second without one is a second of refused traffic.
    delay = std::min(delay, policy.retry_cap_without_certificate * (0.5 + jitter_sample));
  }
  return std::max(delay, policy.min_delay / 10);
}

}  // namespace trellis::proxy
