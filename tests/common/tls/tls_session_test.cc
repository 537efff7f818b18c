// Real mutual-TLS handshakes over socketpairs, one for each positive and negative case.
#include "common/tls/tls_session.h"

#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <thread>

#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::tls {
namespace {

using testing::BundleOf;
using testing::MakeContext;
using testing::MakeLeaf;
using testing::MakeRoot;
using testing::Patterns;
using testing::RunHandshake;

constexpr char kServerId[] = "spiffe://cluster.local/ns/shop/sa/checkout";
constexpr char kClientId[] = "spiffe://cluster.local/ns/shop/sa/frontend";

class TlsSessionTest : public ::testing::Test {
 protected:
  testing::TestCa root_ = MakeRoot("Mesh Root");
  identity::TrustBundle bundle_ = BundleOf({&root_});
  testing::TestLeaf server_leaf_ = MakeLeaf(root_, kServerId);
  testing::TestLeaf client_leaf_ = MakeLeaf(root_, kClientId);

  std::shared_ptr<const TlsContext> Server(std::vector<identity::SpiffeIdPattern> allowed = {},
                                           DenyList deny = {}) {
    return MakeContext(TlsRole::kServer, server_leaf_, bundle_, std::move(allowed),
                       std::move(deny));
  }
  std::shared_ptr<const TlsContext> Client(const testing::TestLeaf& leaf) {
    return MakeContext(TlsRole::kClient, leaf, bundle_);
  }
};

TEST_F(TlsSessionTest, MutualHandshakeSucceedsAndBothEndsKnowEachOther) {
  const testing::HandshakeResult r = RunHandshake(Server(), Client(client_leaf_));
  ASSERT_TRUE(r.server.handshake_ok) << r.server.detail;
  ASSERT_TRUE(r.client.handshake_ok) << r.client.detail;
  EXPECT_TRUE(r.client.data_exchanged);
  EXPECT_TRUE(r.server.data_exchanged);
  ASSERT_TRUE(r.server.peer_id.has_value());
  EXPECT_EQ(r.server.peer_id->ToString(), kClientId);
  ASSERT_TRUE(r.client.peer_id.has_value());
  EXPECT_EQ(r.client.peer_id->ToString(), kServerId);
  EXPECT_EQ(r.client.alpn, kMeshAlpn);
  EXPECT_EQ(r.server.alpn, kMeshAlpn);
}

TEST_F(TlsSessionTest, NegotiatesTls13WithX25519) {
  auto server = Server();
  auto client = Client(client_leaf_);
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto s = *TlsSession::Create(server, fds[0]);
  auto c = *TlsSession::Create(client, fds[1]);
  std::thread t([&] {
    while (s->Handshake() == IoAction::kWantRead) {
    }
  });
  while (c->Handshake() == IoAction::kWantRead) {
  }
  t.join();
  EXPECT_EQ(SSL_version(c->ssl()), TLS1_3_VERSION);
  EXPECT_STREQ(SSL_get_version(c->ssl()), "TLSv1.3");
#ifndef OPENSSL_IS_BORINGSSL  // BoringSSL has the setter but no getter.
  // No resumption: the server sends no session tickets.
  EXPECT_EQ(SSL_CTX_get_num_tickets(server->ssl_ctx()), 0u);
#endif
#ifdef OPENSSL_IS_BORINGSSL
  EXPECT_EQ(SSL_get_curve_id(c->ssl()), SSL_CURVE_X25519);
#else
  EXPECT_EQ(SSL_get_negotiated_group(c->ssl()), NID_X25519);
#endif
  close(fds[0]);
  close(fds[1]);
}

TEST_F(TlsSessionTest, ChainThroughIntermediateVerifies) {
  testing::TestCa intermediate = testing::MakeIntermediate(root_);
  testing::TestLeaf client = MakeLeaf(intermediate, kClientId);
  ASSERT_EQ(client.chain.size(), 2u);
  const testing::HandshakeResult r = RunHandshake(Server(), Client(client));
  EXPECT_TRUE(r.server.handshake_ok) << r.server.detail;
  EXPECT_TRUE(r.client.data_exchanged);
}

TEST_F(TlsSessionTest, ClientFromAnotherMeshIsUnknownCa) {
  testing::TestCa other_root = MakeRoot("Other Root");
  testing::TestLeaf stranger = MakeLeaf(other_root, kClientId);
  // The stranger trusts our root, so only the server's check can fail.
  const testing::HandshakeResult r = RunHandshake(Server(), Client(stranger));
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kUnknownCa) << r.server.detail;
  EXPECT_FALSE(r.client.data_exchanged);
}

