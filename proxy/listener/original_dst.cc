#include "proxy/listener/original_dst.h"

#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

// From <linux/netfilter_ipv6/ip6_tables.h>, which does not compile as C++ on its own.
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

namespace trellis::proxy {

absl::StatusOr<SocketAddress> OriginalDestination(int fd) {
  const SocketAddress local = LocalAddress(fd);
  SocketAddress out;
  out.length = sizeof(out.storage);
  const bool v6 = local.storage.ss_family == AF_INET6;
  const int rc = v6 ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &out.storage, &out.length)
                    : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &out.storage, &out.length);
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("getsockopt(SO_ORIGINAL_DST) failed (", std::strerror(errno),
                     "): the connection was not redirected by iptables to ", local.ToString()));
  }
  if (out.port() == local.port() && out.ToString() == local.ToString()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the original destination is the capture listener itself (", local.ToString(),
                     "): the connection was not redirected by iptables"));
  }
  return out;
}

}  // namespace trellis::proxy
