#pragma once

#include <cstddef>
#include <vector>

#include "absl/time/time.h"
#include "proxy/listener/listener_config.h"

namespace trellis::proxy {

struct ProxyOptions {
  int workers = 0;  // 0 = the cores this process may use (sched_getaffinity)
  std::vector<ListenerConfig> listeners;
  size_t max_connections = 100000;  // over all workers and listeners
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration handshake_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Hours(1);
  size_t buffer_bytes = 65536;  // per direction per connection, held only while bytes wait
  // Close a connection (ConnectionFailure::kPeerExpired) when its verified peer's leaf
  // certificate passes its notAfter. Off by default: with short-lived certificates every
  // long-lived connection would be cut at each rotation.
  bool close_on_peer_expiry = false;
  // Close connections older than this (ConnectionFailure::kMaxAge), +/-10% jitter per
  // connection; zero = unlimited.
  absl::Duration max_connection_age = absl::ZeroDuration();
};

}  // namespace trellis::proxy
