#pragma once

// An app for probe tests: a real HTTP (or HTTPS) server on 127.0.0.1:0 whose routes answer
// 200, 500, 302, or hang until released; it records the headers of the last request.

#include <httplib.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "tests/common/testing/test_pki.h"

namespace trellis::testing {

class TestApp {
 public:
  // https: serve TLS with a self-signed certificate (as an app serving HTTPS would).
  explicit TestApp(bool https = false);
  ~TestApp();

  int port() const { return port_; }
  // Requests that reached /slow and are waiting to be released.
  int waiting() const;
  // Waits (at most 10 s) until `n` requests are parked in /slow; false on timeout.
  bool WaitForWaiting(int n) const;
  // Lets every parked /slow request answer 200 (and every later one answer at once).
  void Release();
  // The value of header `name` in the last request ("" if absent).
  std::string LastHeader(const std::string& name) const;
  int requests() const;

 private:
  std::unique_ptr<testing::TestCa> ca_;  // the HTTPS certificate (self-signed)
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  int waiting_ = 0;
  int requests_ = 0;
  bool released_ = false;
  httplib::Headers last_headers_;
};

// A TCP port on 127.0.0.1 that refuses connections: bound, never listening, for as long as the
// object lives (so no other test can take it).
class RefusingPort {
 public:
  RefusingPort();
  ~RefusingPort();
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace trellis::testing
