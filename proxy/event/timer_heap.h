#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace trellis::proxy {

using TimerId = uint64_t;
inline constexpr TimerId kNoTimer = 0;

// A min-heap of one-shot timers keyed by deadline (ties fire in the order they were added).
// Add and PopExpired are O(log n); Cancel is O(1) and lazy: the heap entry stays until it reaches
// the top or until cancelled entries outnumber live ones, when the heap is rebuilt (amortised
// O(1) per cancel). Connections re-arm rarely (idle checks compare a last-activity timestamp
// instead of resetting a timer per read), so the heap holds about one entry per timeout.
// Not thread-safe: owned by one EpollLoop.
class TimerHeap {
 public:
  // Returns a non-zero id.
  TimerId Add(absl::Time deadline, std::function<void()> callback);
  // Forgets `id`; unknown or already fired ids are ignored.
  void Cancel(TimerId id);
  // The earliest live deadline, if any.
  std::optional<absl::Time> NextDeadline();
  // Removes and returns the earliest timer due at `now`, or an empty function.
  std::function<void()> PopExpired(absl::Time now);

  size_t size() const { return callbacks_.size(); }

 private:
  struct Entry {
    absl::Time deadline;
    TimerId id;
  };
  // std::push_heap builds a max-heap; "greater" puts the earliest deadline on top.
  static bool Later(const Entry& a, const Entry& b) {
    return a.deadline != b.deadline ? a.deadline > b.deadline : a.id > b.id;
  }
  void DropCancelledTop();

  std::vector<Entry> heap_;
  absl::flat_hash_map<TimerId, std::function<void()>> callbacks_;
  TimerId next_id_ = 1;
};

}  // namespace trellis::proxy
