// A proxy pair in-process: client -> explicit outbound -> mTLS -> explicit inbound -> backend.

#include <fcntl.h>
#include <sys/socket.h>

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/proxy/server/proxy_test_util.h"

namespace trellis::proxy::testing {
namespace {

class ProxyRelayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { logs_ = new LogCapture(); }
  static LogCapture* logs_;
  TestMesh mesh_;
};
LogCapture* ProxyRelayTest::logs_ = nullptr;

// Sends `bytes` through a pair whose relay buffers hold `buffer_bytes` and checks that the echo
// comes back intact and both proxies counted it.
void ExpectLargeEchoIntact(const TestMesh& mesh, uint64_t bytes, size_t buffer_bytes) {
  Backend backend(Backend::Mode::kEcho);
  ProxyPair pair(mesh, backend.port(),
                 [&](ProxyOptions& options) { options.buffer_bytes = buffer_bytes; });
  UniqueFd fd = ConnectTo(pair.out_port(), absl::Seconds(60));
  ASSERT_TRUE(fd.valid());

  std::string sent_hash;
  std::thread writer([&] {
    Sha256 sha;
    std::string chunk(1 << 16, '\0');
    for (uint64_t off = 0; off < bytes; off += chunk.size()) {
      for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = Pattern(off + i);
      sha.Update(chunk.data(), chunk.size());
      if (!WriteAll(fd.get(), chunk)) break;
    }
    shutdown(fd.get(), SHUT_WR);
    sent_hash = sha.Hex();
  });
  Sha256 received;
  uint64_t total = 0;
  char buf[65536];
  for (;;) {
    const ssize_t r = recv(fd.get(), buf, sizeof(buf), 0);
    if (r <= 0) break;
    received.Update(buf, r);
    total += r;
  }
  writer.join();
  EXPECT_EQ(total, bytes);
  EXPECT_EQ(received.Hex(), sent_hash);
  // Both proxies counted the bytes (seen from the app: outbound sent == inbound received).
  uint64_t out_sent = 0, in_received = 0;
  for (auto* w : pair.outbound->worker_stats()) out_sent += w->bytes_sent[1].load();
  for (auto* w : pair.inbound->worker_stats()) in_received += w->bytes_received[0].load();
  EXPECT_EQ(out_sent, bytes);
  EXPECT_EQ(in_received, bytes);
  EXPECT_TRUE(WaitUntil([&] {
    return pair.outbound->active_connections() == 0 && pair.inbound->active_connections() == 0;
  }));
}

// The default 64 KiB buffers: several TLS records per write, gathered into one send.
TEST_F(ProxyRelayTest, LargeTransferBothWaysArrivesIntact) {
  ExpectLargeEchoIntact(mesh_, 64ull << 20, 65536);
}

// Buffers smaller than one TLS record (16 KiB): every write is one short record.
TEST_F(ProxyRelayTest, LargeTransferWithBuffersSmallerThanARecordArrivesIntact) {
  ExpectLargeEchoIntact(mesh_, 8ull << 20, 4096);
}

// Buffers of an odd size: records of a write straddle the gathering block's end.
TEST_F(ProxyRelayTest, LargeTransferWithOddBufferSizeArrivesIntact) {
  ExpectLargeEchoIntact(mesh_, 16ull << 20, 40000);
}

TEST_F(ProxyRelayTest, ClientHalfCloseStillReceivesTheFullReply) {
  Backend backend(Backend::Mode::kEcho);
  ProxyPair pair(mesh_, backend.port());
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(fd.valid());
  std::string request(300000, 'q');
  for (size_t i = 0; i < request.size(); ++i) request[i] = Pattern(i);
  ASSERT_TRUE(WriteAll(fd.get(), request));
  ASSERT_EQ(shutdown(fd.get(), SHUT_WR), 0);
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), request);
  EXPECT_TRUE(eof);
  EXPECT_TRUE(WaitUntil([&] { return pair.outbound->active_connections() == 0; }));
}

