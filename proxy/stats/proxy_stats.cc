#include "proxy/stats/proxy_stats.h"

#include "absl/strings/str_cat.h"

namespace trellis::proxy {
namespace {

size_t ReasonIndex(tls::FailureReason reason) {
  for (size_t i = 0; i < tls::kAllFailureReasons.size(); ++i) {
    if (tls::kAllFailureReasons[i] == reason) return i;
  }
  return 0;
}

void Header(std::string* out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

template <typename Get>
uint64_t Sum(const std::vector<const WorkerStats*>& workers, Get get) {
  uint64_t total = 0;
  for (const WorkerStats* w : workers) total += get(*w);
  return total;
}

}  // namespace

void WorkerStats::CountHandshakeFailure(Direction d, tls::FailureReason reason) {
  handshake_failures[static_cast<size_t>(d)][ReasonIndex(reason)].fetch_add(
      1, std::memory_order_relaxed);
}

void WorkerStats::CountConnectionFailure(Direction d, ConnectionFailure failure) {
  connection_failures[static_cast<size_t>(d)][static_cast<size_t>(failure)].fetch_add(
      1, std::memory_order_relaxed);
}

void WorkerStats::ObserveHandshake(Direction d, absl::Duration duration) {
  const size_t dir = static_cast<size_t>(d);
  const double seconds = absl::ToDoubleSeconds(duration);
  size_t i = 0;
  while (i < kHandshakeBuckets.size() && seconds > kHandshakeBuckets[i]) ++i;
  handshake_buckets[dir][i].fetch_add(1, std::memory_order_relaxed);
  handshake_count[dir].fetch_add(1, std::memory_order_relaxed);
  handshake_sum_micros[dir].fetch_add(static_cast<uint64_t>(absl::ToInt64Microseconds(duration)),
                                      std::memory_order_relaxed);
}

uint64_t SumHandshakeFailures(const std::vector<const WorkerStats*>& workers, Direction d,
                              tls::FailureReason reason) {
  return Sum(workers, [&](const WorkerStats& w) {
    return w.handshake_failures[static_cast<size_t>(d)][ReasonIndex(reason)].load();
  });
}

std::string RenderPrometheus(const std::vector<const WorkerStats*>& workers,
                             const ProxyStats& global) {
  std::string out;
  Header(&out, "trellis_proxy_connections_total", "counter", "Connections accepted.");
  for (size_t d = 0; d < 2; ++d) {
    absl::StrAppend(
        &out, "trellis_proxy_connections_total{direction=\"", kDirectionLabels[d], "\"} ",
        Sum(workers, [&](const WorkerStats& w) { return w.connections_total[d].load(); }), "\n");
  }
  Header(&out, "trellis_proxy_connections_active", "gauge", "Connections open now.");
  for (size_t d = 0; d < 2; ++d) {
    int64_t active = 0;
    for (const WorkerStats* w : workers) active += w->connections_active[d].load();
    absl::StrAppend(&out, "trellis_proxy_connections_active{direction=\"", kDirectionLabels[d],
                    "\"} ", active, "\n");
  }
  Header(&out, "trellis_proxy_relay_buffer_bytes", "gauge",
         "Buffer memory allocated: blocks held by connections with bytes in flight plus empty "
         "blocks pooled for reuse. pool=relay: bytes waiting to be relayed; pool=tls_records: "
         "the TLS records of one write, gathered for a single send.");
  {
    int64_t relay = 0;
    int64_t tls_records = 0;
    for (const WorkerStats* w : workers) {
      relay += w->relay_buffer_bytes.load();
      tls_records += w->tls_record_buffer_bytes.load();
    }
    absl::StrAppend(&out, "trellis_proxy_relay_buffer_bytes{pool=\"relay\"} ", relay, "\n",
                    "trellis_proxy_relay_buffer_bytes{pool=\"tls_records\"} ", tls_records, "\n");
  }
  Header(&out, "trellis_proxy_bytes_total", "counter",
         "Application bytes relayed, seen from the local app's side.");
  for (size_t d = 0; d < 2; ++d) {
    absl::StrAppend(
        &out, "trellis_proxy_bytes_total{direction=\"", kDirectionLabels[d], "\",flow=\"sent\"} ",
        Sum(workers, [&](const WorkerStats& w) { return w.bytes_sent[d].load(); }), "\n",
        "trellis_proxy_bytes_total{direction=\"", kDirectionLabels[d], "\",flow=\"received\"} ",
        Sum(workers, [&](const WorkerStats& w) { return w.bytes_received[d].load(); }), "\n");
  }
  Header(&out, "trellis_proxy_handshake_failures_total", "counter",
         "Refused or failed mutual-TLS handshakes, by typed reason.");
  for (size_t d = 0; d < 2; ++d) {
    for (size_t r = 0; r < tls::kAllFailureReasons.size(); ++r) {
      absl::StrAppend(
          &out, "trellis_proxy_handshake_failures_total{direction=\"", kDirectionLabels[d],
          "\",reason=\"", tls::FailureReasonLabel(tls::kAllFailureReasons[r]), "\"} ",
          Sum(workers, [&](const WorkerStats& w) { return w.handshake_failures[d][r].load(); }),
          "\n");
    }
  }
  Header(&out, "trellis_proxy_connection_failures_total", "counter",
         "Connections that failed or were closed for a reason other than the TLS handshake.");
  for (size_t d = 0; d < 2; ++d) {
    for (size_t f = 0; f < kConnectionFailureLabels.size(); ++f) {
      absl::StrAppend(
          &out, "trellis_proxy_connection_failures_total{direction=\"", kDirectionLabels[d],
          "\",reason=\"", kConnectionFailureLabels[f], "\"} ",
          Sum(workers, [&](const WorkerStats& w) { return w.connection_failures[d][f].load(); }),
          "\n");
    }
  }
  Header(&out, "trellis_proxy_handshake_duration_seconds", "histogram",
         "Duration of successful mutual-TLS handshakes.");
  for (size_t d = 0; d < 2; ++d) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= kHandshakeBuckets.size(); ++i) {
      cumulative +=
          Sum(workers, [&](const WorkerStats& w) { return w.handshake_buckets[d][i].load(); });
      absl::StrAppend(&out, "trellis_proxy_handshake_duration_seconds_bucket{direction=\"",
                      kDirectionLabels[d], "\",le=\"",
                      i < kHandshakeBuckets.size() ? absl::StrCat(kHandshakeBuckets[i]) : "+Inf",
                      "\"} ", cumulative, "\n");
    }
    absl::StrAppend(
        &out, "trellis_proxy_handshake_duration_seconds_sum{direction=\"", kDirectionLabels[d],
        "\"} ",
        static_cast<double>(
            Sum(workers, [&](const WorkerStats& w) { return w.handshake_sum_micros[d].load(); })) /
            1e6,
        "\n", "trellis_proxy_handshake_duration_seconds_count{direction=\"", kDirectionLabels[d],
        "\"} ", Sum(workers, [&](const WorkerStats& w) { return w.handshake_count[d].load(); }),
        "\n");
  }
  Header(&out, "trellis_proxy_certificate_expiration_timestamp_seconds", "gauge",
         "notAfter of the proxy's workload certificate, Unix seconds (0: none yet).");
  absl::StrAppend(&out, "trellis_proxy_certificate_expiration_timestamp_seconds ",
                  global.certificate_not_after_seconds.load(), "\n");
  Header(&out, "trellis_proxy_trust_bundle_roots", "gauge", "Roots the proxy trusts.");
  absl::StrAppend(&out, "trellis_proxy_trust_bundle_roots ", global.trust_bundle_roots.load(),
                  "\n");
  Header(&out, "trellis_proxy_credential_reloads_total", "counter",
         "Attempts to load new credentials (files or control plane), by result.");
  absl::StrAppend(&out, "trellis_proxy_credential_reloads_total{result=\"ok\"} ",
                  global.credential_reloads_ok.load(), "\n",
                  "trellis_proxy_credential_reloads_total{result=\"error\"} ",
                  global.credential_reloads_error.load(), "\n");
  Header(&out, "trellis_proxy_rotations_total", "counter",
         "Times a new workload certificate was put into use.");
  absl::StrAppend(&out, "trellis_proxy_rotations_total ", global.rotations.load(), "\n");
  Header(&out, "trellis_proxy_next_rotation_timestamp_seconds", "gauge",
         "When the proxy plans to renew its certificate, Unix seconds (0: none planned).");
  absl::StrAppend(&out, "trellis_proxy_next_rotation_timestamp_seconds ",
                  global.next_rotation_seconds.load(), "\n");
  Header(&out, "trellis_proxy_renewal_failures_total", "counter",
         "Failed attempts to get a certificate from the control plane (the current one is kept).");
  absl::StrAppend(&out, "trellis_proxy_renewal_failures_total ", global.renewal_failures.load(),
                  "\n");
  Header(&out, "trellis_proxy_last_renewal_error_timestamp_seconds", "gauge",
         "When the last renewal failed, Unix seconds (0: never); the error text is in /certs.");
  absl::StrAppend(&out, "trellis_proxy_last_renewal_error_timestamp_seconds ",
                  global.last_renewal_error_seconds.load(), "\n");
  Header(&out, "trellis_proxy_control_plane_connected", "gauge",
         "1 while the Watch stream to the control plane is open.");
  absl::StrAppend(&out, "trellis_proxy_control_plane_connected ",
                  global.control_plane_connected.load(), "\n");
  return out;
}

}  // namespace trellis::proxy
