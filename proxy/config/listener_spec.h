#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/identity/spiffe_id.h"

namespace trellis::proxy {

// One explicit-mode listener, as written on the command line or in a config file:
//
//   out:127.0.0.1:9000=>10.0.0.7:9443@spiffe://cluster.local/ns/shop/sa/checkout
//       plaintext in on 127.0.0.1:9000, mutual TLS out to 10.0.0.7:9443, and the server must be
//       spiffe://cluster.local/ns/shop/sa/checkout
//   in:0.0.0.0:9443=>127.0.0.1:8080@spiffe://cluster.local/ns/shop/*|spiffe://cluster.local/ns/ops/sa/probe
//       mutual TLS in on port 9443 from the listed identities, plaintext out to 127.0.0.1:8080
//
// The part after '@' is optional ('|'-separated SpiffeIdPatterns); without it the peer must be
// in our own trust domain. An optional name prefix "NAME=" names the listener in logs and
// metrics (default: "out-9000" / "in-9443"). IPv6 hosts go in brackets: [::1]:9000.
struct ListenerSpec {
  enum class Kind { kOutbound, kInbound };
  Kind kind = Kind::kOutbound;
  std::string name;
  std::string bind_host;
  uint16_t bind_port = 0;
  std::string upstream_host;
  uint16_t upstream_port = 0;
  std::vector<identity::SpiffeIdPattern> peers;
};

// Parses one spec; InvalidArgument quoting the spec and saying which part is wrong, with an
// example of the expected form.
absl::StatusOr<ListenerSpec> ParseListenerSpec(absl::string_view text);

// Parses a comma-separated list (the --listeners flag), rejecting duplicate names.
absl::StatusOr<std::vector<ListenerSpec>> ParseListenerSpecs(absl::string_view text);

}  // namespace trellis::proxy
