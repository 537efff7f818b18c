// LocalSigner: chains, TTL policy, backdating, clamping and concurrent signing.
#include "control-plane/ca/signer.h"

#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/crypto/handles.h"
#include "common/identity/ca.h"
#include "common/identity/private_key.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::control_plane::ca {
namespace {

using ::testing::HasSubstr;
using trellis::testing::BundleOf;
using trellis::testing::MakeIntermediate;
using trellis::testing::MakeRoot;
using trellis::testing::TestCa;

// An intermediate under `parent` without a pathLenConstraint, so that another CA may sit below it
// (the test PKI's intermediates have pathLenConstraint 0).
TestCa MakeUnconstrainedIntermediate(const TestCa& parent, const std::string& name) {
  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
  EXPECT_TRUE(key.ok());
  identity::CaCertificateSpec spec;
  spec.common_name = name;
  spec.not_before = absl::Now() - absl::Hours(1);
  spec.not_after = absl::Now() + absl::Hours(12);
  absl::StatusOr<identity::Certificate> cert =
      identity::CreateIntermediateCertificate(parent.cert, *parent.key, key->get(), spec);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return TestCa{std::make_shared<identity::PrivateKey>(*std::move(key)), *cert, {*cert}};
}

constexpr char kId[] = "spiffe://cluster.local/ns/shop/sa/checkout";

identity::SpiffeId Id() { return *identity::SpiffeId::Parse(kId); }

// X509_V_OK if `chain` (leaf first) verifies against `bundle` at `at`.
int VerifyChain(const std::vector<identity::Certificate>& chain,
                const identity::TrustBundle& bundle, absl::Time at) {
  absl::StatusOr<crypto::UniquePtr<X509_STORE>> store = bundle.NewX509Store();
  EXPECT_TRUE(store.ok());
  crypto::X509Stack untrusted(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    sk_X509_push(untrusted.get(), crypto::UpRef(chain[i].get()).release());
  }
  crypto::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store->get(), chain[0].get(), untrusted.get());
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), absl::ToTimeT(at));
  X509_VERIFY_PARAM_set_purpose(X509_STORE_CTX_get0_param(ctx.get()), X509_PURPOSE_SSL_CLIENT);
  if (X509_verify_cert(ctx.get()) == 1) return X509_V_OK;
  return X509_STORE_CTX_get_error(ctx.get());
}

class SignerTest : public ::testing::Test {
 protected:
  // Whole seconds, as certificates carry them.
  absl::Time now_ = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  TestCa root_ = MakeRoot("Mesh Root");
  TestCa intermediate_ = MakeIntermediate(root_, "Mesh Intermediate");
  identity::PrivateKey workload_key_ = *identity::PrivateKey::GenerateEcdsaP256();

  LocalSignerOptions Options() {
    LocalSignerOptions options;
    options.clock = [this] { return now_; };
    return options;
  }

  std::unique_ptr<LocalSigner> MakeSigner(LocalSignerOptions options) {
    absl::StatusOr<std::unique_ptr<LocalSigner>> signer = LocalSigner::Create(
        CaFiles{intermediate_.cert, intermediate_.key, {}, BundleOf({&root_})}, std::move(options));
    EXPECT_TRUE(signer.ok()) << signer.status();
    return signer.ok() ? *std::move(signer) : nullptr;
  }
  std::unique_ptr<LocalSigner> MakeSigner() { return MakeSigner(Options()); }

  absl::StatusOr<std::vector<identity::Certificate>> Sign(Signer& signer, absl::Duration ttl) {
    return signer.SignLeaf(workload_key_.get(), Id(), ttl, {});
  }
};

