#include "proxy/listener/acceptor.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log/json_log.h"

namespace trellis::proxy {
namespace {

// Accepted per readiness event before yielding to connections already open.
constexpr int kAcceptBudget = 64;

}  // namespace

Acceptor::Acceptor(EpollLoop* loop, UniqueFd listen_fd, AcceptCallback on_accept)
    : loop_(loop), fd_(std::move(listen_fd)), on_accept_(std::move(on_accept)) {}

Acceptor::~Acceptor() { Close(); }

absl::Status Acceptor::Listen() {
  absl::StatusOr<FdToken> token = loop_->AddFd(fd_.get(), [this](uint32_t events) {
    if (events & kReadable) OnReadable();
  });
  if (!token.ok()) return token.status();
  token_ = *token;
  return absl::OkStatus();
}

void Acceptor::Close() {
  if (token_ != 0) loop_->RemoveFd(token_);
  loop_->CancelTimer(retry_timer_);
  retry_timer_ = kNoTimer;
  token_ = 0;
  fd_.Reset();
}

void Acceptor::OnReadable() {
  for (int i = 0; i < kAcceptBudget && fd_.valid(); ++i) {
    const int fd = accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // EMFILE/ENFILE/ENOBUFS: the connection waits in the backlog; retry on the next event
      // rather than spinning.
      log::Error("accept failed", {{"error", std::strerror(errno)}});
      if (retry_timer_ == kNoTimer) {
        retry_timer_ = loop_->AddTimer(absl::Milliseconds(50), [this] {
          retry_timer_ = kNoTimer;
          OnReadable();
        });
      }
      return;
    }
    on_accept_(UniqueFd(fd));
  }
  // Edge-triggered: more may be waiting; continue in the next iteration.
  if (token_ != 0) loop_->Activate(token_, kReadable);
}

}  // namespace trellis::proxy
