// IssuanceAdmission on its own: signing slots, the slots reserved for first issuances, the order
// in which waiters are served, per-identity rate limits (with a fake clock), the waiting-room
// bound and the bound on tracked identities.

#include "control-plane/server/admission.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane {
namespace {

using ::testing::HasSubstr;

// A clock that only moves when told to, and counts how often it was read.
class FakeClock {
 public:
  absl::Time Now() {
    reads_.fetch_add(1);
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  int reads() const { return reads_.load(); }
  std::function<absl::Time()> AsFunction() {
    return [this] { return Now(); };
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  std::atomic<int> reads_{0};
};

// Polls `condition` every 1 ms for at most 5 s.
template <typename Condition>
bool Eventually(Condition condition) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!condition()) {
    if (absl::Now() > deadline) return condition();
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

AdmissionOptions Unlimited(FakeClock* clock) {
  AdmissionOptions options;
  options.per_identity_rate_per_second = 1000;
  options.per_identity_burst = 1000;
  options.clock = clock->AsFunction();
  return options;
}

// One signing slot, not reserved: the second caller always has to wait.
AdmissionOptions OneSlot(FakeClock* clock) {
  AdmissionOptions options = Unlimited(clock);
  options.max_concurrent = 1;
  options.reserved_for_first_issuance = 0;
  return options;
}

TEST(IssuanceAdmissionTest, SlotsBoundConcurrency) {
  FakeClock clock;
  AdmissionOptions options = Unlimited(&clock);
  options.max_concurrent = 2;
  options.reserved_for_first_issuance = 0;
  options.first_issuance_wait = absl::Milliseconds(50);
  IssuanceAdmission admission(options);

  ASSERT_TRUE(admission.Admit("spiffe://td/a", false).status.ok());
  ASSERT_TRUE(admission.Admit("spiffe://td/b", false).status.ok());
  EXPECT_EQ(admission.in_flight(), 2);
  const absl::Time start = absl::Now();
  IssuanceAdmission::Decision third = admission.Admit("spiffe://td/c", false);
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(third.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(third.status.message(), HasSubstr("no signing slot within 50ms"));
  EXPECT_GE(waited, absl::Milliseconds(45));
  EXPECT_LT(waited, absl::Seconds(2));
  EXPECT_EQ(admission.in_flight(), 2);

  admission.Release();
  EXPECT_TRUE(admission.Admit("spiffe://td/c", false).status.ok());
  EXPECT_EQ(admission.in_flight(), 2);
  admission.Release();
  admission.Release();
  EXPECT_EQ(admission.in_flight(), 0);
}

TEST(IssuanceAdmissionTest, RenewalWaitsAtMostRenewalWaitThenGetsJitteredRetry) {
  FakeClock clock;
  AdmissionOptions options = OneSlot(&clock);
  options.renewal_wait = absl::Milliseconds(100);
  options.retry_base = absl::Seconds(2);
  IssuanceAdmission admission(options);
  ASSERT_TRUE(admission.Admit("spiffe://td/holder", false).status.ok());

  std::vector<absl::Duration> retries;
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    IssuanceAdmission::Decision renewal = admission.Admit("spiffe://td/renewer", true);
    const absl::Duration waited = absl::Now() - start;
    EXPECT_EQ(renewal.status.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(renewal.status.message(), HasSubstr("renewals yield to first issuances"));
    EXPECT_GE(waited, absl::Milliseconds(95));
    EXPECT_LT(waited, absl::Seconds(1));
    EXPECT_GE(renewal.retry_after, absl::Seconds(1));  // 0.5 x base
    EXPECT_LT(renewal.retry_after, absl::Seconds(3));  // 1.5 x base
    retries.push_back(renewal.retry_after);
  }
  // Jittered: refused callers do not all come back at the same instant.
  EXPECT_NE(std::count(retries.begin(), retries.end(), retries[0]),
            static_cast<long>(retries.size()));
  EXPECT_EQ(admission.in_flight(), 1);
}

TEST(IssuanceAdmissionTest, FirstIssuanceTakesTheReservedSlotRenewalsCannot) {
  FakeClock clock;
  AdmissionOptions options = Unlimited(&clock);
  options.max_concurrent = 2;
  options.reserved_for_first_issuance = 1;
  options.renewal_wait = absl::Milliseconds(20);
  options.first_issuance_wait = absl::Milliseconds(20);
  IssuanceAdmission admission(options);

  ASSERT_TRUE(admission.Admit("spiffe://td/r1", true).status.ok());
  IssuanceAdmission::Decision r2 = admission.Admit("spiffe://td/r2", true);
  EXPECT_EQ(r2.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(admission.Admit("spiffe://td/new-pod", false).status.ok());
  EXPECT_EQ(admission.in_flight(), 2);
  // Now every slot is taken: first issuances wait too.
  EXPECT_EQ(admission.Admit("spiffe://td/new-pod-2", false).status.code(),
            absl::StatusCode::kUnavailable);
}

TEST(IssuanceAdmissionTest, FirstIssuancesAreServedBeforeWaitingRenewals) {
  FakeClock clock;
  AdmissionOptions options = OneSlot(&clock);
  options.renewal_wait = absl::Seconds(10);
  options.first_issuance_wait = absl::Seconds(10);
  IssuanceAdmission admission(options);
  ASSERT_TRUE(admission.Admit("spiffe://td/holder", false).status.ok());

  std::atomic<int> order{0};
  std::atomic<int> renewal_rank{0};
  std::atomic<int> first_rank{0};
  std::atomic<bool> renewal_ok{false};
  std::atomic<bool> first_ok{false};
  // The renewal starts waiting first; then a first issuance arrives.
  int reads = clock.reads();
  std::thread renewal([&] {
    renewal_ok = admission.Admit("spiffe://td/renewer", true).status.ok();
    renewal_rank = ++order;
  });
  ASSERT_TRUE(Eventually([&] { return admission.waiting() == 1; }));
  reads = clock.reads();
  std::thread first([&] {
    first_ok = admission.Admit("spiffe://td/new-pod", false).status.ok();
    first_rank = ++order;
  });
  ASSERT_TRUE(Eventually([&] { return clock.reads() > reads; }));
  // Both wait in the queue now.
  ASSERT_TRUE(Eventually([&] { return admission.waiting() == 2; }));

  admission.Release();  // one slot frees: the first issuance must get it
  ASSERT_TRUE(Eventually([&] { return first_rank.load() != 0; }));
  EXPECT_TRUE(first_ok);
  EXPECT_EQ(first_rank, 1);
  EXPECT_EQ(renewal_rank, 0) << "the renewal took the slot before the waiting first issuance";

  admission.Release();  // the next one goes to the renewal
  ASSERT_TRUE(Eventually([&] { return renewal_rank.load() != 0; }));
  EXPECT_TRUE(renewal_ok);
  EXPECT_EQ(renewal_rank, 2);
  renewal.join();
  first.join();
  admission.Release();
  EXPECT_EQ(admission.in_flight(), 0);
}

TEST(IssuanceAdmissionTest, RateLimitsPerIdentityAndRefillsOverTime) {
  FakeClock clock;
  AdmissionOptions options;
  options.per_identity_burst = 2;
  options.per_identity_rate_per_second = 1;
  options.clock = clock.AsFunction();
  IssuanceAdmission admission(options);
  const std::string id = "spiffe://td/ns/shop/sa/loop";
  auto admit = [&](const std::string& who) {
    IssuanceAdmission::Decision d = admission.Admit(who, false);
    if (d.status.ok()) admission.Release();
    return d;
  };

  EXPECT_TRUE(admit(id).status.ok());
  EXPECT_TRUE(admit(id).status.ok());
  IssuanceAdmission::Decision limited = admit(id);
  EXPECT_EQ(limited.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(limited.status.message(), HasSubstr(id));
  EXPECT_THAT(limited.status.message(), HasSubstr("too often"));
  EXPECT_EQ(limited.retry_after, absl::Seconds(1));
  // Another identity has its own bucket.
  EXPECT_TRUE(admit("spiffe://td/ns/shop/sa/other").status.ok());

  clock.Advance(absl::Milliseconds(500));
  limited = admit(id);
  EXPECT_EQ(limited.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(limited.retry_after, absl::Milliseconds(500));
  clock.Advance(absl::Milliseconds(500));
  EXPECT_TRUE(admit(id).status.ok());
  EXPECT_EQ(admit(id).status.code(), absl::StatusCode::kResourceExhausted);

  // A long pause refills up to the burst, not beyond.
  clock.Advance(absl::Hours(1));
  EXPECT_TRUE(admit(id).status.ok());
  EXPECT_TRUE(admit(id).status.ok());
  EXPECT_EQ(admit(id).status.code(), absl::StatusCode::kResourceExhausted);
}

TEST(IssuanceAdmissionTest, RefusesAtOnceWhenTooManyAreWaiting) {
  FakeClock clock;
  AdmissionOptions options = OneSlot(&clock);
  options.first_issuance_wait = absl::Seconds(10);
  options.max_waiting = 0;
  IssuanceAdmission admission(options);
  ASSERT_TRUE(admission.Admit("spiffe://td/holder", false).status.ok());
  const absl::Time start = absl::Now();
  IssuanceAdmission::Decision refused = admission.Admit("spiffe://td/late", false);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "waited instead of refusing at once";
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(refused.status.message(), HasSubstr("overloaded (1 signing, 0 waiting)"));
  EXPECT_GE(refused.retry_after, absl::Milliseconds(500));
  EXPECT_LT(refused.retry_after, absl::Milliseconds(1500));
}

// Submit() never blocks its caller (a gRPC thread): the work runs on the admission's own
// threads, at once when a slot is free, later when one frees.
TEST(IssuanceAdmissionTest, SubmitReturnsAtOnceAndStartsTheWorkOnAWorkerThread) {
  FakeClock clock;
  AdmissionOptions options = OneSlot(&clock);
  options.first_issuance_wait = absl::Seconds(30);
  IssuanceAdmission admission(options);

  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> started{0};
  std::atomic<bool> ran_on_caller{false};
  std::atomic<int> refused{0};
  auto submit = [&] {
    admission.Submit(
        false,
        [&] {
          if (std::this_thread::get_id() == caller) ran_on_caller = true;
          ++started;
        },
        [&](IssuanceAdmission::Decision) { ++refused; });
  };
  submit();  // a free slot: starts on a worker
  ASSERT_TRUE(Eventually([&] { return started.load() == 1; }));
  submit();  // no slot (the first still holds it): queued, and this call has already returned
  EXPECT_EQ(admission.waiting(), 1);
  EXPECT_EQ(started.load(), 1);
  admission.Release();  // the queued one starts
  ASSERT_TRUE(Eventually([&] { return started.load() == 2; }));
  EXPECT_FALSE(ran_on_caller);
  EXPECT_EQ(refused.load(), 0);
  admission.Release();
  EXPECT_EQ(admission.in_flight(), 0);
}

// /metrics shows the slots held and the queue by kind.
TEST(IssuanceAdmissionTest, MetricsShowSlotsHeldAndTheQueueByKind) {
  FakeClock clock;
  AdmissionOptions options = OneSlot(&clock);
  options.first_issuance_wait = absl::Seconds(30);
  options.renewal_wait = absl::Seconds(30);
  IssuanceAdmission admission(options);
  ASSERT_TRUE(admission.AcquireSlot(false).status.ok());
  std::atomic<int> started{0};
  auto ignore = [](IssuanceAdmission::Decision) {};
  admission.Submit(
      false, [&] { ++started; }, ignore);
  admission.Submit(
      true, [&] { ++started; }, ignore);
  admission.Submit(
      true, [&] { ++started; }, ignore);
  const std::string text = admission.RenderMetrics();
  EXPECT_THAT(text, HasSubstr("# TYPE trellis_cp_issuances_in_flight gauge\n"
                              "trellis_cp_issuances_in_flight 1\n"));
  EXPECT_THAT(text, HasSubstr("trellis_cp_issuances_waiting{kind=\"first\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("trellis_cp_issuances_waiting{kind=\"renewal\"} 2\n"));
  admission.Release();  // the first issuance starts, then finishes; then the renewals, in turn
  ASSERT_TRUE(Eventually([&] { return started.load() == 1; }));
  admission.Release();
  ASSERT_TRUE(Eventually([&] { return started.load() == 2; }));
  admission.Release();
  ASSERT_TRUE(Eventually([&] { return started.load() == 3; }));
  admission.Release();
  EXPECT_THAT(admission.RenderMetrics(), HasSubstr("trellis_cp_issuances_in_flight 0\n"));
}

// Stopping the control plane answers every queued call (UNAVAILABLE, retry) instead of leaving
// it to the caller's deadline, and lets started work finish.
TEST(IssuanceAdmissionTest, DestructionRefusesWhatStillWaits) {
  FakeClock clock;
  AdmissionOptions options = OneSlot(&clock);
  options.first_issuance_wait = absl::Seconds(30);
  std::atomic<int> refused_shutting_down{0};
  std::atomic<int> started{0};
  {
    IssuanceAdmission admission(options);
    ASSERT_TRUE(admission.AcquireSlot(false).status.ok());
    for (int i = 0; i < 3; ++i) {
      admission.Submit(
          false, [&] { ++started; },
          [&](IssuanceAdmission::Decision d) {
            if (d.status.code() == absl::StatusCode::kUnavailable &&
                absl::StrContains(d.status.message(), "shutting down") &&
                d.retry_after > absl::ZeroDuration()) {
              ++refused_shutting_down;
            }
          });
    }
    EXPECT_EQ(admission.waiting(), 3);
  }
  EXPECT_EQ(refused_shutting_down.load(), 3);
  EXPECT_EQ(started.load(), 0);
}

TEST(IssuanceAdmissionTest, ForgetsLeastRecentlySeenIdentitiesBeyondTheBound) {
  FakeClock clock;
  AdmissionOptions options;
  options.per_identity_burst = 1;
  options.per_identity_rate_per_second = 0.0001;
  options.max_tracked_identities = 2;
  options.clock = clock.AsFunction();
  IssuanceAdmission admission(options);
  auto ok = [&](const std::string& who) {
    IssuanceAdmission::Decision d = admission.Admit(who, false);
    if (d.status.ok()) admission.Release();
    return d.status.ok();
  };
  EXPECT_TRUE(ok("spiffe://td/a"));
  EXPECT_TRUE(ok("spiffe://td/b"));
  EXPECT_FALSE(ok("spiffe://td/a"));  // tracked: its bucket is empty; a is now most recent
  EXPECT_TRUE(ok("spiffe://td/c"));   // a third identity: b, least recently seen, is forgotten
  EXPECT_FALSE(ok("spiffe://td/a"));  // still tracked
  EXPECT_TRUE(ok("spiffe://td/b"));   // forgotten, so it starts again with a full bucket
}

}  // namespace
}  // namespace trellis::control_plane
