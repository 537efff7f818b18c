#pragma once

// One event loop per worker thread: file descriptor readiness, timers, cross-thread Post() and
// deferred deletion. It knows nothing of TLS or connections.
//
// Threading: Create() may run anywhere; Run() binds the loop to the calling thread, and from
// then on every method except Post(), Stop() and IsLoopThread() must be called on that thread
// (checked by AssertLoopThread() in debug and sanitizer builds). Before Run(), the creating
// thread may register fds and timers.

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proxy/event/timer_heap.h"
#include "proxy/event/unique_fd.h"

namespace trellis::proxy {

// Anything the loop may destroy later (see EpollLoop::DeferDelete).
class DeferredDeletable {
 public:
  virtual ~DeferredDeletable() = default;
};

// Readiness bits passed to fd callbacks.
inline constexpr uint32_t kReadable = 1u << 0;
inline constexpr uint32_t kWritable = 1u << 1;
inline constexpr uint32_t kClosedOrError = 1u << 2;  // EPOLLHUP/EPOLLERR/EPOLLRDHUP

using FdToken = uint64_t;

class EpollLoop {
 public:
  using FdCallback = std::function<void(uint32_t events)>;

  static absl::StatusOr<std::unique_ptr<EpollLoop>> Create();
  // Destroys pending deferred objects and posted tasks without running them.
  ~EpollLoop();

  // Watches `fd` (not owned) for readability and writability, EDGE-TRIGGERED, for as long as it
  // is registered. Why edge-triggered: interest is set once per fd (one epoll_ctl per
  // connection side, none when backpressure starts or stops); the connection remembers which
  // side is ready and reads or writes until EAGAIN, which it must do anyway because OpenSSL
  // buffers records internally (a level-triggered loop would not report bytes already pulled
  // into the SSL buffer either). The price: a handler that stops early (a full buffer, a
  // fairness budget) must remember the fd is still ready, or call Activate().
  // Returns a token that names this registration; events for a removed token are dropped, so
  // an fd number reused within one iteration never reaches the old handler.
  absl::StatusOr<FdToken> AddFd(int fd, FdCallback callback);
  // Stops watching; safe inside the fd's own callback. Must precede close(fd).
  void RemoveFd(FdToken token);
  // Runs the callback of `token` with `events` in the next iteration (if still registered).
  void Activate(FdToken token, uint32_t events);

  // Runs `callback` once, on the loop thread, no earlier than `delay` from now.
  TimerId AddTimer(absl::Duration delay, std::function<void()> callback);
  // Unknown or fired timers are ignored; safe inside any callback.
  void CancelTimer(TimerId id);

  // Thread-safe: queues `task` to run on the loop thread in its next iteration (in order).
  void Post(std::function<void()> task);

  // Destroys `object` at the end of the current iteration, after every callback of this
  // iteration has returned; a connection uses it to delete itself from its own callback.
  void DeferDelete(std::unique_ptr<DeferredDeletable> object);

  // Runs until Stop(). Posted tasks queued before Stop() still run. On return the loop is no
  // longer bound to this thread.
  void Run();
  // Thread-safe: makes Run() return after the current iteration.
  void Stop();

  bool IsLoopThread() const;
  // Aborts (in debug/sanitizer builds) when called off the loop thread once Run() started.
  void AssertLoopThread() const;

  // The time at the start of the current iteration (cheap; what timeouts compare against).
  absl::Time Now() const { return now_; }

 private:
  EpollLoop(UniqueFd epoll_fd, UniqueFd wake_fd);
  void RunOnce();
  void RunPosted();
  void Wake();

  struct Handler {
    int fd;
    FdCallback callback;
  };

  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;  // eventfd: written by Post()/Stop() from other threads
  std::atomic<std::thread::id> owner_{};
  std::atomic<bool> stop_{false};
  absl::Time now_;

  FdToken next_token_ = 1;
  absl::flat_hash_map<FdToken, std::shared_ptr<Handler>> handlers_;
  std::vector<std::pair<FdToken, uint32_t>> activated_;
  TimerHeap timers_;
  std::vector<std::unique_ptr<DeferredDeletable>> deferred_;

  absl::Mutex mu_;
  // Set with posted_ under mu_; read without it, so that an iteration with nothing posted (the
  // common case) takes no lock.
  std::atomic<bool> has_posted_{false};
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
  bool wake_pending_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace trellis::proxy
