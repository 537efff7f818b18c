#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gtest/gtest.h"
#include "proxy/conn/socket_util.h"
#include "proxy/listener/listen_socket.h"
#include "proxy/listener/original_dst.h"

namespace trellis::proxy {
namespace {

TEST(ListenSocketTest, TwoSocketsShareOnePortWithReusePort) {
  SocketAddress any = *ParseSocketAddress("127.0.0.1", 0);
  UniqueFd first = *OpenListenSocket(any);
  const SocketAddress bound = LocalAddress(first.get());
  ASSERT_NE(bound.port(), 0);
  absl::StatusOr<UniqueFd> second = OpenListenSocket(bound);
  EXPECT_TRUE(second.ok()) << second.status();
}

TEST(SocketAddressTest, ParsesNumericHostsOnly) {
  EXPECT_EQ(ParseSocketAddress("127.0.0.1", 80)->ToString(), "127.0.0.1:80");
  EXPECT_EQ(ParseSocketAddress("[::1]", 443)->ToString(), "[::1]:443");
  EXPECT_FALSE(ParseSocketAddress("example.com", 80).ok());
}

TEST(OriginalDstTest, DirectConnectionIsNotRedirected) {
  UniqueFd listener = *OpenListenSocket(*ParseSocketAddress("127.0.0.1", 0));
  const SocketAddress bound = LocalAddress(listener.get());
  UniqueFd client(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(client.get(), bound.addr(), bound.length), 0);
  UniqueFd accepted;
  for (int i = 0; i < 1000 && !accepted.valid(); ++i) {
    accepted.Reset(accept(listener.get(), nullptr, nullptr));
    if (!accepted.valid()) usleep(1000);
  }
  ASSERT_TRUE(accepted.valid());
  absl::StatusOr<SocketAddress> original = OriginalDestination(accepted.get());
  ASSERT_FALSE(original.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(original.status()));
  EXPECT_NE(original.status().message().find("iptables"), std::string::npos);
}

}  // namespace
}  // namespace trellis::proxy
