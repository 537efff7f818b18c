#include "tests/proxy/health/test_app.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "gtest/gtest.h"

namespace trellis::testing {

TestApp::TestApp(bool https) {
  if (https) {
    ca_ = std::make_unique<TestCa>(MakeRoot("probe test app"));
    server_ = std::make_unique<httplib::SSLServer>(ca_->cert.get(), ca_->key->get());
  } else {
    server_ = std::make_unique<httplib::Server>();
  }
  auto record = [this](const httplib::Request& req) {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_;
    last_headers_ = req.headers;
  };
  server_->Get("/ok", [record](const httplib::Request& req, httplib::Response& res) {
    record(req);
    res.set_content("fine\n", "text/plain");
  });
  server_->Get("/fail", [record](const httplib::Request& req, httplib::Response& res) {
    record(req);
    res.status = 500;
    res.set_content("database down\n", "text/plain");
  });
  server_->Get("/redirect", [record](const httplib::Request& req, httplib::Response& res) {
    record(req);
    res.set_redirect("/elsewhere");
  });
  server_->Get("/slow", [this, record](const httplib::Request& req, httplib::Response& res) {
    record(req);
    std::unique_lock<std::mutex> lock(mu_);
    ++waiting_;
    cv_.notify_all();
    // Bounded: a test that forgets to release does not hang the server's shutdown forever.
    cv_.wait_for(lock, std::chrono::seconds(20), [this] { return released_; });
    --waiting_;
    res.set_content("slow but fine\n", "text/plain");
  });
  port_ = server_->bind_to_any_port("127.0.0.1");
  EXPECT_GT(port_, 0) << "test app cannot bind";
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // httplib's stop() does nothing until the server thread has marked itself running: wait for
  // that, or a quick test's destructor would join a thread that never stops.
  for (int i = 0; i < 1000 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(server_->is_running()) << "test app did not start within 5 s";
}

TestApp::~TestApp() {
  Release();
  server_->stop();
  thread_.join();
}

int TestApp::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_;
}

bool TestApp::WaitForWaiting(int n) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return waiting_ >= n; });
}

void TestApp::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  released_ = true;
  cv_.notify_all();
}

std::string TestApp::LastHeader(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = last_headers_.find(name);
  return it == last_headers_.end() ? "" : it->second;
}

int TestApp::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

RefusingPort::RefusingPort() {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
}

RefusingPort::~RefusingPort() {
  if (fd_ >= 0) close(fd_);
}

}  // namespace trellis::testing
