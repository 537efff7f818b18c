#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
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

// Decides whether an issuance may run now. Thread-safe.
//
// Admit() either returns OK, after which the caller signs and then calls Release(), or returns
//  - RESOURCE_EXHAUSTED when this identity asked too often (retry_after: when its bucket refills),
//  - UNAVAILABLE when every slot stayed busy for the whole wait (retry_after: a jittered backoff).
class IssuanceAdmission {
 public:
  explicit IssuanceAdmission(AdmissionOptions options);

  struct Decision {
    absl::Status status;
    absl::Duration retry_after;  // meaningful when !status.ok()
  };

  // CheckRate, then AcquireSlot.
  Decision Admit(const std::string& identity, bool renewal);

  // Takes a signing slot, waiting a bounded time. Called before any expensive work (token and
  // CSR verification, signing), so a refusal under overload costs almost nothing.
  Decision AcquireSlot(bool renewal);

  // The per-identity rate limit, once the identity is known. Takes no slot.
  Decision CheckRate(const std::string& identity);

  // Gives back a slot taken by Admit or AcquireSlot.
  void Release();

  int in_flight() const;

 private:
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }
  bool TakeRateToken(const std::string& identity, absl::Duration* retry_after);
  absl::Duration JitteredRetry();

  const AdmissionOptions options_;

  mutable absl::Mutex mu_;
  absl::CondVar first_cv_;    // first issuances waiting for a slot
  absl::CondVar renewal_cv_;  // renewals waiting for a slot
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int first_waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int renewal_waiting_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t jitter_state_ ABSL_GUARDED_BY(mu_) = 0x9e3779b97f4a7c15ULL;

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
