// The proxy's identity client against a real in-process control plane over gRPC + TLS.
#include "proxy/identity/identity_client.h"

#include <fstream>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "proxy/identity/grpc_transport.h"
#include "tests/control-plane/server/cp_test_server.h"

namespace trellis::proxy {
namespace {

using control_plane::testing::CpTestServer;
using control_plane::testing::CpTestServerOptions;

std::string WriteFile(const std::string& name, const std::string& contents) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  std::ofstream(path) << contents;
  return path;
}

// Polls `done` every 20 ms for at most `timeout`.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

class IdentityClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CpTestServerOptions options;
    options.signer.min_ttl = absl::Seconds(1);
    server_ = CpTestServer::Start(options);
    ASSERT_NE(server_, nullptr);
    roots_file_ = WriteFile("roots.pem", server_->client_roots_pem());
  }

  IdentityClientOptions Options() {
    IdentityClientOptions options;
    options.control_plane_address = "127.0.0.1:" + std::to_string(server_->port());
    options.control_plane_name = "localhost";
    options.root_file = roots_file_;
    options.transport = NewGrpcTransport;
    return options;
  }

  std::unique_ptr<CpTestServer> server_;
  std::string roots_file_;
  ContextStore store_;
  ProxyStats stats_;
};

TEST_F(IdentityClientTest, KubernetesTokenGetsACertificateAndOnlyThenContexts) {
  IdentityClientOptions options = Options();
  options.token_file = WriteFile("token", server_->KubernetesToken("shop", "web") + "\n");
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  EXPECT_EQ(store_.server_context(), nullptr);  // not ready before the certificate
  client->Start();
  ASSERT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  ASSERT_NE(store_.server_context(), nullptr);
  EXPECT_EQ(store_.server_context()->spiffe_id().ToString(),
            "spiffe://cluster.local/ns/shop/sa/web");
  const IdentityClientStatus status = client->status();
  EXPECT_EQ(status.rotation_count, 1u);
  EXPECT_TRUE(status.last_error.empty());
  // Default 1 h lifetime: next rotation around half-life.
  EXPECT_GT(status.next_rotation, absl::Now() + absl::Minutes(20));
  EXPECT_LT(status.next_rotation, absl::Now() + absl::Minutes(40));
  EXPECT_GT(stats_.certificate_not_after_seconds.load(), absl::ToUnixSeconds(absl::Now()));
  // The schedule is a metric too.
  EXPECT_EQ(stats_.next_rotation_seconds.load(), absl::ToUnixSeconds(status.next_rotation));
  EXPECT_EQ(stats_.renewal_failures.load(), 0u);
  client->Stop();
}

TEST_F(IdentityClientTest, ShortLivedCertificatesRotateAndRenewWithTheCertificate) {
  IdentityClientOptions options = Options();
  // A single-use join token: every renewal after the first must use the certificate.
  options.join_token_file =
      WriteFile("join", server_->NewJoinToken("spiffe://cluster.local/vm/billing", true));
  options.requested_ttl = absl::Seconds(2);
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  client->Start();
  ASSERT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  const std::string first = store_.credentials()->chain.front().serial_hex();
  ASSERT_TRUE(WaitFor([&] { return client->status().rotation_count >= 3; }, absl::Seconds(15)))
      << client->status().last_error;
  EXPECT_NE(store_.credentials()->chain.front().serial_hex(), first);
  EXPECT_EQ(store_.server_context()->spiffe_id().ToString(), "spiffe://cluster.local/vm/billing");
  EXPECT_GE(server_->metrics().issuances("ok", "renewal"), 2u);
  EXPECT_TRUE(client->status().last_error.empty()) << client->status().last_error;
  client->Stop();
}

