#include "control-plane/server/admission.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace trellis::control_plane {

IssuanceAdmission::IssuanceAdmission(AdmissionOptions options) : options_(std::move(options)) {}

int IssuanceAdmission::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
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
        identity, " asked for certificates too often (limit ", options_.per_identity_rate_per_second,
        "/s, burst ", options_.per_identity_burst, "); retry after ",
        absl::FormatDuration(decision.retry_after)));
  }
  return decision;
}

IssuanceAdmission::Decision IssuanceAdmission::AcquireSlot(bool renewal) {
  Decision decision;
  const int renewal_slots = std::max(1, options_.max_concurrent - options_.reserved_for_first_issuance);
  absl::MutexLock lock(&mu_);
  // A renewal also yields to any first issuance already waiting.
  auto slot_free = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return renewal ? in_flight_ < renewal_slots && first_waiting_ == 0
                   : in_flight_ < options_.max_concurrent;
  };
  if (!slot_free()) {
    if (first_waiting_ + renewal_waiting_ >= options_.max_waiting) {
      decision.retry_after = JitteredRetry();
      decision.status = absl::UnavailableError(
          absl::StrCat("control plane overloaded (", in_flight_, " signing, ",
                       first_waiting_ + renewal_waiting_, " waiting); retry after ",
                       absl::FormatDuration(decision.retry_after)));
      return decision;
    }
    int& waiting = renewal ? renewal_waiting_ : first_waiting_;
    absl::CondVar& cv = renewal ? renewal_cv_ : first_cv_;
    ++waiting;
    // WaitWithDeadline uses the real clock; the injectable clock only affects rate limiting.
    const absl::Time real_deadline =
        absl::Now() + (renewal ? options_.renewal_wait : options_.first_issuance_wait);
    while (!slot_free()) {
      if (cv.WaitWithDeadline(&mu_, real_deadline) && !slot_free()) break;
    }
    --waiting;
    if (!slot_free()) {
      // Pass the wake-up on: another waiter may be able to use what this one cannot.
      if (first_waiting_ > 0) {
        first_cv_.Signal();
      } else {
        renewal_cv_.Signal();
      }
      decision.retry_after = JitteredRetry();
      decision.status = absl::UnavailableError(absl::StrCat(
          "control plane overloaded: no signing slot within ",
          absl::FormatDuration(renewal ? options_.renewal_wait : options_.first_issuance_wait),
          renewal ? " (renewals yield to first issuances)" : "", "; retry after ",
          absl::FormatDuration(decision.retry_after)));
      return decision;
    }
  }
  ++in_flight_;
  return decision;
}

void IssuanceAdmission::Release() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
  if (first_waiting_ > 0) {
    first_cv_.Signal();
  } else {
    renewal_cv_.Signal();
  }
}

}  // namespace trellis::control_plane
