#include "proxy/event/epoll_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace trellis::proxy {
namespace {

constexpr int kMaxEvents = 256;
// The token of the wakeup eventfd's registration (real tokens start at 1).
constexpr uint64_t kWakeToken = 0;

uint32_t ToEvents(uint32_t epoll_events) {
  uint32_t events = 0;
  if (epoll_events & EPOLLIN) events |= kReadable;
  if (epoll_events & EPOLLOUT) events |= kWritable;
  if (epoll_events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
    // Let the handler find the error or EOF with its next read/write.
    events |= kClosedOrError | kReadable | kWritable;
  }
  return events;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EpollLoop>> EpollLoop::Create() {
  UniqueFd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd.valid()) {
    return absl::InternalError(absl::StrCat("epoll_create1: ", std::strerror(errno)));
  }
  UniqueFd wake_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd.valid()) {
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered: drained on every wakeup anyway
  ev.data.u64 = kWakeToken;
  if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, wake_fd.get(), &ev) != 0) {
    return absl::InternalError(absl::StrCat("epoll_ctl(eventfd): ", std::strerror(errno)));
  }
  return std::unique_ptr<EpollLoop>(new EpollLoop(std::move(epoll_fd), std::move(wake_fd)));
}

EpollLoop::EpollLoop(UniqueFd epoll_fd, UniqueFd wake_fd)
    : epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)), now_(absl::Now()) {}

EpollLoop::~EpollLoop() {
  // Deferred objects may unregister fds or timers while they are destroyed.
  std::vector<std::unique_ptr<DeferredDeletable>> deferred = std::move(deferred_);
  deferred.clear();
}

bool EpollLoop::IsLoopThread() const {
  const std::thread::id owner = owner_.load(std::memory_order_acquire);
  return owner == std::thread::id() || owner == std::this_thread::get_id();
}

void EpollLoop::AssertLoopThread() const {
#if !defined(NDEBUG) || defined(__SANITIZE_ADDRESS__)
  if (!IsLoopThread()) {
    static constexpr char kMessage[] = "EpollLoop used off its loop thread\n";
    (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    std::abort();
  }
#endif
}

absl::StatusOr<FdToken> EpollLoop::AddFd(int fd, FdCallback callback) {
  AssertLoopThread();
  const FdToken token = next_token_++;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = token;
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return absl::InternalError(absl::StrCat("epoll_ctl(ADD, ", fd, "): ", std::strerror(errno)));
  }
  handlers_.emplace(token, std::make_shared<Handler>(Handler{fd, std::move(callback)}));
  return token;
}

void EpollLoop::RemoveFd(FdToken token) {
  AssertLoopThread();
  auto it = handlers_.find(token);
  if (it == handlers_.end()) return;
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, it->second->fd, nullptr);
  // A callback running right now holds its own reference (see RunOnce).
  handlers_.erase(it);
}

void EpollLoop::Activate(FdToken token, uint32_t events) {
  AssertLoopThread();
  activated_.emplace_back(token, events);
}

TimerId EpollLoop::AddTimer(absl::Duration delay, std::function<void()> callback) {
  AssertLoopThread();
  // Measured from the real clock, not the iteration's cached time, so that a long iteration
  // does not shorten a fresh timeout.
  return timers_.Add(absl::Now() + delay, std::move(callback));
}

void EpollLoop::CancelTimer(TimerId id) {
  AssertLoopThread();
  timers_.Cancel(id);
}

void EpollLoop::Post(std::function<void()> task) {
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    posted_.push_back(std::move(task));
    has_posted_.store(true, std::memory_order_release);
    wake = !std::exchange(wake_pending_, true);
  }
  if (wake) Wake();
}

void EpollLoop::Wake() {
  const uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the loop will wake anyway.
  (void)!write(wake_fd_.get(), &one, sizeof(one));
}

void EpollLoop::DeferDelete(std::unique_ptr<DeferredDeletable> object) {
  AssertLoopThread();
  deferred_.push_back(std::move(object));
}

void EpollLoop::Stop() {
  stop_.store(true, std::memory_order_release);
  Wake();
}

void EpollLoop::Run() {
  owner_.store(std::this_thread::get_id(), std::memory_order_release);
  while (!stop_.load(std::memory_order_acquire)) RunOnce();
  RunPosted();
  std::vector<std::unique_ptr<DeferredDeletable>> deferred = std::move(deferred_);
  deferred.clear();
  // The loop may now be destroyed (or run again) from another thread.
  owner_.store(std::thread::id(), std::memory_order_release);
}

void EpollLoop::RunPosted() {
  // A task posted after this check also wrote the eventfd, so the next epoll_wait returns.
  if (!has_posted_.load(std::memory_order_acquire)) return;
  std::vector<std::function<void()>> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(posted_);
    has_posted_.store(false, std::memory_order_relaxed);
    wake_pending_ = false;
  }
  for (auto& task : tasks) task();
}

void EpollLoop::RunOnce() {
  int timeout_ms = -1;
  if (has_posted_.load(std::memory_order_acquire) || !activated_.empty()) timeout_ms = 0;
  if (timeout_ms != 0) {
    if (std::optional<absl::Time> next = timers_.NextDeadline()) {
      // Round up: waking a millisecond early would spin until the deadline.
      const absl::Duration wait = *next - absl::Now();
      timeout_ms = wait <= absl::ZeroDuration() ? 0
                                                : static_cast<int>(absl::ToInt64Milliseconds(
                                                      absl::Ceil(wait, absl::Milliseconds(1))));
    }
  }

  epoll_event events[kMaxEvents];
  const int n = epoll_wait(epoll_fd_.get(), events, kMaxEvents, timeout_ms);
  now_ = absl::Now();

  for (int i = 0; i < n; ++i) {
    if (events[i].data.u64 == kWakeToken) {
      uint64_t value;
      (void)!read(wake_fd_.get(), &value, sizeof(value));
      continue;
    }
    auto it = handlers_.find(events[i].data.u64);
    if (it == handlers_.end()) continue;  // removed earlier in this iteration
    std::shared_ptr<Handler> handler = it->second;
    handler->callback(ToEvents(events[i].events));
  }

  std::vector<std::pair<FdToken, uint32_t>> activated;
  activated.swap(activated_);
  for (const auto& [token, ev] : activated) {
    auto it = handlers_.find(token);
    if (it == handlers_.end()) continue;
    std::shared_ptr<Handler> handler = it->second;
    handler->callback(ev);
  }

  while (std::function<void()> timer = timers_.PopExpired(now_)) timer();

  RunPosted();

  // The end of the iteration: nothing of this iteration still runs.
  std::vector<std::unique_ptr<DeferredDeletable>> deferred = std::move(deferred_);
  deferred_.clear();
  deferred.clear();
}

}  // namespace trellis::proxy
