#include "proxy/event/timer_heap.h"

#include <vector>

#include "gtest/gtest.h"

namespace trellis::proxy {
namespace {

TEST(TimerHeapTest, PopsInDeadlineThenInsertionOrder) {
  TimerHeap heap;
  const absl::Time t0 = absl::UnixEpoch();
  std::vector<int> order;
  heap.Add(t0 + absl::Seconds(2), [&] { order.push_back(3); });
  heap.Add(t0 + absl::Seconds(1), [&] { order.push_back(1); });
  heap.Add(t0 + absl::Seconds(1), [&] { order.push_back(2); });
  EXPECT_EQ(*heap.NextDeadline(), t0 + absl::Seconds(1));
  EXPECT_EQ(heap.PopExpired(t0), nullptr);
  while (auto f = heap.PopExpired(t0 + absl::Seconds(5))) f();
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  EXPECT_FALSE(heap.NextDeadline().has_value());
}

TEST(TimerHeapTest, CancelledTimersNeverFireAndDoNotAccumulate) {
  TimerHeap heap;
  const absl::Time t0 = absl::UnixEpoch();
  int fired = 0;
  for (int i = 0; i < 10000; ++i) {
    heap.Cancel(heap.Add(t0 + absl::Hours(1), [&] { ++fired; }));
  }
  const TimerId keep = heap.Add(t0 + absl::Seconds(1), [&] { ++fired; });
  EXPECT_NE(keep, kNoTimer);
  EXPECT_EQ(heap.size(), 1u);
  while (auto f = heap.PopExpired(t0 + absl::Hours(2))) f();
  EXPECT_EQ(fired, 1);
  heap.Cancel(keep);  // already fired: ignored
}

}  // namespace
}  // namespace trellis::proxy