TEST_F(TlsSessionTest, ServerFromAnotherMeshIsUnknownCaForTheClient) {
  testing::TestCa other_root = MakeRoot("Other Root");
  testing::TestLeaf impostor = MakeLeaf(other_root, kServerId);
  auto server = MakeContext(TlsRole::kServer, impostor, bundle_);
  const testing::HandshakeResult r = RunHandshake(server, Client(client_leaf_));
  EXPECT_FALSE(r.client.handshake_ok);
  EXPECT_EQ(r.client.reason, FailureReason::kUnknownCa) << r.client.detail;
  // The server learns from the client's alert that it was refused.
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kPeerRejected) << r.server.detail;
  EXPECT_NE(r.server.detail.find("unknown"), std::string::npos) << r.server.detail;
}

TEST_F(TlsSessionTest, ExpiredClientCertificateIsRefusedAsExpired) {
  testing::TestLeaf expired =
      MakeLeaf(root_, kClientId, absl::Now() - absl::Hours(2), absl::Now() - absl::Hours(1));
  const testing::HandshakeResult r = RunHandshake(Server(), Client(expired));
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kExpired) << r.server.detail;
  EXPECT_NE(r.server.detail.find(kClientId), std::string::npos) << r.server.detail;
  EXPECT_FALSE(r.client.data_exchanged);
}

TEST_F(TlsSessionTest, NotYetValidServerCertificateIsRefused) {
  testing::TestLeaf future =
      MakeLeaf(root_, kServerId, absl::Now() + absl::Minutes(30), absl::Now() + absl::Hours(2));
  auto server = MakeContext(TlsRole::kServer, future, bundle_);
  const testing::HandshakeResult r = RunHandshake(server, Client(client_leaf_));
  EXPECT_FALSE(r.client.handshake_ok);
  EXPECT_EQ(r.client.reason, FailureReason::kNotYetValid) << r.client.detail;
}

TEST_F(TlsSessionTest, ClientWithoutCertificateIsRefused) {
  const testing::EndResult r = testing::RunServerAgainstRawClient(Server(), nullptr);
  EXPECT_FALSE(r.handshake_ok);
  EXPECT_EQ(r.reason, FailureReason::kNoPeerCertificate) << r.detail;
}

TEST_F(TlsSessionTest, ClientCertificateFromAnotherCaViaRawClientIsUnknownCa) {
  testing::TestCa other_root = MakeRoot("Other Root");
  testing::TestLeaf stranger = MakeLeaf(other_root, kClientId);
  const testing::EndResult r = testing::RunServerAgainstRawClient(Server(), &stranger);
  EXPECT_EQ(r.reason, FailureReason::kUnknownCa) << r.detail;
  ASSERT_TRUE(r.peer_id.has_value());  // the refusal can still name who was refused
  EXPECT_EQ(r.peer_id->ToString(), kClientId);
}

TEST_F(TlsSessionTest, RevokedSerialIsRefused) {
  const DenyList deny = *DenyList::Create({client_leaf_.chain[0].serial_hex()}, {});
  const testing::HandshakeResult r = RunHandshake(Server({}, deny), Client(client_leaf_));
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kRevoked) << r.server.detail;
  EXPECT_FALSE(r.client.data_exchanged);
}

