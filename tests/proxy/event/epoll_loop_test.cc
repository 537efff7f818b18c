#include "proxy/event/epoll_loop.h"

#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace trellis::proxy {
namespace {

class LoopThread {
 public:
  LoopThread() : loop_(*EpollLoop::Create()), thread_([this] { loop_->Run(); }) {}
  ~LoopThread() {
    loop_->Stop();
    thread_.join();
  }
  EpollLoop* loop() { return loop_.get(); }
  // Runs `task` on the loop thread and waits (bounded).
  void RunAndWait(std::function<void()> task) {
    absl::Notification done;
    loop_->Post([&] {
      task();
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  }

 private:
  std::unique_ptr<EpollLoop> loop_;
  std::thread thread_;
};

TEST(EpollLoopTest, ReportsReadableAndWritable) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  LoopThread t;
  absl::Notification writable, readable;
  std::atomic<bool> saw_readable{false};
  FdToken token = 0;
  t.RunAndWait([&] {
    token = *t.loop()->AddFd(a.get(), [&](uint32_t ev) {
      if (ev & kWritable && !writable.HasBeenNotified()) writable.Notify();
      if (ev & kReadable && !saw_readable.exchange(true)) readable.Notify();
    });
  });
  EXPECT_TRUE(writable.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_EQ(write(b.get(), "x", 1), 1);
  EXPECT_TRUE(readable.WaitForNotificationWithTimeout(absl::Seconds(5)));
  t.RunAndWait([&] { t.loop()->RemoveFd(token); });
}

TEST(EpollLoopTest, TimersFireInDeadlineOrderAndCancelWorks) {
  LoopThread t;
  std::vector<int> order;
  absl::Notification done;
  t.RunAndWait([&] {
    t.loop()->AddTimer(absl::Milliseconds(30), [&] { order.push_back(3); });
    t.loop()->AddTimer(absl::Milliseconds(10), [&] { order.push_back(1); });
    const TimerId cancelled =
        t.loop()->AddTimer(absl::Milliseconds(20), [&] { order.push_back(99); });
    t.loop()->AddTimer(absl::Milliseconds(20), [&] { order.push_back(2); });
    t.loop()->AddTimer(absl::Milliseconds(50), [&] { done.Notify(); });
    t.loop()->CancelTimer(cancelled);
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  t.RunAndWait([&] { EXPECT_EQ(order, (std::vector<int>{1, 2, 3})); });
}

TEST(EpollLoopTest, TimerDoesNotFireEarly) {
  LoopThread t;
  absl::Notification fired;
  const absl::Time start = absl::Now();
  absl::Time at;
  t.RunAndWait([&] {
    t.loop()->AddTimer(absl::Milliseconds(50), [&] {
      at = absl::Now();
      fired.Notify();
    });
  });
  ASSERT_TRUE(fired.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_GE(at - start, absl::Milliseconds(50));
}

TEST(EpollLoopTest, PostFromOtherThreadsRunsOnLoopThreadInOrder) {
  LoopThread t;
  std::thread::id loop_thread;
  t.RunAndWait([&] { loop_thread = std::this_thread::get_id(); });
  std::vector<int> seen;
  std::atomic<int> count{0};
  std::vector<std::thread> posters;
  for (int p = 0; p < 4; ++p) {
    posters.emplace_back([&, p] {
      for (int i = 0; i < 1000; ++i) {
        t.loop()->Post([&, p, i] {
          EXPECT_EQ(std::this_thread::get_id(), loop_thread);
          EXPECT_TRUE(t.loop()->IsLoopThread());
          if (p == 0) seen.push_back(i);
          count.fetch_add(1);
        });
      }
    });
  }
  for (auto& th : posters) th.join();
  t.RunAndWait([] {});
  EXPECT_EQ(count.load(), 4000);
  t.RunAndWait([&] {
    ASSERT_EQ(seen.size(), 1000u);
    for (int i = 0; i < 1000; ++i) EXPECT_EQ(seen[i], i);
  });
  EXPECT_FALSE(t.loop()->IsLoopThread());
}

class Tracked : public DeferredDeletable {
 public:
  explicit Tracked(std::atomic<bool>* alive) : alive_(alive) { *alive_ = true; }
  ~Tracked() override { *alive_ = false; }

 private:
  std::atomic<bool>* alive_;
};

TEST(EpollLoopTest, DeferredDeleteWaitsForTheEndOfTheIteration) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  LoopThread t;
  std::atomic<bool> alive{false};
  absl::Notification checked;
  t.RunAndWait([&] {
    auto object = std::make_unique<Tracked>(&alive);
    Tracked* raw = object.get();
    auto owner = std::make_shared<std::unique_ptr<Tracked>>(std::move(object));
    FdToken* token = new FdToken(0);
    *token = *t.loop()->AddFd(a.get(), [&, owner, raw, token](uint32_t ev) {
      if (!(ev & kReadable) || *owner == nullptr) return;
      // Deleting "itself" from its own callback: still alive until the iteration ends.
      t.loop()->RemoveFd(*token);
      delete token;
      t.loop()->DeferDelete(std::move(*owner));
      EXPECT_TRUE(alive.load());
      EXPECT_NE(raw, nullptr);
      t.loop()->Post([&] {
        // Posted tasks run before deferred deletion in the same iteration... the object is
        // gone once the next iteration starts.
        t.loop()->Post([&] {
          EXPECT_FALSE(alive.load());
          checked.Notify();
        });
      });
    });
  });
  ASSERT_EQ(write(b.get(), "x", 1), 1);
  ASSERT_TRUE(checked.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_FALSE(alive.load());
}

TEST(EpollLoopTest, EventsForRemovedFdAreDropped) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  LoopThread t;
  std::atomic<int> calls{0};
  t.RunAndWait([&] {
    const FdToken token = *t.loop()->AddFd(a.get(), [&](uint32_t) { calls.fetch_add(1); });
    t.loop()->Activate(token, kReadable);
    t.loop()->RemoveFd(token);
  });
  ASSERT_EQ(write(b.get(), "x", 1), 1);
  t.RunAndWait([] {});
  t.RunAndWait([] {});
  EXPECT_EQ(calls.load(), 0);
}

}  // namespace
}  // namespace trellis::proxy