TEST_F(ProxyRelayTest, ServerClosesFirstClientSeesEofAfterAllData) {
  constexpr size_t kBytes = 5 << 20;
  Backend backend(Backend::Mode::kSendAndClose, kBytes);
  ProxyPair pair(mesh_, backend.port());
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(fd.valid());
  bool eof = false;
  const std::string got = ReadAll(fd.get(), &eof);
  EXPECT_TRUE(eof);
  ASSERT_EQ(got.size(), kBytes);
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != Pattern(i)) {
      ADD_FAILURE() << "byte " << i << " differs";
      break;
    }
  }
  // The client can still send after the server's EOF; closing ends the connection.
  fd.Reset();
  EXPECT_TRUE(WaitUntil([&] {
    return pair.outbound->active_connections() == 0 && pair.inbound->active_connections() == 0;
  }));
}

// Relay buffers hold pooled blocks only while bytes wait in them: keepalive connections between
// requests cost no relay memory (a block per direction of 64 connections would be 8 MiB per
// proxy at 64 KiB), and the metric reports what is allocated.
TEST_F(ProxyRelayTest, IdleConnectionsHoldNoRelayBuffers) {
  Backend backend(Backend::Mode::kEcho);
  ProxyPair pair(mesh_, backend.port(), [](ProxyOptions& options) { options.workers = 1; });
  constexpr int kConnections = 64;
  std::vector<UniqueFd> fds;
  for (int i = 0; i < kConnections; ++i) {
    UniqueFd fd = ConnectTo(pair.out_port());
    ASSERT_TRUE(fd.valid());
    const std::string ping = absl::StrCat("ping ", i, "\n");
    ASSERT_TRUE(WriteAll(fd.get(), ping));
    std::string echoed;
    char buf[64];
    while (echoed.size() < ping.size()) {
      const ssize_t r = recv(fd.get(), buf, sizeof(buf), 0);
      ASSERT_GT(r, 0);
      echoed.append(buf, r);
    }
    EXPECT_EQ(echoed, ping);
    fds.push_back(std::move(fd));
  }
  auto held = [](const ProxyServer& server) {
    int64_t bytes = 0;
    for (const WorkerStats* w : server.worker_stats()) {
      bytes += w->relay_buffer_bytes.load() + w->tls_record_buffer_bytes.load();
    }
    return bytes;
  };
  // At most the pools' few free blocks remain (a block is 64 KiB); holding one block per
  // direction of every open connection would be 128 blocks.
  constexpr int64_t kBlock = 65536;
  EXPECT_GT(held(*pair.outbound), 0) << "the pool keeps a warm block for the next read";
  EXPECT_LE(held(*pair.outbound), 16 * 2 * kBlock);
  EXPECT_LE(held(*pair.inbound), 16 * 2 * kBlock);
  EXPECT_EQ(pair.outbound->active_connections(), kConnections);
  fds.clear();
  EXPECT_TRUE(WaitUntil([&] {
    return pair.outbound->active_connections() == 0 && pair.inbound->active_connections() == 0;
  }));
}

