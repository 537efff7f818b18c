// The proxy's identity client against a real in-process control plane over gRPC + TLS.
#include "proxy/identity/identity_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <vector>

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

// A TCP relay in front of the control plane that counts the connections it accepts: how many TLS
// handshakes the control plane had to do for this client.
class CountingRelay {
 public:
  explicit CountingRelay(int upstream_port) : upstream_port_(upstream_port) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        listen(listener_, 16) != 0 ||
        getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot listen";
      return;
    }
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~CountingRelay() {
    stopping_ = true;
    shutdown(listener_, SHUT_RDWR);
    close(listener_);
    accept_thread_.join();
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    for (std::thread& t : pumps_) t.join();
    for (int fd : fds_) close(fd);
  }
  int port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  void AcceptLoop() {
    while (!stopping_) {
      const int client = accept(listener_, nullptr, nullptr);
      if (client < 0) return;
      const int server = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(upstream_port_));
      if (connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        close(client);
        close(server);
        continue;
      }
      accepted_.fetch_add(1);
      fds_.push_back(client);
      fds_.push_back(server);
      pumps_.emplace_back([client, server] { Pump(client, server); });
      pumps_.emplace_back([client, server] { Pump(server, client); });
    }
  }
  static void Pump(int from, int to) {
    char buf[16384];
    for (;;) {
      const ssize_t n = recv(from, buf, sizeof(buf), 0);
      if (n <= 0 || send(to, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    shutdown(to, SHUT_WR);
  }

  const int upstream_port_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  std::thread accept_thread_;
  std::vector<int> fds_;  // touched by the accept thread only until it is joined
  std::vector<std::thread> pumps_;
};

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
  // X.509 validity has whole seconds, so a certificate lives between ttl-1 s and ttl; and the
  // client never renews sooner than RefreshPolicy::min_delay (1 s) after receiving one. With
  // 2 s a certificate could live just over 1 s and expire before its renewal went out (seen in
  // about 1 run in 12 under load). 4 s leaves renewal at ~1.5-2 s and at least 1 s to spare.
  options.requested_ttl = absl::Seconds(4);
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

// In token mode the Watch stream and every renewal share one connection: a renewal costs the
// control plane no TLS handshake (which costs it several times the issuance itself).
TEST_F(IdentityClientTest, TokenRenewalsRideTheWatchConnection) {
  CountingRelay relay(server_->port());
  IdentityClientOptions options = Options();
  options.control_plane_address = "127.0.0.1:" + std::to_string(relay.port());
  options.token_file = WriteFile("token", server_->KubernetesToken("shop", "web"));
  options.requested_ttl = absl::Seconds(2);
  auto client = *IdentityClient::Create(options, &store_, &stats_);
  client->Start();
  ASSERT_TRUE(WaitFor([&] { return client->status().rotation_count >= 3; }, absl::Seconds(15)))
      << client->status().last_error;
  ASSERT_TRUE(WaitFor([&] { return client->status().watching; }, absl::Seconds(5)));
  EXPECT_EQ(relay.accepted(), 1) << "one connection for the Watch stream and 3 issuances";
  EXPECT_GE(server_->metrics().issuances("ok", "kubernetes_jwt"), 3u);
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
  // The callback runs just after the store has the new list.
  EXPECT_TRUE(WaitFor([&] { return updates.load() > before; }, absl::Seconds(5)));
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

// A control plane that ages connections out (--max_connection_age) moves the Watch stream to a
// new connection each time; trust updates keep arriving and the certificate stays.
TEST(IdentityClientConnectionAgeTest, WatchFollowsConnectionsTheControlPlaneAgesOut) {
  CpTestServerOptions server_options;
  server_options.max_connection_age = absl::Milliseconds(500);
  server_options.max_connection_age_grace = absl::Milliseconds(200);
  std::unique_ptr<CpTestServer> server = CpTestServer::Start(server_options);
  ASSERT_NE(server, nullptr);
  CountingRelay relay(server->port());
  IdentityClientOptions options;
  options.control_plane_address = "127.0.0.1:" + std::to_string(relay.port());
  options.control_plane_name = "localhost";
  options.root_file = WriteFile("aged-roots.pem", server->client_roots_pem());
  options.token_file = WriteFile("aged-token", server->KubernetesToken("shop", "web"));
  options.transport = NewGrpcTransport;
  ContextStore store;
  ProxyStats stats;
  auto client = *IdentityClient::Create(options, &store, &stats);
  client->Start();
  ASSERT_TRUE(client->WaitForFirstCertificate(absl::Seconds(10)));
  const std::string serial = store.credentials()->chain.front().serial_hex();
  ASSERT_TRUE(WaitFor([&] { return relay.accepted() >= 3; }, absl::Seconds(15)))
      << "connections: " << relay.accepted();
  // Still watching, on a newer connection: an update reaches the proxy.
  server->mesh().SetDenyList(*tls::DenyList::Create({"abc123"}, {}));
  ASSERT_TRUE(WaitFor([&] { return store.credentials()->deny_list.IsSerialDenied("abc123"); },
                      absl::Seconds(10)));
  EXPECT_EQ(store.credentials()->chain.front().serial_hex(), serial);
  EXPECT_EQ(client->status().rotation_count, 1u);
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
