#include "proxy/identity/refresh_policy.h"

#include "gtest/gtest.h"

namespace trellis::proxy {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(RefreshPolicyTest, HalfLifeWithJitterWhenNoHint) {
  RefreshPolicy policy;
  CertificateTimes cert{kT0, kT0 + absl::Hours(1), std::nullopt};
  struct Row {
    double sample;
    absl::Duration expected;  // after not_before
  } rows[] = {{0.5, absl::Minutes(30)}, {0.0, absl::Minutes(24)}, {0.999999, absl::Minutes(36)}};
  for (const Row& row : rows) {
    const absl::Time at = NextRefresh(kT0, cert, std::nullopt, row.sample, policy);
    EXPECT_NEAR(absl::ToDoubleSeconds(at - kT0), absl::ToDoubleSeconds(row.expected), 0.01)
        << row.sample;
  }
}

TEST(RefreshPolicyTest, ControlPlaneRefreshAfterWins) {
  CertificateTimes cert{kT0, kT0 + absl::Hours(1), kT0 + absl::Minutes(17)};
  EXPECT_EQ(NextRefresh(kT0, cert, std::nullopt, 0.9, RefreshPolicy()), kT0 + absl::Minutes(17));
}

TEST(RefreshPolicyTest, WatchHintPullsRenewalForwardSpreadOverTheWindow) {
  CertificateTimes cert{kT0, kT0 + absl::Hours(1), kT0 + absl::Minutes(30)};
  const absl::Time now = kT0 + absl::Minutes(1);
  const absl::Time hint = now + absl::Minutes(5);
  EXPECT_EQ(NextRefresh(now, cert, hint, 0.5, RefreshPolicy()), now + absl::Seconds(150));
  EXPECT_EQ(NextRefresh(now, cert, hint, 0.0, RefreshPolicy()), now + absl::Seconds(1));  // min
  // A hint later than our own schedule changes nothing.
  EXPECT_EQ(NextRefresh(now, cert, kT0 + absl::Hours(2), 0.5, RefreshPolicy()),
            kT0 + absl::Minutes(30));
}

TEST(RefreshPolicyTest, ClampedToMinimumAndBeforeExpiry) {
  RefreshPolicy policy;
  // refresh_after in the past (e.g. after a long pause): renew soon, but not in a busy loop.
  CertificateTimes late{kT0, kT0 + absl::Hours(1), kT0};
  EXPECT_EQ(NextRefresh(kT0 + absl::Minutes(50), late, std::nullopt, 0.5, policy),
            kT0 + absl::Minutes(50) + absl::Seconds(1));
  // A refresh_after past expiry is pulled back before expiry.
  CertificateTimes bad{kT0, kT0 + absl::Hours(1), kT0 + absl::Hours(5)};
  EXPECT_EQ(NextRefresh(kT0, bad, std::nullopt, 0.5, policy), kT0 + absl::Minutes(54));
  // Short test TTLs work: 6 s lifetime renews at about 3 s.
  CertificateTimes shortlived{kT0, kT0 + absl::Seconds(6), std::nullopt};
  EXPECT_NEAR(absl::ToDoubleSeconds(NextRefresh(kT0, shortlived, std::nullopt, 0.5, policy) - kT0),
              3.0, 0.01);
}

TEST(RefreshPolicyTest, BackdatedNotBeforeDoesNotPullShortRenewalsIntoThePast) {
  // Issued now for 6 s, with NotBefore backdated 5 minutes for clock skew: renew at about 3 s,
  // not at once (counting from NotBefore would put half-life 2.5 minutes in the past).
  CertificateTimes cert{kT0 - absl::Minutes(5), kT0 + absl::Seconds(6), std::nullopt, kT0};
  EXPECT_NEAR(absl::ToDoubleSeconds(NextRefresh(kT0, cert, std::nullopt, 0.5, RefreshPolicy()) - kT0),
              3.0, 0.01);
  // The control plane's refresh_after (3 s) is kept, not pulled before expiry-minus-margin.
  cert.refresh_after = kT0 + absl::Seconds(3);
  EXPECT_EQ(NextRefresh(kT0, cert, std::nullopt, 0.5, RefreshPolicy()), kT0 + absl::Seconds(3));
}

TEST(RefreshPolicyTest, RetryBacksOffExponentiallyWithJitterAndCap) {
  RefreshPolicy policy;
  const absl::Time never = absl::InfiniteFuture();
  EXPECT_EQ(RetryDelay(0, 0.5, kT0, never, policy), absl::Milliseconds(500));
  EXPECT_EQ(RetryDelay(1, 0.5, kT0, never, policy), absl::Seconds(1));
  EXPECT_EQ(RetryDelay(3, 0.5, kT0, never, policy), absl::Seconds(4));
  // No certificate yet: capped at 5 s (+/- 50% jitter), not 30 s.
  EXPECT_EQ(RetryDelay(20, 0.5, kT0, never, policy), absl::Seconds(5));
  EXPECT_EQ(RetryDelay(20, 0.0, kT0, never, policy), absl::Seconds(2.5));
  EXPECT_EQ(RetryDelay(100000, 0.5, kT0, never, policy), absl::Seconds(5));
  // An expired certificate: the same short cap.
  EXPECT_EQ(RetryDelay(20, 0.5, kT0, kT0 - absl::Seconds(1), policy), absl::Seconds(5));
  // A valid certificate with plenty of time left: the long cap applies.
  EXPECT_EQ(RetryDelay(20, 0.5, kT0, kT0 + absl::Hours(1), policy), absl::Seconds(30));
  EXPECT_EQ(RetryDelay(20, 0.0, kT0, kT0 + absl::Hours(1), policy), absl::Seconds(15));
}

TEST(RefreshPolicyTest, RetriesFitBeforeExpiry) {
  // 8 s of validity left: no wait longer than a quarter of that.
  EXPECT_EQ(RetryDelay(10, 0.5, kT0, kT0 + absl::Seconds(8), RefreshPolicy()), absl::Seconds(2));
}

}  // namespace
}  // namespace trellis::proxy
