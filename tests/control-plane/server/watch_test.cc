// The Watch stream end to end over real gRPC + TLS: the first snapshot, live deny-list pushes, a
// root rotation driven through the CA directory and CaManager::Reload, a broken CA update, and
// shutdown.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/crypto/handles.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/deny_list.h"
#include "common/tls/peer_verifier.h"
#include "control-plane/ca/ca_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/control-plane/server/cp_test_server.h"

namespace trellis::control_plane::testing {
namespace {

using ::testing::HasSubstr;
using trellis::identity::v1::IssueCertificateResponse;
using trellis::identity::v1::WatchResponse;
using ::trellis::testing::MakeIntermediate;
using ::trellis::testing::MakeRoot;
using ::trellis::testing::TestCa;

constexpr absl::Duration kWait = absl::Seconds(5);

std::set<std::string> BundleOf(const WatchResponse& response) {
  return {response.trust_bundle_der().begin(), response.trust_bundle_der().end()};
}

std::set<std::string> Roots(const std::vector<const TestCa*>& roots) {
  std::set<std::string> ders;
  for (const TestCa* root : roots) ders.insert(root->cert.ToDer());
  return ders;
}

std::vector<identity::Certificate> ParseChain(const IssueCertificateResponse& response) {
  std::vector<identity::Certificate> chain;
  for (const std::string& der : response.cert_chain_der()) {
    absl::StatusOr<identity::Certificate> cert = identity::Certificate::FromDer(der);
    EXPECT_TRUE(cert.ok()) << cert.status();
    if (cert.ok()) chain.push_back(*cert);
  }
  return chain;
}

// Whether `response`'s chain verifies against `roots` alone.
bool ChainsTo(const IssueCertificateResponse& response, const TestCa& root) {
  std::vector<identity::Certificate> chain = ParseChain(response);
  if (chain.empty()) return false;
  absl::StatusOr<identity::TrustBundle> bundle = identity::TrustBundle::Create({root.cert});
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  absl::StatusOr<std::unique_ptr<tls::PeerVerifier>> verifier =
      tls::PeerVerifier::Create(*bundle, tls::DenyList());
  EXPECT_TRUE(verifier.ok()) << verifier.status();
  crypto::X509Stack intermediates(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    X509_up_ref(chain[i].get());
    sk_X509_push(intermediates.get(), chain[i].get());
  }
  absl::StatusOr<identity::SpiffeIdPattern> any = identity::SpiffeIdPattern::Parse("*");
  const tls::PeerVerification check = (*verifier)->Verify(
      chain[0].get(), intermediates.get(), tls::PeerRole::kClient, absl::Now(), {*any});
  return check.ok();
}

uint64_t RenderedCounter(const ControlPlaneMetrics& metrics, absl::string_view series) {
  const std::string text = metrics.Render();
  const std::string prefix = absl::StrCat(series, " ");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, prefix)) {
      uint64_t value = 0;
      EXPECT_TRUE(absl::SimpleAtoi(line.substr(prefix.size()), &value)) << line;
      return value;
    }
  }
  ADD_FAILURE() << "no " << series << " in:\n" << text;
  return 0;
}

class WatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = CpTestServer::Start();
    ASSERT_NE(server_, nullptr);
  }

  IssueResult IssueK8s(const Workload& workload, const std::string& sa = "checkout") {
    return server_->IssueWithKubernetesToken(workload, server_->KubernetesToken("shop", sa));
  }

  std::unique_ptr<CpTestServer> server_;
};

auto Any() {
  return [](const WatchResponse&) { return true; };
}

TEST_F(WatchTest, SendsTheCurrentSnapshotAtOnce) {
  WatchClient watch(*server_);
  std::optional<WatchResponse> first = watch.WaitFor(Any(), kWait);
  ASSERT_TRUE(first.has_value()) << "no snapshot within " << kWait;
  EXPECT_NE(first->version(), 0u);
  EXPECT_EQ(first->version(), server_->mesh().Current()->version);
  EXPECT_EQ(BundleOf(*first), Roots({&server_->root()}));
  EXPECT_EQ(first->denied_size(), 0);
  EXPECT_FALSE(first->has_renew_before());
  EXPECT_TRUE(PollUntil([&] { return server_->metrics().watchers.load() == 1; }));
}

