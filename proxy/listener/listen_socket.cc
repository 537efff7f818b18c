#include "proxy/listener/listen_socket.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace trellis::proxy {

absl::StatusOr<UniqueFd> OpenListenSocket(const SocketAddress& address, int backlog) {
  UniqueFd fd(socket(address.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    return absl::InternalError(absl::StrCat("SO_REUSEPORT: ", std::strerror(errno)));
  }
  if (bind(fd.get(), address.addr(), address.length) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot bind ", address.ToString(), ": ", std::strerror(errno)));
  }
  if (listen(fd.get(), backlog) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address.ToString(), ": ", std::strerror(errno)));
  }
  return fd;
}

}  // namespace trellis::proxy