TEST_F(TlsSessionTest, RevokedIdentityIsRefusedWhateverTheCertificate) {
  const DenyList deny = *DenyList::Create({}, {kClientId});
  testing::TestLeaf fresh = MakeLeaf(root_, kClientId);  // a new cert for the same identity
  const testing::HandshakeResult r = RunHandshake(Server({}, deny), Client(fresh));
  EXPECT_EQ(r.server.reason, FailureReason::kRevoked) << r.server.detail;
  ASSERT_TRUE(r.server.peer_id.has_value());
  EXPECT_EQ(r.server.peer_id->ToString(), kClientId);
}

TEST_F(TlsSessionTest, IdentityOutsidePolicyIsRefused) {
  auto server = Server(Patterns({"spiffe://cluster.local/ns/payments/*"}));
  const testing::HandshakeResult r = RunHandshake(server, Client(client_leaf_));
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kIdentityNotAllowed);
  EXPECT_NE(r.server.detail.find(kClientId), std::string::npos) << r.server.detail;
  EXPECT_NE(r.server.detail.find("ns/payments/*"), std::string::npos) << r.server.detail;
}

TEST_F(TlsSessionTest, IdentityInsidePolicyIsAccepted) {
  auto server = Server(Patterns({"spiffe://cluster.local/ns/shop/*"}));
  const testing::HandshakeResult r = RunHandshake(server, Client(client_leaf_));
  EXPECT_TRUE(r.server.handshake_ok) << r.server.detail;
  EXPECT_TRUE(r.client.data_exchanged);
}

TEST_F(TlsSessionTest, DefaultPolicyRefusesAnotherTrustDomainEvenWithATrustedRoot) {
  testing::TestLeaf foreign = MakeLeaf(root_, "spiffe://other.example/ns/shop/sa/frontend");
  auto client =
      MakeContext(TlsRole::kClient, foreign, bundle_, Patterns({"spiffe://cluster.local"}));
  const testing::HandshakeResult r = RunHandshake(Server(), client);
  EXPECT_EQ(r.server.reason, FailureReason::kIdentityNotAllowed) << r.server.detail;
}

TEST_F(TlsSessionTest, ClientRefusesServerWithUnexpectedIdentity) {
  const testing::HandshakeResult r = RunHandshake(
      Server(), Client(client_leaf_), Patterns({"spiffe://cluster.local/ns/shop/sa/inventory"}));
  EXPECT_FALSE(r.client.handshake_ok);
  EXPECT_EQ(r.client.reason, FailureReason::kIdentityNotAllowed) << r.client.detail;
  EXPECT_EQ(r.server.reason, FailureReason::kPeerRejected);
}

TEST_F(TlsSessionTest, CertificateWithTwoUriSansIsMalformed) {
  testing::TestLeaf two =
      testing::MakeLeafWithUris(root_, {kClientId, "spiffe://cluster.local/ns/shop/sa/admin"});
  const testing::EndResult r = testing::RunServerAgainstRawClient(Server(), &two);
  EXPECT_EQ(r.reason, FailureReason::kMalformedCertificate) << r.detail;
  EXPECT_NE(r.detail.find("exactly one"), std::string::npos) << r.detail;
}

TEST_F(TlsSessionTest, IdentityIsNeverTakenFromTheCommonName) {
  testing::TestLeaf cn_only = testing::MakeLeafWithUris(root_, {});
  const testing::EndResult r = testing::RunServerAgainstRawClient(Server(), &cn_only);
  EXPECT_EQ(r.reason, FailureReason::kMalformedCertificate) << r.detail;
  EXPECT_NE(r.detail.find("no URI SAN"), std::string::npos) << r.detail;
  EXPECT_FALSE(r.peer_id.has_value());
}

