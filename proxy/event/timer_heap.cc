#include "proxy/event/timer_heap.h"

#include <algorithm>

namespace trellis::proxy {

TimerId TimerHeap::Add(absl::Time deadline, std::function<void()> callback) {
  const TimerId id = next_id_++;
  callbacks_.emplace(id, std::move(callback));
  heap_.push_back(Entry{deadline, id});
  std::push_heap(heap_.begin(), heap_.end(), Later);
  return id;
}

void TimerHeap::Cancel(TimerId id) {
  if (callbacks_.erase(id) == 0) return;
  // Rebuild when dead entries dominate, so a churn of cancelled long timeouts (idle timers of
  // closed connections) cannot grow the heap without bound.
  if (heap_.size() > 64 && heap_.size() > 2 * callbacks_.size()) {
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(),
                               [this](const Entry& e) { return !callbacks_.contains(e.id); }),
                heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), Later);
  }
}

void TimerHeap::DropCancelledTop() {
  while (!heap_.empty() && !callbacks_.contains(heap_.front().id)) {
    std::pop_heap(heap_.begin(), heap_.end(), Later);
    heap_.pop_back();
  }
}

std::optional<absl::Time> TimerHeap::NextDeadline() {
  DropCancelledTop();
  if (heap_.empty()) return std::nullopt;
  return heap_.front().deadline;
}

std::function<void()> TimerHeap::PopExpired(absl::Time now) {
  DropCancelledTop();
  if (heap_.empty() || heap_.front().deadline > now) return nullptr;
  const TimerId id = heap_.front().id;
  std::pop_heap(heap_.begin(), heap_.end(), Later);
  heap_.pop_back();
  auto it = callbacks_.find(id);
  std::function<void()> callback = std::move(it->second);
  callbacks_.erase(it);
  return callback;
}

}  // namespace trellis::proxy