TEST_F(SignerTest, LeafVerifiesAgainstRootsThroughIntermediate) {
  std::unique_ptr<LocalSigner> signer = MakeSigner();
  absl::StatusOr<std::vector<identity::Certificate>> chain =
      signer->SignLeaf(workload_key_.get(), Id(), absl::ZeroDuration(), {"cp.trellis-system.svc"});
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_EQ(chain->size(), 2u);
  EXPECT_EQ((*chain)[1], intermediate_.cert);
  EXPECT_EQ(VerifyChain(*chain, signer->trust_bundle(), now_), X509_V_OK);
  EXPECT_FALSE((*chain)[0].is_ca());
  EXPECT_EQ((*chain)[0].GetSpiffeId()->ToString(), kId);
  EXPECT_EQ((*chain)[0].dns_sans(), std::vector<std::string>{"cp.trellis-system.svc"});
  // Without the intermediate, the leaf does not verify.
  EXPECT_NE(VerifyChain({(*chain)[0]}, signer->trust_bundle(), now_), X509_V_OK);
}

TEST_F(SignerTest, ChainCarriesChainFileAndVerifies) {
  TestCa policy = MakeUnconstrainedIntermediate(root_, "Policy CA");
  TestCa issuing = MakeIntermediate(policy, "Issuing CA");
  absl::StatusOr<std::unique_ptr<LocalSigner>> signer = LocalSigner::Create(
      CaFiles{issuing.cert, issuing.key, {policy.cert}, BundleOf({&root_})}, Options());
  ASSERT_TRUE(signer.ok()) << signer.status();
  absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(**signer, absl::ZeroDuration());
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_EQ(chain->size(), 3u);
  EXPECT_EQ((*chain)[1], issuing.cert);
  EXPECT_EQ((*chain)[2], policy.cert);
  EXPECT_EQ(VerifyChain(*chain, (*signer)->trust_bundle(), now_), X509_V_OK);
  // The pre-encoded tail and roots an issuance response carries are these same certificates.
  ASSERT_EQ((*signer)->chain_tail_der().size(), 2u);
  EXPECT_EQ((*signer)->chain_tail_der()[0], issuing.cert.ToDer());
  EXPECT_EQ((*signer)->chain_tail_der()[1], policy.cert.ToDer());
  EXPECT_EQ((*signer)->trust_bundle_der(), std::vector<std::string>{root_.cert.ToDer()});
}

TEST_F(SignerTest, RootSignerReturnsLeafOnly) {
  absl::StatusOr<std::unique_ptr<LocalSigner>> signer =
      LocalSigner::Create(CaFiles{root_.cert, root_.key, {}, BundleOf({&root_})}, Options());
  ASSERT_TRUE(signer.ok()) << signer.status();
  absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(**signer, absl::ZeroDuration());
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_EQ(chain->size(), 1u);
  EXPECT_EQ(VerifyChain(*chain, (*signer)->trust_bundle(), now_), X509_V_OK);
  EXPECT_TRUE((*signer)->chain_tail_der().empty());
}

TEST_F(SignerTest, DefaultTtlIsOneHourAndBackdatedFiveMinutes) {
  std::unique_ptr<LocalSigner> signer = MakeSigner();
  absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(*signer, absl::ZeroDuration());
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)[0].not_after(), now_ + absl::Hours(1));
  EXPECT_EQ((*chain)[0].not_before(), now_ - absl::Minutes(5));
}

TEST_F(SignerTest, BackdateIsConfigurable) {
  LocalSignerOptions options = Options();
  options.backdate = absl::ZeroDuration();
  absl::StatusOr<std::vector<identity::Certificate>> chain =
      Sign(*MakeSigner(options), absl::Minutes(10));
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)[0].not_before(), now_);
  EXPECT_EQ((*chain)[0].not_after(), now_ + absl::Minutes(10));

  options.backdate = absl::Minutes(15);
  chain = Sign(*MakeSigner(options), absl::Minutes(10));
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)[0].not_before(), now_ - absl::Minutes(15));
}

TEST_F(SignerTest, RefusesTtlOutsideDefaultRange) {
  std::unique_ptr<LocalSigner> signer = MakeSigner();
  for (absl::Duration ttl : {absl::Seconds(30), absl::Hours(25), absl::Seconds(-5)}) {
    absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(*signer, ttl);
    ASSERT_FALSE(chain.ok()) << absl::FormatDuration(ttl);
    EXPECT_EQ(chain.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(chain.status().message()), HasSubstr("[1m, 24h]"));
  }
  EXPECT_TRUE(Sign(*signer, absl::Minutes(1)).ok());
  EXPECT_TRUE(Sign(*signer, absl::Hours(24)).ok());
}

