// HttpAdmin over real loopback sockets, spoken to with raw bytes so that each answer (status line,
// headers, body) is checked exactly as a client such as curl or Prometheus would receive it.

#include "common/admin/http_admin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::admin {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const timeval timeout{10, 0};  // bounds every read below
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

std::string ReadToEof(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, n);
  }
  return out;
}

// Sends `request` as is and returns everything the server wrote before closing.
std::string Exchange(int port, const std::string& request) {
  const int fd = Connect(port);
  EXPECT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string out = ReadToEof(fd);
  close(fd);
  return out;
}

std::string Get(int port, const std::string& path, const std::string& method = "GET") {
  return Exchange(port, absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: x\r\n\r\n"));
}

class HttpAdminTest : public ::testing::Test {
 protected:
  void StartServer() {
    absl::StatusOr<int> port = http_.Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status();
    ASSERT_GT(*port, 0);
    port_ = *port;
  }
  HttpAdmin http_;
  int port_ = 0;
};

TEST_F(HttpAdminTest, ServesARouteWithLengthTypeAndClose) {
  http_.Handle("/ready", [] { return HttpAdmin::Response{200, "text/plain", "ready\n"}; });
  StartServer();
  EXPECT_EQ(Get(port_, "/ready"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
            "Connection: close\r\n\r\nready\n");
  // A query string does not change the route.
  EXPECT_THAT(Get(port_, "/ready?verbose=1"), StartsWith("HTTP/1.1 200 OK\r\n"));
  // HEAD: the same head, no body.
  EXPECT_EQ(Get(port_, "/ready", "HEAD"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
            "Connection: close\r\n\r\n");
}

TEST_F(HttpAdminTest, PassesTheHandlersStatusAndBody) {
  http_.Handle("/ready", [] { return HttpAdmin::Response{503, "text/plain", "draining\n"}; });
  StartServer();
  const std::string answer = Get(port_, "/ready");
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 503 Service Unavailable\r\n"));
  EXPECT_TRUE(absl::EndsWith(answer, "\r\n\r\ndraining\n")) << answer;
}

TEST_F(HttpAdminTest, UnknownPathIs404NamingIt) {
  http_.Handle("/ready", [] { return HttpAdmin::Response{}; });
  StartServer();
  const std::string answer = Get(port_, "/nope");
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 404 Not Found\r\n"));
  EXPECT_THAT(answer, HasSubstr("no such endpoint: /nope"));
}

TEST_F(HttpAdminTest, MethodsAreRoutedApartAndOthersGet405WithAllow) {
  std::atomic<int> posts{0};
  http_.Handle("/drain", [] { return HttpAdmin::Response{405, "text/plain", "use POST\n"}; });
  http_.HandlePost("/drain", [&] {
    ++posts;
    return HttpAdmin::Response{200, "text/plain", "draining\n"};
  });
  http_.Handle("/stats", [] { return HttpAdmin::Response{200, "text/plain", "x\n"}; });
  StartServer();
  EXPECT_THAT(Get(port_, "/drain"), HasSubstr("use POST"));
  EXPECT_EQ(posts.load(), 0);
  EXPECT_THAT(Exchange(port_, "POST /drain HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
              HasSubstr("\r\n\r\ndraining\n"));
  EXPECT_EQ(posts.load(), 1);
  // A POST with a (small) body is answered too; the body is read and ignored.
  EXPECT_THAT(Exchange(port_, "POST /drain HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
              StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(posts.load(), 2);
  const std::string answer = Get(port_, "/stats", "DELETE");
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 405 Method Not Allowed\r\n"));
  EXPECT_THAT(answer, HasSubstr("Allow: GET\r\n"));
  EXPECT_THAT(answer, HasSubstr("DELETE is not allowed on /stats; use GET"));
  EXPECT_THAT(Get(port_, "/stats", "POST"), StartsWith("HTTP/1.1 405 "));
}

TEST_F(HttpAdminTest, PrefixRoutesMatchAfterEarlierExactOnes) {
  http_.Handle("/app-health/web/livez", [] {
    return HttpAdmin::Response{200, "text/plain", "live\n"};
  });
  http_.Handle("/app-health/*", [] {
    return HttpAdmin::Response{404, "text/plain", "no such probe\n"};
  });
  StartServer();
  EXPECT_THAT(Get(port_, "/app-health/web/livez"), HasSubstr("\r\n\r\nlive\n"));
  EXPECT_THAT(Get(port_, "/app-health/other/readyz"), HasSubstr("\r\n\r\nno such probe\n"));
  EXPECT_THAT(Get(port_, "/app-healthz"), HasSubstr("no such endpoint"));
}

TEST_F(HttpAdminTest, MalformedRequestsGetAClearRefusal) {
  http_.Handle("/ready", [] { return HttpAdmin::Response{}; });
  StartServer();
  std::string answer = Exchange(port_, "HELLO\r\n\r\n");
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_THAT(answer, HasSubstr("malformed request line"));
  EXPECT_THAT(Exchange(port_, "GET ready HTTP/1.1\r\n\r\n"), HasSubstr("starting with '/'"));
  EXPECT_THAT(Exchange(port_, "GET /ready SPDY/3\r\n\r\n"), StartsWith("HTTP/1.1 400 "));
  EXPECT_THAT(Exchange(port_, "POST /ready HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
              HasSubstr("Content-Length is not a number"));
  EXPECT_THAT(Exchange(port_, "POST /ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
              StartsWith("HTTP/1.1 411 "));
  EXPECT_THAT(Exchange(port_, "POST /ready HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
              StartsWith("HTTP/1.1 413 "));
  // A head that never ends within 16 KiB.
  EXPECT_THAT(Exchange(port_, "GET /ready HTTP/1.1\r\nX: " + std::string(20000, 'a')),
              StartsWith("HTTP/1.1 431 "));
  // The server still answers afterwards.
  EXPECT_THAT(Get(port_, "/ready"), StartsWith("HTTP/1.1 200 OK\r\n"));
}

// A slow handler (an app probe waiting for a hung app) must not hold up other requests.
TEST_F(HttpAdminTest, ASlowHandlerDoesNotBlockOtherRequests) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  http_.Handle("/slow", [released] {
    released.wait_for(std::chrono::seconds(20));
    return HttpAdmin::Response{200, "text/plain", "slow\n"};
  });
  http_.Handle("/ready", [] { return HttpAdmin::Response{200, "text/plain", "ready\n"}; });
  StartServer();
  auto slow = std::async(std::launch::async, [&] { return Get(port_, "/slow"); });
  EXPECT_THAT(Get(port_, "/ready"), HasSubstr("ready\n"));
  EXPECT_EQ(slow.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  release.set_value();
  EXPECT_THAT(slow.get(), HasSubstr("slow\n"));
}

TEST_F(HttpAdminTest, ConnectionsBeyondTheLimitAreTold503) {
  StartServer();
  // Connections that never send a request occupy every slot.
  std::vector<int> idle;
  for (int i = 0; i < HttpAdmin::kMaxConnections; ++i) idle.push_back(Connect(port_));
  // The acceptor takes them in order; the next one is refused with a reason.
  std::string answer;
  for (int attempt = 0; attempt < 100 && !absl::StartsWith(answer, "HTTP/1.1 503"); ++attempt) {
    answer = Get(port_, "/ready");
    if (!absl::StartsWith(answer, "HTTP/1.1 503")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 503 "));
  EXPECT_THAT(answer, HasSubstr("admin requests in progress"));
  for (int fd : idle) close(fd);
  // Slots free up as those connections end.
  for (int attempt = 0; attempt < 200 && absl::StartsWith(answer, "HTTP/1.1 503"); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    answer = Get(port_, "/ready");
  }
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 404 "));  // no /ready route here: served, not refused
}

// A client that trickles its request a byte at a time is cut at the request deadline, with no
// answer, so it cannot hold one of the few connection slots for long.
TEST(HttpAdminDeadlineTest, ATricklingClientIsCutAtTheRequestDeadline) {
  HttpAdmin http(absl::Milliseconds(400));
  http.Handle("/ready", [] { return HttpAdmin::Response{}; });
  absl::StatusOr<int> port = http.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  const int fd = Connect(*port);
  const std::string request = "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n";
  bool cut = false;
  // One byte every 100 ms: each arrives well within any per-read timeout; the whole request
  // would take 3.5 s.
  for (char c : request) {
    if (send(fd, &c, 1, MSG_NOSIGNAL) != 1) {
      cut = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string answer = ReadToEof(fd);
  close(fd);
  EXPECT_TRUE(cut) << "the server read the whole trickled request";
  EXPECT_EQ(answer, "");
  // A prompt client is still served.
  EXPECT_THAT(Get(*port, "/ready"), StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST_F(HttpAdminTest, StopCutsIdleConnectionsAndFreesThePort) {
  http_.Handle("/ready", [] { return HttpAdmin::Response{}; });
  StartServer();
  const int idle = Connect(port_);  // sends nothing; would otherwise hold its thread 10 s
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto start = std::chrono::steady_clock::now();
  http_.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(ReadToEof(idle), "");  // cut, no answer
  close(idle);
  http_.Stop();  // idempotent
  // The port is free again.
  HttpAdmin again;
  absl::StatusOr<int> port = again.Start("127.0.0.1", port_);
  EXPECT_TRUE(port.ok()) << port.status();
}

TEST_F(HttpAdminTest, ATakenPortIsNamedInTheError) {
  StartServer();
  HttpAdmin second;
  absl::StatusOr<int> port = second.Start("127.0.0.1", port_);
  ASSERT_FALSE(port.ok());
  EXPECT_EQ(port.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(port.status().message()),
              HasSubstr(absl::StrCat("cannot listen on 127.0.0.1:", port_)));
  EXPECT_THAT(std::string(port.status().message()), HasSubstr("in use"));
  absl::StatusOr<int> bad = second.Start("not-an-address.invalid", 0);
  EXPECT_FALSE(bad.ok());
}

TEST(ParseHostPortTest, AcceptsHostPortForms) {
  std::string host;
  int port = -1;
  ASSERT_TRUE(ParseHostPort("127.0.0.1:15000", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 15000);
  ASSERT_TRUE(ParseHostPort("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
  ASSERT_TRUE(ParseHostPort(":15014", &host, &port).ok());
  EXPECT_EQ(host, "0.0.0.0");
  EXPECT_THAT(std::string(ParseHostPort("15000", &host, &port).message()), HasSubstr("host:port"));
  EXPECT_THAT(std::string(ParseHostPort("h:70000", &host, &port).message()),
              HasSubstr("no valid port"));
}

}  // namespace
}  // namespace trellis::admin