// A certificate for another identity is never installed, even when the control plane issues it
// (here because the token file was replaced by another service account's): the proxy keeps the
// identity it started with and says why it refused.
TEST_F(IdentityClientTest, RenewalNamingAnotherIdentityIsRefusedAndTheOldOneKept) {
  IdentityClientOptions options = Options();
  const std::string token_file = WriteFile("token", server_->KubernetesToken("shop", "web"));
  options.token_file = token_file;
  options.requested_ttl = absl::Seconds(3);
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  client->Start();
  ASSERT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  const std::string first = store_.credentials()->chain.front().serial_hex();
  WriteFile("token", server_->KubernetesToken("shop", "api"));
  ASSERT_TRUE(WaitFor(
      [&] { return client->status().last_error.find("keeps one identity") != std::string::npos; },
      absl::Seconds(15)))
      << client->status().last_error;
  const std::string error = client->status().last_error;
  EXPECT_NE(error.find("spiffe://cluster.local/ns/shop/sa/api"), std::string::npos) << error;
  EXPECT_NE(error.find("this proxy is spiffe://cluster.local/ns/shop/sa/web"), std::string::npos)
      << error;
  EXPECT_EQ(store_.server_context()->spiffe_id().ToString(),
            "spiffe://cluster.local/ns/shop/sa/web");
  EXPECT_EQ(store_.credentials()->chain.front().serial_hex(), first);
  EXPECT_EQ(client->status().rotation_count, 1u);
  EXPECT_GE(stats_.renewal_failures.load(), 1u);
  // The control plane did issue it: the refusal is the proxy's own check.
  EXPECT_GE(server_->metrics().issuances("ok", "kubernetes_jwt"), 2u);
  client->Stop();
}

TEST_F(IdentityClientTest, RefusedCredentialIsReportedAndRetriedWithoutACertificate) {
  IdentityClientOptions options = Options();
  options.token_file = WriteFile("bad-token", "not-a-token");
  options.policy.retry_base = absl::Milliseconds(50);
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  client->Start();
  EXPECT_FALSE(client->WaitForFirstCertificate(absl::Milliseconds(500)));
  ASSERT_TRUE(
      WaitFor([&] { return stats_.credential_reloads_error.load() >= 2; }, absl::Seconds(10)));
  EXPECT_NE(client->status().last_error.find("UNAUTHENTICATED"), std::string::npos);
  EXPECT_GE(stats_.renewal_failures.load(), 2u);
  EXPECT_GT(stats_.last_renewal_error_seconds.load(), 0);
  EXPECT_EQ(store_.server_context(), nullptr);
  // The kubelet writes a good token: the next retry succeeds.
  WriteFile("bad-token", server_->KubernetesToken("shop", "web"));
  EXPECT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  client->Stop();
}

TEST_F(IdentityClientTest, WatchAppliesDenyListAndBundleLive) {
  IdentityClientOptions options = Options();
  options.token_file = WriteFile("token2", server_->KubernetesToken("shop", "web"));
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  std::atomic<int> updates{0};
  client->set_on_trust_update([&](const tls::DenyList&) { updates++; });
  client->Start();
  ASSERT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return client->status().watching; }, absl::Seconds(5)));
  EXPECT_EQ(stats_.control_plane_connected.load(), 1);
  const int before = updates.load();
  server_->mesh().SetDenyList(*tls::DenyList::Create({"abc123"}, {}));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return store_.credentials()->deny_list.IsSerialDenied("abc123"); },
                      absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_GT(updates.load(), before);
  EXPECT_TRUE(store_.server_context()->deny_list().IsSerialDenied("abc123"));
  client->Stop();
}

TEST_F(IdentityClientTest, RenewBeforeHintMovesTheNextRotationForward) {
  IdentityClientOptions options = Options();
  options.token_file = WriteFile("token3", server_->KubernetesToken("shop", "web"));
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  client->Start();
  ASSERT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return client->status().watching; }, absl::Seconds(5)));
  server_->mesh().SetRenewBefore(absl::Now() + absl::Seconds(2));
  ASSERT_TRUE(WaitFor([&] { return client->status().rotation_count >= 2; }, absl::Seconds(10)));
  client->Stop();
}

TEST(IdentityClientCreateTest, RefusesMissingSettingsWithClearErrors) {
  ContextStore store;
  ProxyStats stats;
  IdentityClientOptions options;
  EXPECT_NE(IdentityClient::Create(options, &store, &stats).status().message().find("address"),
            std::string::npos);
  options.control_plane_address = "127.0.0.1:1";
  EXPECT_NE(IdentityClient::Create(options, &store, &stats).status().message().find("credential"),
            std::string::npos);
  options.token_file = "/nonexistent/token";
  options.root_file = "/nonexistent/roots.pem";
  EXPECT_NE(IdentityClient::Create(options, &store, &stats).status().message().find("root"),
            std::string::npos);
}

}  // namespace
}  // namespace trellis::proxy
