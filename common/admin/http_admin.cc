#include "common/admin/http_admin.h"

#include <httplib.h>

#include <chrono>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace trellis::admin {

HttpAdmin::HttpAdmin() : server_(std::make_unique<httplib::Server>()) {}

HttpAdmin::~HttpAdmin() { Stop(); }

void HttpAdmin::Handle(const std::string& path, Handler handler, bool allow_post) {
  auto serve = [handler](const httplib::Request&, httplib::Response& res) {
    Response r = handler();
    res.status = r.status;
    res.set_content(r.body, r.content_type.c_str());
  };
  server_->Get(path, serve);
  if (allow_post) server_->Post(path, serve);
}

absl::StatusOr<int> HttpAdmin::Start(const std::string& host, int port) {
  const int bound = port == 0 ? server_->bind_to_any_port(host) : (server_->bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port,
                                               " (in use, or not a local address?)"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // httplib's stop() is a no-op until the serving thread has marked the server running, so a
  // Stop() right after Start() would join a thread that never ends: wait for it (bounded).
  for (int i = 0; i < 2000 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return bound;
}

void HttpAdmin::Stop() {
  if (thread_.joinable()) {
    server_->stop();
    thread_.join();
  }
}

absl::Status ParseHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\" must be host:port, e.g. 0.0.0.0:15014"));
  }
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\" has no valid port (0-65535)"));
  }
  *host = h.empty() ? "0.0.0.0" : h;
  *port = p;
  return absl::OkStatus();
}

}  // namespace trellis::admin