TEST_F(TlsSessionTest, PlaintextHttpIsNotTls) {
  const testing::EndResult r =
      testing::RunServerAgainstBytes(Server(), "GET / HTTP/1.1\r\nHost: checkout\r\n\r\n");
  EXPECT_FALSE(r.handshake_ok);
  EXPECT_EQ(r.reason, FailureReason::kNotTls) << r.detail;
}

TEST_F(TlsSessionTest, GarbageBytesAreNotTls) {
  const testing::EndResult r =
      testing::RunServerAgainstBytes(Server(), std::string("\x00\x01\x02hello there\n", 15));
  EXPECT_FALSE(r.handshake_ok);
  EXPECT_EQ(r.reason, FailureReason::kNotTls) << r.detail;
}

TEST_F(TlsSessionTest, EarlyCloseIsConnectionReset) {
  const testing::EndResult r = testing::RunServerAgainstBytes(Server(), "");
  EXPECT_FALSE(r.handshake_ok);
  EXPECT_EQ(r.reason, FailureReason::kConnectionReset) << r.detail;
}

TEST_F(TlsSessionTest, Tls12ClientIsRefusedByDefaultAndAcceptedWhenAllowed) {
  auto client12 = MakeContext(TlsRole::kClient, client_leaf_, bundle_, {}, {}, true);
  // Cap the client at TLS 1.2.
  SSL_CTX_set_max_proto_version(client12->ssl_ctx(), TLS1_2_VERSION);
  testing::HandshakeResult r = RunHandshake(Server(), client12);
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kProtocolError) << r.server.detail;

  auto server12 = MakeContext(TlsRole::kServer, server_leaf_, bundle_, {}, {}, true);
  r = RunHandshake(server12, client12);
  EXPECT_TRUE(r.server.handshake_ok) << r.server.detail;
  EXPECT_TRUE(r.client.data_exchanged);
  ASSERT_TRUE(r.server.peer_id.has_value());
  EXPECT_EQ(r.server.peer_id->ToString(), kClientId);
}

TEST_F(TlsSessionTest, ClientWithoutMeshAlpnIsRefused) {
  tls::TlsContextOptions options;
  options.role = TlsRole::kClient;
  options.chain = client_leaf_.chain;
  options.key = client_leaf_.key;
  options.bundle = bundle_;
  options.alpn = {"h2"};
  auto client = *TlsContext::Create(std::move(options));
  const testing::HandshakeResult r = RunHandshake(Server(), client);
  EXPECT_FALSE(r.server.handshake_ok);
  EXPECT_EQ(r.server.reason, FailureReason::kProtocolError) << r.server.detail;
}

TEST_F(TlsSessionTest, RootRotationBundleAcceptsOldAndNewRoots) {
  testing::TestCa new_root = MakeRoot("Mesh Root 2");
  identity::TrustBundle both = BundleOf({&root_, &new_root});
  testing::TestLeaf new_client = MakeLeaf(new_root, kClientId);
  auto server = MakeContext(TlsRole::kServer, server_leaf_, both);
  // A client signed by the new root, trusting both roots, against a server still on the old one.
  auto client = MakeContext(TlsRole::kClient, new_client, both);
  const testing::HandshakeResult r = RunHandshake(server, client);
  EXPECT_TRUE(r.server.handshake_ok) << r.server.detail;
  EXPECT_TRUE(r.client.handshake_ok) << r.client.detail;
  EXPECT_TRUE(r.client.data_exchanged);
}

TEST_F(TlsSessionTest, SessionKeepsItsContextAfterASwap) {
  // A connection keeps the context it started with; replacing the shared pointer does not
  // affect it, and the old context stays alive while the session does.
  std::shared_ptr<const TlsContext> current = Server();
  std::weak_ptr<const TlsContext> old = current;
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto session = *TlsSession::Create(current, fds[0]);
  testing::TestLeaf renewed = MakeLeaf(root_, kServerId);
  current = MakeContext(TlsRole::kServer, renewed, bundle_);
  EXPECT_FALSE(old.expired());
  EXPECT_EQ(&session->context(), old.lock().get());
  session.reset();
  EXPECT_TRUE(old.expired());
  close(fds[0]);
  close(fds[1]);
}