TEST_F(WatchTest, DenyListChangeReachesTwoWatchersWithinOneSecond) {
  WatchClient a(*server_);
  WatchClient b(*server_);
  std::optional<WatchResponse> initial = a.WaitFor(Any(), kWait);
  ASSERT_TRUE(initial.has_value());
  ASSERT_TRUE(b.WaitFor(Any(), kWait).has_value());

  absl::StatusOr<tls::DenyList> list =
      tls::DenyList::Parse("serial:00ABCDEF01\nspiffe://cluster.local/ns/shop/sa/stolen\n");
  ASSERT_TRUE(list.ok()) << list.status();
  auto has_deny_list = [](const WatchResponse& r) { return r.denied_size() == 2; };
  const absl::Time start = absl::Now();
  server_->mesh().SetDenyList(*list);
  std::optional<WatchResponse> got_a = a.WaitFor(has_deny_list, kWait);
  std::optional<WatchResponse> got_b = b.WaitFor(has_deny_list, kWait);
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_TRUE(got_a.has_value());
  ASSERT_TRUE(got_b.has_value());
  EXPECT_LT(elapsed, absl::Seconds(1));

  for (const WatchResponse* r : {&*got_a, &*got_b}) {
    EXPECT_NE(r->version(), initial->version());
    EXPECT_EQ(BundleOf(*r), Roots({&server_->root()}));  // snapshots are complete
    std::set<std::string> serials, ids;
    for (const auto& entry : r->denied()) {
      if (entry.has_serial_hex()) serials.insert(entry.serial_hex());
      if (entry.has_spiffe_id()) ids.insert(entry.spiffe_id());
    }
    EXPECT_EQ(serials, std::set<std::string>{"abcdef01"});  // normalised
    EXPECT_EQ(ids, std::set<std::string>{"spiffe://cluster.local/ns/shop/sa/stolen"});
  }
}

TEST_F(WatchTest, RootRotationEndToEnd) {
  const TestCa& old_root = server_->root();
  const TestCa& old_ca = server_->intermediate();
  const TestCa new_root = MakeRoot("Trellis Test Root 2");
  const TestCa new_ca = MakeIntermediate(new_root, "Trellis Test Intermediate 2");
  WatchClient a(*server_);
  WatchClient b(*server_);
  ASSERT_TRUE(a.WaitFor(Any(), kWait).has_value());
  ASSERT_TRUE(b.WaitFor(Any(), kWait).has_value());

  // A workload holding a leaf of the old CA.
  const Workload old_workload = NewWorkload();
  IssueResult old_leaf = IssueK8s(old_workload);
  ASSERT_TRUE(old_leaf.status.ok()) << old_leaf.status.error_message();

  // (1) Publish the new root next to the old one; the old CA keeps signing.
  ASSERT_TRUE(server_->WriteCa(old_ca, {&old_root, &new_root}).ok());
  ASSERT_TRUE(server_->ca().Reload().ok());
  auto both_roots = [&](const WatchResponse& r) {
    return BundleOf(r) == Roots({&old_root, &new_root});
  };
  for (WatchClient* watch : {&a, &b}) {
    std::optional<WatchResponse> got = watch->WaitFor(both_roots, kWait);
    ASSERT_TRUE(got.has_value()) << "watcher did not get the two-root bundle";
    EXPECT_FALSE(got->has_renew_before()) << "the signing CA did not change yet";
  }
  IssueResult during = IssueK8s(NewWorkload());
  ASSERT_TRUE(during.status.ok()) << during.status.error_message();
  EXPECT_EQ(during.response.trust_bundle_der_size(), 2);
  EXPECT_TRUE(ChainsTo(during.response, old_root));
  EXPECT_FALSE(ChainsTo(during.response, new_root));

  // (2) Switch signing to an intermediate under the new root, both roots still trusted.
  ASSERT_TRUE(server_->WriteCa(new_ca, {&old_root, &new_root}).ok());
  const absl::Time switched = absl::Now();
  ASSERT_TRUE(server_->ca().Reload().ok());
  auto renew_hint = [&](const WatchResponse& r) { return r.has_renew_before() && both_roots(r); };
  for (WatchClient* watch : {&a, &b}) {
    std::optional<WatchResponse> got = watch->WaitFor(renew_hint, kWait);
    ASSERT_TRUE(got.has_value()) << "watcher did not get renew_before after the CA switch";
    const absl::Time renew_before = absl::FromUnixSeconds(got->renew_before().seconds());
    EXPECT_GE(renew_before, switched + absl::Minutes(5) - absl::Seconds(2));
    EXPECT_LE(renew_before, absl::Now() + absl::Minutes(5) + absl::Seconds(1));
  }
  IssueResult after = IssueK8s(NewWorkload());
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_TRUE(ChainsTo(after.response, new_root));
  EXPECT_FALSE(ChainsTo(after.response, old_root));
  ASSERT_EQ(after.response.cert_chain_der_size(), 2);
  EXPECT_EQ(after.response.cert_chain_der(1), new_ca.cert.ToDer());

  // (3) Retire the old root: leaves of the old CA are no longer trusted, also for renewal.
  ASSERT_TRUE(server_->WriteCa(new_ca, {&new_root}).ok());
  ASSERT_TRUE(server_->ca().Reload().ok());
  auto new_root_only = [&](const WatchResponse& r) { return BundleOf(r) == Roots({&new_root}); };
  for (WatchClient* watch : {&a, &b}) {
    ASSERT_TRUE(watch->WaitFor(new_root_only, kWait).has_value())
        << "watcher did not get the one-root bundle";
  }
  IssueResult refused = server_->Renew(NewWorkload(), old_workload.CertFrom(old_leaf.response));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(refused.status.error_message(),
              HasSubstr("renewal certificate refused (unknown_ca)"));
  IssueResult fresh = IssueK8s(NewWorkload());
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.error_message();
  EXPECT_EQ(fresh.response.trust_bundle_der_size(), 1);
  EXPECT_TRUE(ChainsTo(fresh.response, new_root));
  EXPECT_EQ(
      RenderedCounter(server_->metrics(), "trellis_cp_reloads_total{what=\"ca\",result=\"ok\"}"),
      4u);  // the first load and three rotations steps
}

