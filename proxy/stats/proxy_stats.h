#pragma once

// Every metric of the proxy, declared in one place. Each worker thread owns one WorkerStats and is
// its only writer (relaxed atomics, no lock, no shared cache line with other workers); the admin
// endpoint adds all workers' blocks up when /stats/prometheus is scraped.
//
//   trellis_proxy_connections_total{direction}                counter
//   trellis_proxy_connections_active{direction}               gauge
//   trellis_proxy_bytes_total{direction,flow}                 counter (flow: sent | received,
//                                                              seen from the app's side)
//   trellis_proxy_handshake_failures_total{direction,reason}  counter (reason: tls::FailureReason)
//   trellis_proxy_connection_failures_total{direction,reason} counter (upstream_connect,
//                                                              connection_limit, idle_timeout, ...)
//   trellis_proxy_handshake_duration_seconds{direction}       histogram (successful handshakes)
//   trellis_proxy_relay_buffer_bytes{pool}                    gauge   (blocks allocated, held by
//                                                              connections or pooled; pool:
//                                                              relay = bytes waiting to be
//                                                              relayed, tls_records = ciphertext
//                                                              gathered for one send)
//   trellis_proxy_certificate_expiration_timestamp_seconds    gauge   (ProxyStats)
//   trellis_proxy_trust_bundle_roots                          gauge   (ProxyStats)
//   trellis_proxy_credential_reloads_total{result}            counter (ProxyStats)
//   trellis_proxy_rotations_total                             counter (ProxyStats)
//   trellis_proxy_next_rotation_timestamp_seconds             gauge   (ProxyStats; 0: none planned)
//   trellis_proxy_renewal_failures_total                      counter (ProxyStats)
//   trellis_proxy_last_renewal_error_timestamp_seconds        gauge   (ProxyStats; 0: never;
//                                                              the error itself is in /certs)
//   trellis_proxy_control_plane_connected                     gauge   (ProxyStats; Watch open)

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/tls/failure_reason.h"

namespace trellis::proxy {

enum class Direction { kInbound = 0, kOutbound = 1 };
inline constexpr std::array<absl::string_view, 2> kDirectionLabels = {"inbound", "outbound"};

// Failures that are not TLS handshake failures.
enum class ConnectionFailure {
  kUpstreamConnect = 0,  // the destination refused or did not answer
  kConnectionLimit,      // over --max_connections
  kIdleTimeout,          // closed for inactivity
  kConnectTimeout,       // the destination did not accept in time
  kOriginalDst,          // SO_ORIGINAL_DST unavailable (not redirected by iptables)
  kReset,                // either side reset the connection mid-stream
  kDenied,               // closed because the peer was revoked after connecting
  kPeerExpired,          // closed when the verified peer certificate passed its notAfter
  kMaxAge,               // closed at --max_connection_age (with jitter)
  kCount,
};
inline constexpr std::array<absl::string_view, static_cast<size_t>(ConnectionFailure::kCount)>
    kConnectionFailureLabels = {"upstream_connect", "connection_limit", "idle_timeout",
                                "connect_timeout",  "original_dst",     "reset",
                                "denied",           "peer_expired",     "max_connection_age"};

inline constexpr std::array<double, 12> kHandshakeBuckets = {
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 5};

// One worker's counters. Written only by its worker thread.
struct alignas(64) WorkerStats {
  std::array<std::atomic<uint64_t>, 2> connections_total{};
  std::array<std::atomic<int64_t>, 2> connections_active{};
  std::array<std::atomic<uint64_t>, 2> bytes_sent{};      // towards the app's peer
  std::array<std::atomic<uint64_t>, 2> bytes_received{};  // from the app's peer
  std::array<std::array<std::atomic<uint64_t>, tls::kAllFailureReasons.size()>, 2>
      handshake_failures{};
  std::array<std::array<std::atomic<uint64_t>, kConnectionFailureLabels.size()>, 2>
      connection_failures{};
  std::array<std::array<std::atomic<uint64_t>, kHandshakeBuckets.size() + 1>, 2>
      handshake_buckets{};
  std::array<std::atomic<uint64_t>, 2> handshake_count{};
  std::array<std::atomic<uint64_t>, 2> handshake_sum_micros{};
  // Written by the worker's BufferPools when they allocate or free a block (not on reuse): the
  // relay blocks, and the blocks that gather a write's TLS records for one send.
  std::atomic<int64_t> relay_buffer_bytes{0};
  std::atomic<int64_t> tls_record_buffer_bytes{0};

  void CountHandshakeFailure(Direction d, tls::FailureReason reason);
  void CountConnectionFailure(Direction d, ConnectionFailure failure);
  void ObserveHandshake(Direction d, absl::Duration duration);
};

// Process-wide values the control thread sets.
struct ProxyStats {
  std::atomic<int64_t> certificate_not_after_seconds{0};
  std::atomic<int64_t> trust_bundle_roots{0};
  std::atomic<uint64_t> credential_reloads_ok{0};
  std::atomic<uint64_t> credential_reloads_error{0};
  std::atomic<uint64_t> rotations{0};
  std::atomic<int64_t> next_rotation_seconds{0};
  std::atomic<uint64_t> renewal_failures{0};
  std::atomic<int64_t> last_renewal_error_seconds{0};
  std::atomic<int64_t> control_plane_connected{0};
};

// Prometheus text (format 0.0.4) for the sum of `workers` plus `global`.
std::string RenderPrometheus(const std::vector<const WorkerStats*>& workers,
                             const ProxyStats& global);

// Summed values, for tests and /ready-style checks.
uint64_t SumHandshakeFailures(const std::vector<const WorkerStats*>& workers, Direction d,
                              tls::FailureReason reason);

}  // namespace trellis::proxy
