#include "control-plane/server/admission.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace trellis::control_plane {

IssuanceAdmission::IssuanceAdmission(AdmissionOptions options)
    : options_(std::move(options)),
      renewal_slots_(std::max(1, options_.max_concurrent - options_.reserved_for_first_issuance)) {
  const int workers = std::max(1, options_.max_concurrent);
  workers_.reserve(static_cast<size_t>(workers));
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  timer_ = std::thread([this] { TimerLoop(); });
}

IssuanceAdmission::~IssuanceAdmission() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_cv_.SignalAll();
    timer_cv_.Signal();
  }
  timer_.join();                                       // refuses what still waits
  for (std::thread& worker : workers_) worker.join();  // after running what was admitted
}

int IssuanceAdmission::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

int IssuanceAdmission::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(first_waiting_.size() + renewal_waiting_.size());
}

std::string IssuanceAdmission::RenderMetrics() const {
  int in_flight = 0;
  size_t first = 0;
  size_t renewal = 0;
  {
    absl::MutexLock lock(&mu_);
    in_flight = in_flight_;
    first = first_waiting_.size();
    renewal = renewal_waiting_.size();
  }
  return absl::StrCat(
      "# HELP trellis_cp_issuances_in_flight Issuances holding a signing slot now.\n"
      "# TYPE trellis_cp_issuances_in_flight gauge\n"
      "trellis_cp_issuances_in_flight ",
      in_flight,
      "\n"
      "# HELP trellis_cp_issuances_waiting Issuances queued for a signing slot (first issuances "
      "are served before renewals).\n"
      "# TYPE trellis_cp_issuances_waiting gauge\n"
      "trellis_cp_issuances_waiting{kind=\"first\"} ",
      first, "\ntrellis_cp_issuances_waiting{kind=\"renewal\"} ", renewal, "\n");
}

bool IssuanceAdmission::TakeRateToken(const std::string& identity, absl::Duration* retry_after) {
  const absl::Time now = Now();
  absl::MutexLock lock(&rate_mu_);
  auto it = buckets_.find(identity);
  if (it == buckets_.end()) {
    if (buckets_.size() >= options_.max_tracked_identities && !lru_.empty()) {
      buckets_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(identity);
    it = buckets_.emplace(identity, Bucket{options_.per_identity_burst, now, lru_.begin()}).first;
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  Bucket& bucket = it->second;
  const double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - bucket.updated));
  bucket.tokens = std::min(options_.per_identity_burst,
                           bucket.tokens + elapsed * options_.per_identity_rate_per_second);
  bucket.updated = now;
  if (bucket.tokens >= 1.0) {
    bucket.tokens -= 1.0;
    return true;
  }
  *retry_after =
      absl::Seconds((1.0 - bucket.tokens) / std::max(options_.per_identity_rate_per_second, 1e-9));
  return false;
}

absl::Duration IssuanceAdmission::JitteredRetry() {
  // xorshift: cheap jitter in [0.5, 1.5) x base; not security relevant.
  jitter_state_ ^= jitter_state_ << 13;
  jitter_state_ ^= jitter_state_ >> 7;
  jitter_state_ ^= jitter_state_ << 17;
  const double factor = 0.5 + static_cast<double>(jitter_state_ % 1000) / 1000.0;
  return options_.retry_base * factor;
}

IssuanceAdmission::Decision IssuanceAdmission::Admit(const std::string& identity, bool renewal) {
  Decision decision = CheckRate(identity);
  if (!decision.status.ok()) return decision;
  return AcquireSlot(renewal);
}

IssuanceAdmission::Decision IssuanceAdmission::CheckRate(const std::string& identity) {
  Decision decision;
  if (!TakeRateToken(identity, &decision.retry_after)) {
    decision.status = absl::ResourceExhaustedError(absl::StrCat(
        identity, " asked for certificates too often (limit ",
        options_.per_identity_rate_per_second, "/s, burst ", options_.per_identity_burst,
        "); retry after ", absl::FormatDuration(decision.retry_after)));
  }
  return decision;
}

bool IssuanceAdmission::CanStartLocked(bool renewal) const {
  // Waiters of the same kind go first (FIFO), and a renewal also yields to any first issuance
  // already waiting.
  return renewal ? in_flight_ < renewal_slots_ && first_waiting_.empty() && renewal_waiting_.empty()
                 : in_flight_ < options_.max_concurrent && first_waiting_.empty();
}

