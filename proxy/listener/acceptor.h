#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "proxy/conn/socket_util.h"
#include "proxy/event/epoll_loop.h"
#include "proxy/event/unique_fd.h"

namespace trellis::proxy {

// Accepts connections on one listening socket in one EpollLoop and hands each accepted,
// non-blocking socket to a callback. Every worker has its own Acceptor per listener, on its own
// SO_REUSEPORT socket, so accepting needs no lock. Loop-thread only.
class Acceptor {
 public:
  using AcceptCallback = std::function<void(UniqueFd fd)>;

  // Takes the listening socket; starts accepting once registered with Listen().
  Acceptor(EpollLoop* loop, UniqueFd listen_fd, AcceptCallback on_accept);
  ~Acceptor();

  absl::Status Listen();
  // Stops accepting and closes the socket (connections already accepted go on).
  void Close();
  bool open() const { return fd_.valid(); }

 private:
  void OnReadable();

  EpollLoop* const loop_;
  UniqueFd fd_;
  AcceptCallback on_accept_;
  FdToken token_ = 0;
  TimerId retry_timer_ = kNoTimer;
};

}  // namespace trellis::proxy
