#pragma once

#include "absl/status/statusor.h"
#include "proxy/conn/socket_util.h"

namespace trellis::proxy {

// The destination an accepted connection had before iptables REDIRECTed it to us
// (SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6). FailedPrecondition when the
// connection was not redirected: the option is unavailable (no conntrack entry), or it names
// the listener's own address (conntrack saw a direct connection).
absl::StatusOr<SocketAddress> OriginalDestination(int fd);

}  // namespace trellis::proxy
