#include "control-plane/server/metrics.h"

#include "absl/strings/str_cat.h"

namespace trellis::control_plane {
namespace {

template <size_t N>
size_t IndexOf(const std::array<absl::string_view, N>& labels, absl::string_view label,
               size_t fallback) {
  for (size_t i = 0; i < N; ++i) {
    if (labels[i] == label) return i;
  }
  return fallback;
}

void Header(std::string* out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

void ControlPlaneMetrics::CountIssuance(absl::string_view result,
                                        absl::string_view authenticator) {
  const size_t r = IndexOf(kResults, result, 6);
  const size_t a = IndexOf(kAuthenticators, authenticator, kAuthenticators.size() - 1);
  issuances_[r][a].fetch_add(1, std::memory_order_relaxed);
}

uint64_t ControlPlaneMetrics::issuances(absl::string_view result,
                                        absl::string_view authenticator) const {
  const size_t r = IndexOf(kResults, result, 6);
  const size_t a = IndexOf(kAuthenticators, authenticator, kAuthenticators.size() - 1);
  return issuances_[r][a].load(std::memory_order_relaxed);
}

void ControlPlaneMetrics::ObserveIssuanceLatency(absl::Duration latency) {
  const double seconds = absl::ToDoubleSeconds(latency);
  size_t i = 0;
  while (i < kLatencyBuckets.size() && seconds > kLatencyBuckets[i]) ++i;
  latency_buckets_[i].fetch_add(1, std::memory_order_relaxed);
  latency_count_.fetch_add(1, std::memory_order_relaxed);
  latency_sum_micros_.fetch_add(static_cast<uint64_t>(absl::ToInt64Microseconds(latency)),
                                std::memory_order_relaxed);
}

void ControlPlaneMetrics::CountReload(bool ca, bool ok) {
  reloads_[ca ? 0 : 1][ok ? 0 : 1].fetch_add(1, std::memory_order_relaxed);
}

std::string ControlPlaneMetrics::Render() const {
  std::string out;
  Header(&out, "trellis_cp_issuances_total", "counter",
         "Certificate issuance requests by result and by the authenticator that decided.");
  for (size_t r = 0; r < kResults.size(); ++r) {
    for (size_t a = 0; a < kAuthenticators.size(); ++a) {
      absl::StrAppend(&out, "trellis_cp_issuances_total{result=\"", kResults[r],
                      "\",authenticator=\"", kAuthenticators[a], "\"} ",
                      issuances_[r][a].load(std::memory_order_relaxed), "\n");
    }
  }
  Header(&out, "trellis_cp_issuance_duration_seconds", "histogram",
         "Time to authenticate, check and sign one successful issuance.");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
    cumulative += latency_buckets_[i].load(std::memory_order_relaxed);
    absl::StrAppend(&out, "trellis_cp_issuance_duration_seconds_bucket{le=\"", kLatencyBuckets[i],
                    "\"} ", cumulative, "\n");
  }
  cumulative += latency_buckets_.back().load(std::memory_order_relaxed);
  absl::StrAppend(&out, "trellis_cp_issuance_duration_seconds_bucket{le=\"+Inf\"} ", cumulative,
                  "\n", "trellis_cp_issuance_duration_seconds_sum ",
                  static_cast<double>(latency_sum_micros_.load(std::memory_order_relaxed)) / 1e6,
                  "\n", "trellis_cp_issuance_duration_seconds_count ",
                  latency_count_.load(std::memory_order_relaxed), "\n");
  Header(&out, "trellis_cp_watchers", "gauge", "Open Watch streams (connected proxies).");
  absl::StrAppend(&out, "trellis_cp_watchers ", watchers.load(), "\n");
  Header(&out, "trellis_cp_ca_expiration_timestamp_seconds", "gauge",
         "notAfter of the signing CA certificate, Unix seconds.");
  absl::StrAppend(&out, "trellis_cp_ca_expiration_timestamp_seconds ", ca_not_after_seconds.load(),
                  "\n");
  Header(&out, "trellis_cp_root_expiration_timestamp_seconds", "gauge",
         "Earliest notAfter among the trusted roots, Unix seconds.");
  absl::StrAppend(&out, "trellis_cp_root_expiration_timestamp_seconds ",
                  root_not_after_seconds.load(), "\n");
  Header(&out, "trellis_cp_trust_bundle_roots", "gauge", "Roots in the published trust bundle.");
  absl::StrAppend(&out, "trellis_cp_trust_bundle_roots ", bundle_roots.load(), "\n");
  Header(&out, "trellis_cp_deny_list_entries", "gauge",
         "Serials and SPIFFE IDs on the published deny-list.");
  absl::StrAppend(&out, "trellis_cp_deny_list_entries ", deny_list_entries.load(), "\n");
  Header(&out, "trellis_cp_reloads_total", "counter",
         "Reloads of the CA files and the deny-list file, by result.");
  const char* whats[] = {"ca", "deny_list"};
  const char* results[] = {"ok", "error"};
  for (int w = 0; w < 2; ++w) {
    for (int r = 0; r < 2; ++r) {
      absl::StrAppend(&out, "trellis_cp_reloads_total{what=\"", whats[w], "\",result=\"",
                      results[r], "\"} ", reloads_[w][r].load(std::memory_order_relaxed), "\n");
    }
  }
  return out;
}

}  // namespace trellis::control_plane
