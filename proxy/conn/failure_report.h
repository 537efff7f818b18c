#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "common/tls/failure_reason.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

// What an operator needs to know about one connection when it fails.
struct ConnectionInfo {
  Direction direction = Direction::kOutbound;
  std::string listener;
  std::string downstream;      // the address that connected to us
  std::string upstream;        // where we connect (or "-" before it is known)
  std::string local_identity;  // our SPIFFE ID, empty before we have a certificate
  std::string peer_identity;   // the TLS peer's SPIFFE ID, when its certificate was parsed
  std::string peer_serial;     // the TLS peer's leaf serial (hex), when known
  std::string state;           // the connection's state when it failed
};

// Counts a TLS handshake failure in `stats` (by reason) and logs one JSON line, e.g.
//   {"level":"warn","component":"trellis-proxy","msg":"mTLS handshake failed",
//    "direction":"inbound","listener":"in-9443","peer":"10.0.0.7:51234",
//    "local_identity":"spiffe://...","peer_identity":"spiffe://...","reason":"unknown_ca",
//    "detail":"...","hint":"..."}
void ReportHandshakeFailure(WorkerStats* stats, const ConnectionInfo& info,
                            tls::FailureReason reason, absl::string_view detail);

// Counts any other failure (by ConnectionFailure) and logs one JSON line of the same shape.
void ReportConnectionFailure(WorkerStats* stats, const ConnectionInfo& info,
                             ConnectionFailure failure, absl::string_view detail);

// A stable label ("upstream_connect", ...) and an operator hint for `failure`.
absl::string_view ConnectionFailureLabel(ConnectionFailure failure);
absl::string_view ConnectionFailureHint(ConnectionFailure failure);

}  // namespace trellis::proxy
