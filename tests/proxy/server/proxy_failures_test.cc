// Every failure reason is counted in WorkerStats and logged as one JSON line naming it.

#include <openssl/ssl.h>
#include <sys/socket.h>

#include "gtest/gtest.h"
#include "tests/proxy/server/proxy_test_util.h"

namespace trellis::proxy::testing {
namespace {

using tls::FailureReason;
using trellis::testing::MakeContext;
using trellis::testing::MakeLeaf;
using trellis::testing::MakeRoot;

class ProxyFailuresTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { logs_ = new LogCapture(); }

  // Connects to `port`, handshakes with `client` (blocking) and reads once, so that a server's
  // rejection after the TLS 1.3 client finished is observed. Returns whether data came back.
  static void TlsAttempt(uint16_t port, std::shared_ptr<const tls::TlsContext> client) {
    UniqueFd fd = ConnectTo(port, absl::Seconds(5));
    ASSERT_TRUE(fd.valid());
    auto session = *tls::TlsSession::Create(client, fd.get());
    if (session->Handshake() != tls::IoAction::kDone) return;
    size_t n = 0;
    (void)session->Write("hi", 2, &n);
    char buf[16];
    (void)session->Read(buf, sizeof(buf), &n);
  }

  void ExpectHandshakeFailure(const ProxyServer& server, Direction d, FailureReason reason,
                              const std::string& listener) {
    EXPECT_TRUE(WaitUntil([&] { return HandshakeFailures(server, d, reason) >= 1; }))
        << tls::FailureReasonLabel(reason);
    EXPECT_TRUE(
        logs_->WaitForLine({"\"reason\":\"" + std::string(tls::FailureReasonLabel(reason)) + "\"",
                            "\"listener\":\"" + listener + "\"", "\"detail\""}))
        << logs_->Text();
  }

  void ExpectConnectionFailure(const ProxyServer& server, Direction d, ConnectionFailure failure,
                               const std::string& listener) {
    EXPECT_TRUE(WaitUntil([&] { return ConnectionFailures(server, d, failure) >= 1; }))
        << kConnectionFailureLabels[static_cast<size_t>(failure)];
    EXPECT_TRUE(logs_->WaitForLine(
        {"\"reason\":\"" + std::string(kConnectionFailureLabels[static_cast<size_t>(failure)]) +
             "\"",
         "\"listener\":\"" + listener + "\""}))
        << logs_->Text();
  }

  static LogCapture* logs_;
  TestMesh mesh_;
  Backend backend_{Backend::Mode::kEcho};
};
LogCapture* ProxyFailuresTest::logs_ = nullptr;

TEST_F(ProxyFailuresTest, WrongCaIsUnknownCa) {
  ProxyPair pair(mesh_, backend_.port());
  trellis::testing::TestCa other = MakeRoot("Other Root");
  auto client = MakeContext(tls::TlsRole::kClient, MakeLeaf(other, kClientId),
                            trellis::testing::BundleOf({&mesh_.root}));
  TlsAttempt(pair.in_port(), client);
  ExpectHandshakeFailure(*pair.inbound, Direction::kInbound, FailureReason::kUnknownCa, "in");
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"unknown_ca\"", "\"peer\":\"127.0.0.1:",
                                  "\"local_identity\":\"spiffe://cluster.local/ns/b/sa/server\""}));
}

TEST_F(ProxyFailuresTest, ExpiredClientCertificate) {
  ProxyPair pair(mesh_, backend_.port());
  auto expired =
      MakeLeaf(mesh_.root, kClientId, absl::Now() - absl::Hours(3), absl::Now() - absl::Hours(2));
  auto client =
      MakeContext(tls::TlsRole::kClient, expired, trellis::testing::BundleOf({&mesh_.root}));
  TlsAttempt(pair.in_port(), client);
  ExpectHandshakeFailure(*pair.inbound, Direction::kInbound, FailureReason::kExpired, "in");
}

