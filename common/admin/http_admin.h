#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace trellis::admin {

// A small plain-HTTP server for operator endpoints (/ready, /live, /metrics, ...), bound to one
// address, served from its own thread. Handlers run on that thread.
class HttpAdmin {
 public:
  // What a handler returns: status code, content type and body.
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  using Handler = std::function<Response()>;

  HttpAdmin();
  ~HttpAdmin();

  // Registers `handler` for GET (and, with `allow_post`, POST) on `path`. Call before Start().
  void Handle(const std::string& path, Handler handler, bool allow_post = false);

  // Binds `host:port` (port 0 picks a free one) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);

  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

// Splits "host:port" (or "[v6]:port", or ":port" meaning all interfaces); InvalidArgument naming
// the input otherwise.
absl::Status ParseHostPort(const std::string& address, std::string* host, int* port);

}  // namespace trellis::admin
