#pragma once

#include "absl/status/statusor.h"
#include "proxy/conn/socket_util.h"
#include "proxy/event/unique_fd.h"

namespace trellis::proxy {

// Opens a non-blocking TCP listening socket on `address` with SO_REUSEADDR and SO_REUSEPORT
// (so that every worker binds the same port and the kernel spreads connections among them).
// Errors name the address and the errno.
absl::StatusOr<UniqueFd> OpenListenSocket(const SocketAddress& address, int backlog = 4096);

}  // namespace trellis::proxy
