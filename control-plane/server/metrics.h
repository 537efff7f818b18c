#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace trellis::control_plane {

// Every metric of the control plane, declared in one place. Counters are plain atomics, so the
// hot path never takes a lock; Render() reads them for /metrics.
//
//   trellis_cp_issuances_total{result,authenticator}    counter
//   trellis_cp_issuance_duration_seconds                histogram (successful issuances)
//   trellis_cp_watchers                                 gauge
//   trellis_cp_ca_expiration_timestamp_seconds          gauge (signing CA notAfter)
//   trellis_cp_root_expiration_timestamp_seconds        gauge (earliest root notAfter)
//   trellis_cp_trust_bundle_roots                       gauge
//   trellis_cp_deny_list_entries                        gauge
//   trellis_cp_reloads_total{what,result}               counter (ca, deny_list)
// IssuanceAdmission::RenderMetrics adds trellis_cp_issuances_in_flight and
// trellis_cp_issuances_waiting{kind}; the ConfigMap sync and the webhook add their own.
class ControlPlaneMetrics {
 public:
  static constexpr std::array<absl::string_view, 8> kResults = {
      "ok",        "unauthenticated", "permission_denied", "invalid_argument",
      "resource_exhausted", "unavailable", "internal", "cancelled"};
  static constexpr std::array<absl::string_view, 5> kAuthenticators = {
      "kubernetes_jwt", "tokenreview", "join_token", "renewal", "none"};
  static constexpr std::array<double, 12> kLatencyBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

  // Unknown labels are counted under "internal"/"none" rather than dropped.
  void CountIssuance(absl::string_view result, absl::string_view authenticator);
  void ObserveIssuanceLatency(absl::Duration latency);
  void CountReload(bool ca, bool ok);

  std::atomic<int64_t> watchers{0};
  std::atomic<int64_t> ca_not_after_seconds{0};
  std::atomic<int64_t> root_not_after_seconds{0};
  std::atomic<int64_t> bundle_roots{0};
  std::atomic<int64_t> deny_list_entries{0};

  uint64_t issuances(absl::string_view result, absl::string_view authenticator) const;

  // Prometheus text exposition format 0.0.4.
  std::string Render() const;

 private:
  std::array<std::array<std::atomic<uint64_t>, kAuthenticators.size()>, kResults.size()>
      issuances_{};
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> latency_buckets_{};
  std::atomic<uint64_t> latency_count_{0};
  std::atomic<uint64_t> latency_sum_micros_{0};
  // [what: ca, deny_list][result: ok, error]
  std::array<std::array<std::atomic<uint64_t>, 2>, 2> reloads_{};
};

}  // namespace trellis::control_plane
