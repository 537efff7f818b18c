#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace trellis::control_plane {

struct AdmissionOptions {
  // How many signings may run at once. Signing is CPU-bound, so about the number of cores.
  int max_concurrent = 4;
  // Slots only first issuances may use: a renewal storm can never starve new workloads.
  int reserved_for_first_issuance = 1;
  // How long a request may wait for a slot before it is told to come back later.
  absl::Duration first_issuance_wait = absl::Seconds(1);
  absl::Duration renewal_wait = absl::Milliseconds(100);
  // How many requests may wait at once; beyond that, refuse at once.
  int max_waiting = 256;
  // Per-identity token bucket: sustained rate and burst. A healthy proxy renews once per half
  // lifetime; a loop asking many times a second is a bug to be slowed down.
  double per_identity_rate_per_second = 1.0;
  double per_identity_burst = 5.0;
  // Identities remembered by the rate limiter (least recently seen are forgotten first).
  size_t max_tracked_identities = 100000;
  // The base of the retry hint given to a refused caller; jitter is added so refused callers
  // do not come back together.
  absl::Duration retry_base = absl::Seconds(1);
  std::function<absl::Time()> clock;
};

// Decides whether an issuance may run now, and runs it. Thread-safe.
//
// Submit() never blocks: a request that may start at once runs on one of the admission's own
// max_concurrent worker threads; one that may not waits in a queue (first issuances ahead of
// renewals) for at most its bound; a request refused gets
//  - RESOURCE_EXHAUSTED when its identity asked too often (CheckRate; retry_after: when its
//    bucket refills),
//  - UNAVAILABLE when too many wait, or no slot freed within the wait (retry_after: a jittered
//    backoff).
// gRPC's threads therefore never wait for a slot: thousands of queued calls cost no thread, and
// overload is answered by this queue (with a retry hint) rather than by calls piling up unread
// inside gRPC until their deadlines pass.
class IssuanceAdmission {
 public:
  explicit IssuanceAdmission(AdmissionOptions options);
  // Refuses what still waits (UNAVAILABLE, "shutting down"), lets started work finish, joins.
  ~IssuanceAdmission();
  IssuanceAdmission(const IssuanceAdmission&) = delete;
  IssuanceAdmission& operator=(const IssuanceAdmission&) = delete;

  struct Decision {
    absl::Status status;
    absl::Duration retry_after;  // meaningful when !status.ok()
  };

  // Exactly one of the two runs. `start` runs on a worker thread once the request holds a
  // signing slot; it does the work and then calls Release(). `refuse` runs with the refusal: on
  // the calling thread when too many already wait, on the admission's timer thread when the wait
  // bound passes. Called before any expensive work (token and CSR verification, signing), so a
  // refusal under overload costs almost nothing.
  void Submit(bool renewal, std::function<void()> start, std::function<void(Decision)> refuse);

  // The blocking form of Submit (for callers on their own thread): OK once a slot is held (call
  // Release() after), or the refusal.
  Decision AcquireSlot(bool renewal);

  // CheckRate, then AcquireSlot.
  Decision Admit(const std::string& identity, bool renewal);

  // The per-identity rate limit, once the identity is known. Takes no slot.
  Decision CheckRate(const std::string& identity);

  // Gives back a slot taken by Submit, Admit or AcquireSlot; starts the next waiter, if any.
  void Release();

  int in_flight() const;
  int waiting() const;

  // Prometheus text: trellis_cp_issuances_in_flight (slots held) and
  // trellis_cp_issuances_waiting{kind="first"|"renewal"} (queued), gauges read now.
  std::string RenderMetrics() const;

 private:
  struct Waiter {
    bool renewal;
    absl::Time deadline;  // real clock
    std::function<void()> start;
    std::function<void(Decision)> refuse;
  };

  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }
  bool TakeRateToken(const std::string& identity, absl::Duration* retry_after);
  absl::Duration JitteredRetry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CanStartLocked(bool renewal) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves every waiter that may start now to the workers' queue, taking its slot.
  void DispatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Decision OverloadedLocked(absl::string_view why, bool renewal) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Decision ShuttingDownLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop();
  void TimerLoop();

  const AdmissionOptions options_;
  const int renewal_slots_;  // slots a renewal may use: the rest are for first issuances

  mutable absl::Mutex mu_;
  absl::CondVar work_cv_;   // workers: something to run, or stopping
  absl::CondVar timer_cv_;  // timer: a new earliest deadline, or stopping
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Waiter> first_waiting_ ABSL_GUARDED_BY(mu_);         // deadlines in order (one bound)
  std::deque<Waiter> renewal_waiting_ ABSL_GUARDED_BY(mu_);       // deadlines in order (one bound)
  std::deque<std::function<void()>> ready_ ABSL_GUARDED_BY(mu_);  // admitted, not yet started
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t jitter_state_ ABSL_GUARDED_BY(mu_) = 0x9e3779b97f4a7c15ULL;
  std::vector<std::thread> workers_;
  std::thread timer_;

  struct Bucket {
    double tokens;
    absl::Time updated;
    std::list<std::string>::iterator lru;
  };
  absl::Mutex rate_mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(rate_mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(rate_mu_);  // most recent first
};

}  // namespace trellis::control_plane