TEST_F(TlsSessionTest, NonBlockingSessionsAskForReadsAndFinishInOneThread) {
  // The proxy drives sessions from an event loop: on non-blocking sockets each step returns
  // kWantRead until the peer's bytes arrive, and never blocks.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
  auto server = *TlsSession::Create(Server(), fds[0]);
  auto client = *TlsSession::Create(Client(client_leaf_), fds[1]);
  EXPECT_EQ(server->Handshake(), IoAction::kWantRead);  // nothing sent yet
  IoAction s = IoAction::kWantRead;
  IoAction c = IoAction::kWantRead;
  int steps = 0;
  while ((s != IoAction::kDone || c != IoAction::kDone) && steps++ < 20) {
    if (c != IoAction::kDone) c = client->Handshake();
    if (s != IoAction::kDone) s = server->Handshake();
    ASSERT_NE(c, IoAction::kFailed) << client->failure_detail();
    ASSERT_NE(s, IoAction::kFailed) << server->failure_detail();
  }
  ASSERT_EQ(s, IoAction::kDone);
  ASSERT_EQ(c, IoAction::kDone);
  char buf[64];
  size_t n = 0;
  EXPECT_EQ(server->Read(buf, sizeof(buf), &n), IoAction::kWantRead);
  ASSERT_EQ(client->Write("hello", 5, &n), IoAction::kDone);
  EXPECT_EQ(n, 5u);
  ASSERT_EQ(server->Read(buf, sizeof(buf), &n), IoAction::kDone);
  EXPECT_EQ(std::string(buf, n), "hello");
  client->Shutdown();
  EXPECT_EQ(server->Read(buf, sizeof(buf), &n), IoAction::kClosed);
  close(fds[0]);
  close(fds[1]);
}

TEST(TlsContextTest, RefusesKeyThatDoesNotMatchTheCertificate) {
  testing::TestCa root = MakeRoot();
  testing::TestLeaf a = MakeLeaf(root, kClientId);
  testing::TestLeaf b = MakeLeaf(root, kClientId);
  tls::TlsContextOptions options;
  options.chain = a.chain;
  options.key = b.key;
  options.bundle = BundleOf({&root});
  absl::StatusOr<std::shared_ptr<const TlsContext>> ctx = TlsContext::Create(std::move(options));
  ASSERT_FALSE(ctx.ok());
  EXPECT_NE(ctx.status().message().find("does not match"), std::string::npos) << ctx.status();
}

TEST(TlsContextTest, RefusesMissingBundleAndChain) {
  tls::TlsContextOptions options;
  EXPECT_FALSE(TlsContext::Create(options).ok());
  testing::TestCa root = MakeRoot();
  testing::TestLeaf leaf = MakeLeaf(root, kClientId);
  options.chain = leaf.chain;
  options.key = leaf.key;
  absl::StatusOr<std::shared_ptr<const TlsContext>> ctx = TlsContext::Create(options);
  ASSERT_FALSE(ctx.ok());
  EXPECT_NE(ctx.status().message().find("trust bundle"), std::string::npos);
}

TEST(FailureReasonTest, LabelsAreDistinctSnakeCase) {
  std::set<std::string> labels;
  for (FailureReason reason : kAllFailureReasons) {
    const std::string label(FailureReasonLabel(reason));
    EXPECT_EQ(label.find_first_not_of("abcdefghijklmnopqrstuvwxyz_"), std::string::npos) << label;
    EXPECT_FALSE(FailureReasonHint(reason).empty()) << label;
    labels.insert(label);
  }
  EXPECT_EQ(labels.size(), kAllFailureReasons.size());
}

}  // namespace
}  // namespace trellis::tls