TEST_F(ProxyFailuresTest, RawClientWithoutCertificate) {
  ProxyPair pair(mesh_, backend_.port());
  UniqueFd fd = ConnectTo(pair.in_port(), absl::Seconds(5));
  ASSERT_TRUE(fd.valid());
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd.get());
  if (SSL_connect(ssl) == 1) {
    char buf[8];
    SSL_read(ssl, buf, sizeof(buf));
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  ExpectHandshakeFailure(*pair.inbound, Direction::kInbound, FailureReason::kNoPeerCertificate,
                         "in");
}

TEST_F(ProxyFailuresTest, InboundPolicyRefusesIdentity) {
  ProxyPair pair(mesh_, backend_.port(), nullptr, {"spiffe://cluster.local/ns/only/sa/this"});
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(WriteAll(fd.get(), "hello"));
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "");
  ExpectHandshakeFailure(*pair.inbound, Direction::kInbound, FailureReason::kIdentityNotAllowed,
                         "in");
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"identity_not_allowed\"",
                                  std::string("\"peer_identity\":\"") + kClientId + "\""}));
  // The outbound side sees the refusal as the server's alert (peer_rejected) or, when the TCP
  // reset wins the race against reading the alert, as a reset; either way it is counted.
  EXPECT_TRUE(WaitUntil([&] {
    return HandshakeFailures(*pair.outbound, Direction::kOutbound, FailureReason::kPeerRejected) +
               ConnectionFailures(*pair.outbound, Direction::kOutbound,
                                  ConnectionFailure::kReset) >=
           1;
  }));
}

TEST_F(ProxyFailuresTest, OutboundExpectsAnotherIdentity) {
  ProxyPair pair(mesh_, backend_.port(), nullptr, {}, {"spiffe://cluster.local/ns/b/sa/other"});
  UniqueFd fd = ConnectTo(pair.out_port());
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "");
  ExpectHandshakeFailure(*pair.outbound, Direction::kOutbound, FailureReason::kIdentityNotAllowed,
                         "out");
  EXPECT_TRUE(logs_->WaitForLine(
      {"\"direction\":\"outbound\"", std::string("\"peer_identity\":\"") + kServerId + "\""}));
}

TEST_F(ProxyFailuresTest, PlaintextToMtlsListenerIsNotTls) {
  ProxyPair pair(mesh_, backend_.port());
  UniqueFd fd = ConnectTo(pair.in_port());
  ASSERT_TRUE(WriteAll(fd.get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  bool eof = false;
  ReadAll(fd.get(), &eof);
  ExpectHandshakeFailure(*pair.inbound, Direction::kInbound, FailureReason::kNotTls, "in");
}

TEST_F(ProxyFailuresTest, UpstreamRefused) {
  uint16_t closed_port = 0;
  {
    Backend gone(Backend::Mode::kEcho);
    closed_port = gone.port();
  }
  ProxyPair pair(mesh_, closed_port);
  UniqueFd fd = ConnectTo(pair.out_port());
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "");
  ExpectConnectionFailure(*pair.inbound, Direction::kInbound, ConnectionFailure::kUpstreamConnect,
                          "in");
}

TEST_F(ProxyFailuresTest, HandshakeTimeoutWhenClientSendsNothing) {
  ProxyPair pair(mesh_, backend_.port(),
                 [](ProxyOptions& o) { o.handshake_timeout = absl::Milliseconds(200); });
  UniqueFd fd = ConnectTo(pair.in_port());
  bool eof = false;
  ReadAll(fd.get(), &eof);
  EXPECT_TRUE(eof);
  ExpectHandshakeFailure(*pair.inbound, Direction::kInbound, FailureReason::kTimeout, "in");
}

TEST_F(ProxyFailuresTest, IdleTimeoutClosesQuietConnection) {
  ProxyPair pair(mesh_, backend_.port(),
                 [](ProxyOptions& o) { o.idle_timeout = absl::Milliseconds(300); });
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(WriteAll(fd.get(), "x"));
  char c;
  ASSERT_EQ(recv(fd.get(), &c, 1, MSG_WAITALL), 1);
  bool eof = false;
  ReadAll(fd.get(), &eof);
  EXPECT_TRUE(eof);
  EXPECT_TRUE(WaitUntil([&] {
    return ConnectionFailures(*pair.outbound, Direction::kOutbound,
                              ConnectionFailure::kIdleTimeout) +
               ConnectionFailures(*pair.inbound, Direction::kInbound,
                                  ConnectionFailure::kIdleTimeout) >=
           1;
  }));
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"idle_timeout\""}));
}