TEST_F(ProxyRelayTest, SlowReaderPushesBackInsteadOfBuffering) {
  Backend backend(Backend::Mode::kStall);
  ProxyPair pair(mesh_, backend.port());
  UniqueFd fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(fcntl(fd.get(), F_SETFL, O_NONBLOCK), 0);
  // Write until the writer's socket stays full for a while: the proxies hold at most their
  // bounded buffers, the rest sits in TCP windows.
  std::string chunk(1 << 16, 'x');
  uint64_t written = 0;
  absl::Time last_progress = absl::Now();
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() - last_progress < absl::Milliseconds(500) && absl::Now() < deadline &&
         written < (512ull << 20)) {
    const ssize_t w = send(fd.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (w > 0) {
      written += w;
      last_progress = absl::Now();
    } else {
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  // Socket buffers along the path (client, 2 proxies x 2 sockets, backend) hold some MiB each;
  // an unbounded proxy would have taken everything.
  EXPECT_LT(written, 96ull << 20) << "the proxy buffered without bound";
  EXPECT_GT(written, 0u);
  // Then everything written arrives once the reader reads.
  backend.Resume();
  ASSERT_EQ(fcntl(fd.get(), F_SETFL, 0), 0);
  shutdown(fd.get(), SHUT_WR);
  EXPECT_TRUE(WaitUntil([&] { return backend.sink_done(); }, absl::Seconds(20)));
  EXPECT_EQ(backend.sunk_bytes(), written);
}

TEST_F(ProxyRelayTest, ContextSwapKeepsOldConnectionsAndNewOnesUseNewCertificate) {
  Backend backend(Backend::Mode::kEcho);
  ProxyPair pair(mesh_, backend.port());
  UniqueFd old_fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(old_fd.valid());
  ASSERT_TRUE(WriteAll(old_fd.get(), "ping"));
  char buf[4];
  ASSERT_EQ(recv(old_fd.get(), buf, 4, MSG_WAITALL), 4);
  const std::string old_serial = mesh_.client_leaf.chain[0].serial_hex();

  trellis::testing::TestLeaf renewed = trellis::testing::MakeLeaf(mesh_.root, kClientId);
  const std::string new_serial = renewed.chain[0].serial_hex();
  ASSERT_NE(old_serial, new_serial);
  ASSERT_TRUE(pair.out_store.Update(mesh_.CredentialsFor(renewed)).ok());

  // The old connection goes on.
  ASSERT_TRUE(WriteAll(old_fd.get(), "pong"));
  ASSERT_EQ(recv(old_fd.get(), buf, 4, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(buf, 4), "pong");

  // A new connection presents the new certificate: deny the old serial on the inbound proxy and
  // check that only the old connection is closed.
  UniqueFd new_fd = ConnectTo(pair.out_port());
  ASSERT_TRUE(WriteAll(new_fd.get(), "abcd"));
  ASSERT_EQ(recv(new_fd.get(), buf, 4, MSG_WAITALL), 4);
  pair.inbound->CloseDeniedPeers(*tls::DenyList::Create({old_serial}, {}));
  bool eof = false;
  ReadAll(old_fd.get(), &eof);
  EXPECT_TRUE(eof) << "the old connection (old serial) should be closed";
  ASSERT_TRUE(WriteAll(new_fd.get(), "efgh"));
  ASSERT_EQ(recv(new_fd.get(), buf, 4, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(buf, 4), "efgh");
  EXPECT_EQ(ConnectionFailures(*pair.inbound, Direction::kInbound, ConnectionFailure::kDenied), 1u);
  EXPECT_TRUE(logs_->WaitForLine({"\"reason\":\"denied\"", old_serial}));
}

TEST_F(ProxyRelayTest, DrainStopsAcceptingButExistingConnectionFinishes) {
  Backend backend(Backend::Mode::kEcho);
  ProxyPair pair(mesh_, backend.port());
  const uint16_t port = pair.out_port();
  UniqueFd fd = ConnectTo(port);
  ASSERT_TRUE(WriteAll(fd.get(), "one"));
  char buf[3];
  ASSERT_EQ(recv(fd.get(), buf, 3, MSG_WAITALL), 3);
  EXPECT_TRUE(pair.outbound->listeners_up());
  pair.outbound->Drain();
  EXPECT_FALSE(pair.outbound->listeners_up());
  EXPECT_FALSE(ConnectTo(port, absl::Seconds(2)).valid());
  ASSERT_TRUE(WriteAll(fd.get(), "two"));
  shutdown(fd.get(), SHUT_WR);
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "two");
  EXPECT_TRUE(eof);
  EXPECT_TRUE(WaitUntil([&] { return pair.outbound->active_connections() == 0; }));
}

}  // namespace
}  // namespace trellis::proxy::testing
