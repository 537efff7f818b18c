#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/identity/spiffe_id.h"

namespace trellis::proxy {

// One listener of the proxy.
//  - kOutboundCapture: iptables-redirected app traffic; mTLS to the original destination.
//  - kInboundCapture: iptables-redirected mesh traffic; mTLS terminated, plaintext to
//    127.0.0.1:<original port>, client checked against port_policies[original port] (else peers).
//  - kExplicitOutbound: plaintext in, mTLS to upstream_host:upstream_port.
//  - kExplicitInbound: mTLS in, plaintext to upstream_host:upstream_port.
struct ListenerConfig {
  enum class Kind { kOutboundCapture, kInboundCapture, kExplicitOutbound, kExplicitInbound };
  Kind kind = Kind::kExplicitOutbound;
  std::string name;  // in logs and errors; unique per server
  std::string bind_host = "127.0.0.1";
  uint16_t bind_port = 0;     // 0 = pick one (see ProxyServer::BoundPort)
  std::string upstream_host;  // explicit kinds: a numeric address
  uint16_t upstream_port = 0;
  // Outbound: the identities the server may have. Inbound: the clients allowed in. Empty = any
  // identity of our own trust domain.
  std::vector<identity::SpiffeIdPattern> peers;
  // Inbound capture: per original destination port, replacing `peers` for that port.
  std::map<uint16_t, std::vector<identity::SpiffeIdPattern>> port_policies;
};

inline bool IsInbound(ListenerConfig::Kind kind) {
  return kind == ListenerConfig::Kind::kInboundCapture ||
         kind == ListenerConfig::Kind::kExplicitInbound;
}

inline bool IsCapture(ListenerConfig::Kind kind) {
  return kind == ListenerConfig::Kind::kInboundCapture ||
         kind == ListenerConfig::Kind::kOutboundCapture;
}

}  // namespace trellis::proxy
