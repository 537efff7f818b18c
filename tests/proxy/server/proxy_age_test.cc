// Connections end when the verified peer certificate expires (close_on_peer_expiry) and when they
// reach max_connection_age (with +/-10% jitter); both are counted and logged like any failure.

#include <sys/socket.h>

#include "gtest/gtest.h"
#include "tests/proxy/server/proxy_test_util.h"

namespace trellis::proxy::testing {
namespace {

using trellis::testing::MakeLeaf;

class ProxyAgeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { logs_ = new LogCapture(); }

  // Opens a connection through the pair and checks one byte echoes.
  static UniqueFd OpenRelayed(const ProxyPair& pair) {
    UniqueFd fd = ConnectTo(pair.out_port());
    EXPECT_TRUE(fd.valid());
    EXPECT_TRUE(Echoes(fd.get(), 'a'));
    return fd;
  }

  static bool Echoes(int fd, char c) {
    if (!WriteAll(fd, std::string(1, c))) return false;
    char back = 0;
    return recv(fd, &back, 1, MSG_WAITALL) == 1 && back == c;
  }

  // The mesh with a client leaf that expires `ttl` from now.
  static TestMesh ShortLivedClient(absl::Duration ttl) {
    TestMesh mesh;
    mesh.client_leaf = MakeLeaf(mesh.root, kClientId, absl::Now() - absl::Hours(1),
                                absl::Now() + ttl);
    return mesh;
  }

  static LogCapture* logs_;
  Backend backend_{Backend::Mode::kEcho};
};
LogCapture* ProxyAgeTest::logs_ = nullptr;

bool IsInbound(const ProxyOptions& o) {
  return !o.listeners.empty() && o.listeners[0].kind == ListenerConfig::Kind::kExplicitInbound;
}

TEST_F(ProxyAgeTest, PeerExpiryClosesConnection) {
  TestMesh mesh = ShortLivedClient(absl::Seconds(3));
  ProxyPair pair(mesh, backend_.port(), [](ProxyOptions& o) { o.close_on_peer_expiry = true; });
  const absl::Time start = absl::Now();
  UniqueFd fd = OpenRelayed(pair);
  // Still relaying well before expiry.
  absl::SleepFor(absl::Seconds(1));
  ASSERT_TRUE(Echoes(fd.get(), 'b'));

  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "");
  const absl::Duration closed_after = absl::Now() - start;
  EXPECT_TRUE(eof) << "closed gracefully, not reset";
  EXPECT_GE(closed_after, absl::Seconds(1));
  EXPECT_LE(closed_after, absl::Seconds(6));
  EXPECT_TRUE(WaitUntil(
      [&] {
        return ConnectionFailures(*pair.inbound, Direction::kInbound,
                                  ConnectionFailure::kPeerExpired) == 1;
      },
      absl::Seconds(2)));
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"peer_expired\"", "\"listener\":\"in\"",
                                  std::string("\"peer_identity\":\"") + kClientId + "\""}))
      << logs_->Text();
  EXPECT_EQ(ConnectionFailures(*pair.inbound, Direction::kInbound, ConnectionFailure::kReset), 0u);
}

TEST_F(ProxyAgeTest, PeerExpiryIgnoredWhenDisabled) {
  TestMesh mesh = ShortLivedClient(absl::Seconds(3));
  ProxyPair pair(mesh, backend_.port(), [](ProxyOptions& o) { o.close_on_peer_expiry = false; });
  const absl::Time start = absl::Now();
  UniqueFd fd = OpenRelayed(pair);
  absl::SleepFor(absl::Seconds(5) - (absl::Now() - start));
  EXPECT_TRUE(Echoes(fd.get(), 'c')) << "the connection outlives its peer's certificate";
  EXPECT_EQ(
      ConnectionFailures(*pair.inbound, Direction::kInbound, ConnectionFailure::kPeerExpired), 0u);
}

TEST_F(ProxyAgeTest, MaxConnectionAgeClosesAndNewConnectionsWork) {
  ProxyPair pair(TestMesh(), backend_.port(), [](ProxyOptions& o) {
    if (IsInbound(o)) o.max_connection_age = absl::Seconds(1);
  });
  const absl::Time start = absl::Now();
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(Echoes(fd.get(), 'a'));
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "");
  const absl::Duration closed_after = absl::Now() - start;
  EXPECT_TRUE(eof);
  // 1 s +/- 10%; the age counts from the inbound accept, a little after our connect.
  EXPECT_GE(closed_after, absl::Milliseconds(900));
  EXPECT_LE(closed_after, absl::Milliseconds(1100) + absl::Milliseconds(400));
  EXPECT_TRUE(WaitUntil(
      [&] {
        return ConnectionFailures(*pair.inbound, Direction::kInbound,
                                  ConnectionFailure::kMaxAge) == 1;
      },
      absl::Seconds(2)));
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"max_connection_age\"", "\"listener\":\"in\""}))
      << logs_->Text();

  // A new connection is accepted and relays.
  UniqueFd again = ConnectTo(pair.out_port());
  EXPECT_TRUE(Echoes(again.get(), 'z'));
}

TEST_F(ProxyAgeTest, MaxConnectionAgeUnlimitedByDefault) {
  ProxyOptions defaults;
  EXPECT_EQ(defaults.max_connection_age, absl::ZeroDuration());
  // Off unless asked for: rotation must not cut connections verified when they were opened.
  EXPECT_FALSE(defaults.close_on_peer_expiry);
}

}  // namespace
}  // namespace trellis::proxy::testing