void IssuanceAdmission::DispatchLocked() {
  while (!first_waiting_.empty() && in_flight_ < options_.max_concurrent) {
    ++in_flight_;
    ready_.push_back(std::move(first_waiting_.front().start));
    first_waiting_.pop_front();
    work_cv_.Signal();
  }
  while (first_waiting_.empty() && !renewal_waiting_.empty() && in_flight_ < renewal_slots_) {
    ++in_flight_;
    ready_.push_back(std::move(renewal_waiting_.front().start));
    renewal_waiting_.pop_front();
    work_cv_.Signal();
  }
}

IssuanceAdmission::Decision IssuanceAdmission::OverloadedLocked(absl::string_view why,
                                                                bool renewal) {
  Decision decision;
  decision.retry_after = JitteredRetry();
  decision.status = absl::UnavailableError(absl::StrCat(
      "control plane overloaded: ", why, renewal ? " (renewals yield to first issuances)" : "",
      "; retry after ", absl::FormatDuration(decision.retry_after)));
  return decision;
}

IssuanceAdmission::Decision IssuanceAdmission::ShuttingDownLocked() {
  return Decision{absl::UnavailableError("control plane shutting down; retry"), JitteredRetry()};
}

void IssuanceAdmission::Submit(bool renewal, std::function<void()> start,
                               std::function<void(Decision)> refuse) {
  Decision refusal;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refusal = ShuttingDownLocked();
    } else if (CanStartLocked(renewal)) {
      ++in_flight_;
      ready_.push_back(std::move(start));
      work_cv_.Signal();
      return;
    } else if (static_cast<int>(first_waiting_.size() + renewal_waiting_.size()) >=
               options_.max_waiting) {
      refusal.retry_after = JitteredRetry();
      refusal.status = absl::UnavailableError(
          absl::StrCat("control plane overloaded (", in_flight_, " signing, ",
                       first_waiting_.size() + renewal_waiting_.size(), " waiting); retry after ",
                       absl::FormatDuration(refusal.retry_after)));
    } else {
      // WaitWithDeadline uses the real clock; the injectable clock only affects rate limiting.
      std::deque<Waiter>& queue = renewal ? renewal_waiting_ : first_waiting_;
      queue.push_back(Waiter{
          renewal, absl::Now() + (renewal ? options_.renewal_wait : options_.first_issuance_wait),
          std::move(start), std::move(refuse)});
      if (queue.size() == 1) timer_cv_.Signal();  // a new front: maybe the earliest deadline
      return;
    }
  }
  refuse(std::move(refusal));
}

IssuanceAdmission::Decision IssuanceAdmission::AcquireSlot(bool renewal) {
  absl::Notification done;
  Decision decision;
  Submit(
      renewal, [&done] { done.Notify(); },
      [&done, &decision](Decision refusal) {
        decision = std::move(refusal);
        done.Notify();
      });
  done.WaitForNotification();
  return decision;
}

void IssuanceAdmission::Release() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
  DispatchLocked();
}

void IssuanceAdmission::WorkerLoop() {
  for (;;) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      while (ready_.empty() && !stopping_) work_cv_.Wait(&mu_);
      if (ready_.empty()) return;  // stopping, and everything admitted has started
      job = std::move(ready_.front());
      ready_.pop_front();
    }
    job();
  }
}

void IssuanceAdmission::TimerLoop() {
  for (;;) {
    std::vector<std::pair<Waiter, Decision>> expired;
    bool stop = false;
    {
      absl::MutexLock lock(&mu_);
      for (;;) {
        if (stopping_) break;
        absl::Time earliest = absl::InfiniteFuture();
        if (!first_waiting_.empty()) earliest = first_waiting_.front().deadline;
        if (!renewal_waiting_.empty()) {
          earliest = std::min(earliest, renewal_waiting_.front().deadline);
        }
        if (earliest <= absl::Now()) break;
        timer_cv_.WaitWithDeadline(&mu_, earliest);
      }
      stop = stopping_;
      const absl::Time now = absl::Now();
      for (std::deque<Waiter>* queue : {&first_waiting_, &renewal_waiting_}) {
        while (!queue->empty() && (stop || queue->front().deadline <= now)) {
          Waiter waiter = std::move(queue->front());
          queue->pop_front();
          Decision decision;
          if (stop) {
            decision = ShuttingDownLocked();
          } else {
            decision = OverloadedLocked(
                absl::StrCat("no signing slot within ",
                             absl::FormatDuration(waiter.renewal ? options_.renewal_wait
                                                                 : options_.first_issuance_wait)),
                waiter.renewal);
          }
          expired.emplace_back(std::move(waiter), std::move(decision));
        }
      }
      // Renewals held back only by first issuances that have now given up may start.
      if (!stop) DispatchLocked();
    }
    for (auto& [waiter, decision] : expired) waiter.refuse(std::move(decision));
    if (stop) return;
  }
}

}  // namespace trellis::control_plane