// Renewal with a leaf of the old CA while both roots are trusted (rotation step 2).
// Disabled by the PeerChain bug described in identity_service_test.cc
// (RenewsWithTheIssuedCertificateAsClientCertificate).
TEST_F(WatchTest, RenewalWithOldCaLeafWorksUntilTheOldRootIsRetired) {
  const TestCa& old_root = server_->root();
  const TestCa new_root = MakeRoot("Trellis Test Root 2");
  const TestCa new_ca = MakeIntermediate(new_root, "Trellis Test Intermediate 2");
  const Workload old_workload = NewWorkload();
  IssueResult old_leaf = IssueK8s(old_workload);
  ASSERT_TRUE(old_leaf.status.ok()) << old_leaf.status.error_message();

  ASSERT_TRUE(server_->WriteCa(server_->intermediate(), {&old_root, &new_root}).ok());
  ASSERT_TRUE(server_->ca().Reload().ok());
  ASSERT_TRUE(server_->WriteCa(new_ca, {&old_root, &new_root}).ok());
  ASSERT_TRUE(server_->ca().Reload().ok());
  IssueResult renewed = server_->Renew(NewWorkload(), old_workload.CertFrom(old_leaf.response));
  ASSERT_TRUE(renewed.status.ok()) << renewed.status.error_message();
  EXPECT_EQ(renewed.response.spiffe_id(), KubernetesId("shop", "checkout"));
  EXPECT_TRUE(ChainsTo(renewed.response, new_root));
}

TEST_F(WatchTest, BrokenCaUpdateKeepsTheOldCaSigning) {
  const uint64_t errors_before =
      RenderedCounter(server_->metrics(), "trellis_cp_reloads_total{what=\"ca\",result=\"error\"}");
  // An operator replaces ca.key with a key that does not match ca.crt.
  absl::StatusOr<identity::PrivateKey> wrong = identity::PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(wrong.ok());
  absl::StatusOr<std::string> pem = wrong->ToPem();
  ASSERT_TRUE(pem.ok());
  ASSERT_TRUE(ca::WriteFileAtomically(ca::JoinPath(server_->ca_dir(), ca::kCaKeyFile), *pem, 0600,
                                      /*overwrite=*/true)
                  .ok());
  EXPECT_FALSE(server_->ca().Reload().ok());
  EXPECT_EQ(
      RenderedCounter(server_->metrics(), "trellis_cp_reloads_total{what=\"ca\",result=\"error\"}"),
      errors_before + 1);
  EXPECT_EQ(server_->ca().signer()->ca_certificate(), server_->intermediate().cert);

  IssueResult result = IssueK8s(NewWorkload());
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_EQ(result.response.cert_chain_der_size(), 2);
  EXPECT_EQ(result.response.cert_chain_der(1), server_->intermediate().cert.ToDer());
  EXPECT_TRUE(ChainsTo(result.response, server_->root()));
  EXPECT_FALSE(server_->mesh().Current()->renew_before.has_value());
}

TEST_F(WatchTest, CloseWatchesEndsOpenStreamsWithUnavailable) {
  WatchClient a(*server_);
  WatchClient b(*server_);
  ASSERT_TRUE(a.WaitFor(Any(), kWait).has_value());
  ASSERT_TRUE(b.WaitFor(Any(), kWait).has_value());
  server_->service().CloseWatches();
  for (WatchClient* watch : {&a, &b}) {
    std::optional<grpc::Status> end = watch->WaitForEnd(kWait);
    ASSERT_TRUE(end.has_value()) << "stream still open";
    EXPECT_EQ(end->error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(end->error_message(), HasSubstr("shutting down"));
  }
  // A proxy reconnecting to this replica is told the same at once.
  WatchClient late(*server_);
  std::optional<grpc::Status> end = late.WaitForEnd(kWait);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(late.message_count(), 0u);
  EXPECT_TRUE(PollUntil([&] { return server_->metrics().watchers.load() == 0; }));
}

}  // namespace
}  // namespace trellis::control_plane::testing