TEST_F(ProxyFailuresTest, ConnectionLimit) {
  ProxyPair pair(mesh_, backend_.port(), [](ProxyOptions& o) { o.max_connections = 1; });
  UniqueFd first = ConnectTo(pair.out_port());
  ASSERT_TRUE(WriteAll(first.get(), "a"));
  char c;
  ASSERT_EQ(recv(first.get(), &c, 1, MSG_WAITALL), 1);
  UniqueFd second = ConnectTo(pair.out_port());
  bool eof = false;
  EXPECT_EQ(ReadAll(second.get(), &eof), "");
  ExpectConnectionFailure(*pair.outbound, Direction::kOutbound, ConnectionFailure::kConnectionLimit,
                          "out");
  // The first connection is unaffected.
  ASSERT_TRUE(WriteAll(first.get(), "b"));
  ASSERT_EQ(recv(first.get(), &c, 1, MSG_WAITALL), 1);
  EXPECT_EQ(c, 'b');
}

TEST_F(ProxyFailuresTest, NotReadyWithEmptyContextStore) {
  ContextStore empty;
  ProxyOptions options;
  options.workers = 1;
  options.listeners = {Explicit(ListenerConfig::Kind::kExplicitOutbound, "cold", backend_.port())};
  auto server = *ProxyServer::Create(options, &empty);
  ASSERT_TRUE(server->Start().ok());
  UniqueFd fd = ConnectTo(server->BoundPort("cold"));
  bool eof = false;
  ReadAll(fd.get(), &eof);
  EXPECT_TRUE(eof);
  ExpectHandshakeFailure(*server, Direction::kOutbound, FailureReason::kNotReady, "cold");
  EXPECT_EQ(backend_.accepted(), 0) << "no upstream connection without a certificate";
}

TEST_F(ProxyFailuresTest, CloseDeniedPeersClosesLiveConnection) {
  ProxyPair pair(mesh_, backend_.port());
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(WriteAll(fd.get(), "a"));
  char c;
  ASSERT_EQ(recv(fd.get(), &c, 1, MSG_WAITALL), 1);
  pair.inbound->CloseDeniedPeers(*tls::DenyList::Create({}, {kClientId}));
  bool eof = false;
  ReadAll(fd.get(), &eof);
  EXPECT_TRUE(eof);
  ExpectConnectionFailure(*pair.inbound, Direction::kInbound, ConnectionFailure::kDenied, "in");
}

TEST_F(ProxyFailuresTest, CaptureWithoutRedirectionIsOriginalDst) {
  ProxyOptions options;
  options.workers = 1;
  ListenerConfig capture;
  capture.kind = ListenerConfig::Kind::kInboundCapture;
  capture.name = "inbound-capture";
  options.listeners = {capture};
  ContextStore store;
  ASSERT_TRUE(store.Update(mesh_.CredentialsFor(mesh_.server_leaf)).ok());
  auto server = *ProxyServer::Create(options, &store);
  ASSERT_TRUE(server->Start().ok());
  UniqueFd fd = ConnectTo(server->BoundPort("inbound-capture"));
  bool eof = false;
  ReadAll(fd.get(), &eof);
  ExpectConnectionFailure(*server, Direction::kInbound, ConnectionFailure::kOriginalDst,
                          "inbound-capture");
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"original_dst\"", "iptables"}));
}

}  // namespace
}  // namespace trellis::proxy::testing
