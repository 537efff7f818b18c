// 5,000 concurrent connections through a proxy pair, bounded in time.

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <vector>

#include "gtest/gtest.h"
#include "tests/proxy/server/proxy_test_util.h"

namespace trellis::proxy::testing {
namespace {

// AddressSanitizer builds run the same test with fewer connections: per-connection setup is
// several times slower there and 5,000 would not finish in the time budget (see README).
#if defined(__SANITIZE_ADDRESS__)
constexpr int kConnections = 1000;
#else
constexpr int kConnections = 5000;
#endif

TEST(ProxyScaleTest, FiveThousandConcurrentConnections) {
  // Each connection costs 1 fd in the client and 2 in the outbound proxy here.
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  const rlim_t want = 8 * kConnections;
  if (limit.rlim_cur < want) {
    // Raising the hard limit needs CAP_SYS_RESOURCE; fall back to what the hard limit allows.
    rlimit raised{want, std::max(want, limit.rlim_max)};
    if (setrlimit(RLIMIT_NOFILE, &raised) != 0) {
      limit.rlim_cur = std::min(want, limit.rlim_max);
      setrlimit(RLIMIT_NOFILE, &limit);
    }
  }
  getrlimit(RLIMIT_NOFILE, &limit);
  ASSERT_GE(limit.rlim_cur, static_cast<rlim_t>(3 * kConnections + 200))
      << "RLIMIT_NOFILE too low for this test";

  TestMesh mesh;
  // One process cannot hold ~6 fds per connection under a 20k hard limit, so the backend and
  // the inbound proxy run in a child process (forked before any thread exists here).
  int port_pipe[2], hold_pipe[2];
  ASSERT_EQ(pipe(port_pipe), 0);
  ASSERT_EQ(pipe(hold_pipe), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(port_pipe[0]);
    close(hold_pipe[1]);
    alarm(60);  // bounded even if the parent dies without closing the pipe
    {
      Backend backend(Backend::Mode::kEcho);
      ContextStore in_store;
      if (!in_store.Update(mesh.CredentialsFor(mesh.server_leaf)).ok()) _exit(2);
      ProxyOptions options;
      options.workers = 2;
      options.buffer_bytes = 4096;
      options.listeners = {Explicit(ListenerConfig::Kind::kExplicitInbound, "in", backend.port())};
      auto inbound = ProxyServer::Create(options, &in_store);
      if (!inbound.ok() || !(*inbound)->Start().ok()) _exit(3);
      const uint16_t port = (*inbound)->BoundPort("in");
      if (write(port_pipe[1], &port, sizeof(port)) != sizeof(port)) _exit(4);
      char c;
      while (read(hold_pipe[0], &c, 1) > 0) {
      }
      (*inbound)->Stop();
    }
    _exit(0);
  }
  close(port_pipe[1]);
  close(hold_pipe[0]);
  uint16_t in_port = 0;
  ASSERT_EQ(read(port_pipe[0], &in_port, sizeof(in_port)), static_cast<ssize_t>(sizeof(in_port)));
  close(port_pipe[0]);

  ContextStore out_store;
  ASSERT_TRUE(out_store.Update(mesh.CredentialsFor(mesh.client_leaf)).ok());
  ProxyOptions options;
  options.workers = 2;
  options.buffer_bytes = 4096;
  options.listeners = {Explicit(ListenerConfig::Kind::kExplicitOutbound, "out", in_port)};
  auto outbound = *ProxyServer::Create(options, &out_store);
  ASSERT_TRUE(outbound->Start().ok());
  struct {
    ProxyServer* outbound;
    uint16_t out_port() const { return outbound->BoundPort("out"); }
  } pair{outbound.get()};
  struct ChildReaper {
    int hold_fd;
    pid_t pid;
    ~ChildReaper() {
      close(hold_fd);
      int status = 0;
      waitpid(pid, &status, 0);
    }
  } reaper{hold_pipe[1], child};
  const absl::Time deadline = absl::Now() + absl::Seconds(45);

  std::vector<UniqueFd> fds;
  fds.reserve(kConnections);
  // Sends "<tag><i>\n" on connections [begin, end) and waits until each echoed it.
  auto echo_round = [&](int begin, int end, const std::string& tag) -> int {
    for (int i = begin; i < end; ++i) {
      if (!WriteAll(fds[i].get(), tag + std::to_string(i) + "\n")) return 0;
    }
    std::vector<std::string> got(end - begin);
    std::vector<pollfd> pfds(end - begin);
    int complete = 0;
    while (complete < end - begin && absl::Now() < deadline) {
      for (int i = begin; i < end; ++i) {
        const std::string& g = got[i - begin];
        const bool finished = !g.empty() && g.back() == '\n';
        pfds[i - begin] = {fds[i].get(), static_cast<short>(finished ? 0 : POLLIN), 0};
      }
      poll(pfds.data(), pfds.size(), 100);
      for (int i = begin; i < end; ++i) {
        if (!(pfds[i - begin].revents & POLLIN)) continue;
        char buf[64];
        const ssize_t r = recv(fds[i].get(), buf, sizeof(buf), MSG_DONTWAIT);
        if (r <= 0) continue;
        std::string& g = got[i - begin];
        g.append(buf, r);
        if (g.back() == '\n') {
          if (g != tag + std::to_string(i) + "\n") return complete;
          ++complete;
        }
      }
    }
    return complete;
  };
  // Open in batches (a burst of 5,000 handshakes would overflow the accept queues), keeping
  // every connection open, then exchange data on all of them at once.
  constexpr int kBatch = 250;
  for (int begin = 0; begin < kConnections; begin += kBatch) {
    for (int i = begin; i < begin + kBatch; ++i) {
      UniqueFd fd = ConnectTo(pair.out_port(), absl::Seconds(10));
      ASSERT_TRUE(fd.valid()) << "connect " << i;
      fds.push_back(std::move(fd));
    }
    const absl::Time opened = absl::Now();
    ASSERT_EQ(echo_round(begin, begin + kBatch, "a"), kBatch) << "batch at " << begin;
    if (begin % 1000 == 0) {
      std::fprintf(stderr, "batch %d: echo %s\n", begin,
                   absl::FormatDuration(absl::Now() - opened).c_str());
    }
    ASSERT_LT(absl::Now(), deadline);
  }
  EXPECT_EQ(pair.outbound->active_connections(), static_cast<size_t>(kConnections));
  EXPECT_EQ(echo_round(0, kConnections, "b"), kConnections);

  fds.clear();
  EXPECT_TRUE(
      WaitUntil([&] { return pair.outbound->active_connections() == 0; }, absl::Seconds(20)));
}

}  // namespace
}  // namespace trellis::proxy::testing
