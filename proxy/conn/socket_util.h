#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "proxy/event/unique_fd.h"

namespace trellis::proxy {

// An IPv4 or IPv6 socket address.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  const sockaddr* addr() const { return reinterpret_cast<const sockaddr*>(&storage); }
  uint16_t port() const;
  // "10.0.0.7:8080" or "[::1]:8080"; "-" when empty.
  std::string ToString() const;
};

// Parses a numeric host ("127.0.0.1", "::1", "[::1]") and port. No DNS: the proxy never blocks
// a worker on name resolution.
absl::StatusOr<SocketAddress> ParseSocketAddress(const std::string& host, uint16_t port);

// The peer / local address of a connected socket.
SocketAddress PeerAddress(int fd);
SocketAddress LocalAddress(int fd);

void SetNoDelay(int fd);

// Opens a non-blocking TCP socket and starts connecting to `to`. On success the connection
// may still be in progress (*in_progress): wait for writability, then call ConnectResult().
absl::StatusOr<UniqueFd> StartConnect(const SocketAddress& to, bool* in_progress);

// The outcome of a non-blocking connect once the socket is writable: 0 or an errno.
int ConnectResult(int fd);

}  // namespace trellis::proxy