TEST_F(SignerTest, ConfiguredRangeAllowsOneSecondLeaves) {
  LocalSignerOptions options = Options();
  options.min_ttl = absl::Seconds(1);
  options.max_ttl = absl::Hours(2);
  std::unique_ptr<LocalSigner> signer = MakeSigner(options);
  absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(*signer, absl::Seconds(1));
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)[0].not_after(), now_ + absl::Seconds(1));
  chain = Sign(*signer, absl::Hours(3));
  ASSERT_FALSE(chain.ok());
  EXPECT_THAT(std::string(chain.status().message()), HasSubstr("[1s, 2h]"));
}

TEST_F(SignerTest, RefusesBadOptions) {
  auto create = [&](LocalSignerOptions options) {
    return LocalSigner::Create(
               CaFiles{intermediate_.cert, intermediate_.key, {}, BundleOf({&root_})},
               std::move(options))
        .status();
  };
  LocalSignerOptions options = Options();
  options.min_ttl = absl::Milliseconds(500);
  EXPECT_EQ(create(options).code(), absl::StatusCode::kInvalidArgument);
  options = Options();
  options.max_ttl = absl::Hours(25);
  EXPECT_THAT(std::string(create(options).message()), HasSubstr("above 24h"));
  options = Options();
  options.default_ttl = absl::Hours(30);
  EXPECT_EQ(create(options).code(), absl::StatusCode::kInvalidArgument);
  options = Options();
  options.min_ttl = absl::Hours(2);
  options.max_ttl = absl::Hours(1);
  EXPECT_EQ(create(options).code(), absl::StatusCode::kInvalidArgument);
  options = Options();
  options.backdate = absl::Hours(2);
  EXPECT_EQ(create(options).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SignerTest, RefusesKeyThatDoesNotMatch) {
  TestCa stranger = MakeRoot("Stranger");
  absl::StatusOr<std::unique_ptr<LocalSigner>> signer = LocalSigner::Create(
      CaFiles{intermediate_.cert, stranger.key, {}, BundleOf({&root_})}, Options());
  EXPECT_EQ(signer.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SignerTest, ClampsToCaNotAfter) {
  std::unique_ptr<LocalSigner> signer = MakeSigner();
  now_ = intermediate_.cert.not_after() - absl::Minutes(10);
  absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(*signer, absl::Hours(1));
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)[0].not_after(), intermediate_.cert.not_after());
  EXPECT_EQ(VerifyChain(*chain, signer->trust_bundle(), now_), X509_V_OK);

  now_ = intermediate_.cert.not_after() + absl::Seconds(1);
  chain = Sign(*signer, absl::Hours(1));
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(chain.status().message()), HasSubstr("expired"));
}

TEST_F(SignerTest, NeverBackdatesBeforeCaNotBefore) {
  std::unique_ptr<LocalSigner> signer = MakeSigner();
  now_ = intermediate_.cert.not_before() + absl::Minutes(1);
  absl::StatusOr<std::vector<identity::Certificate>> chain = Sign(*signer, absl::Hours(1));
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)[0].not_before(), intermediate_.cert.not_before());
}

TEST_F(SignerTest, ConcurrentSigningGivesDistinctSerials) {
  std::unique_ptr<LocalSigner> signer = MakeSigner();
  Signer& base = *signer;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  std::mutex mu;
  std::set<std::string> serials;
  int failures = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<std::vector<identity::Certificate>> chain =
            base.SignLeaf(key->get(), Id(), absl::ZeroDuration(), {});
        std::lock_guard<std::mutex> lock(mu);
        if (!chain.ok() || VerifyChain(*chain, signer->trust_bundle(), now_) != X509_V_OK) {
          ++failures;
          continue;
        }
        serials.insert((*chain)[0].serial_hex());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(serials.size(), static_cast<size_t>(kThreads * kPerThread));
}

}  // namespace
}  // namespace trellis::control_plane::ca
