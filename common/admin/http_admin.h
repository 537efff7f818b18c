#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace trellis::admin {

// A small plain-HTTP/1.1 server for operator endpoints (/ready, /live, /metrics, ...), bound to
// one address. One thread accepts; each connection is served on its own short-lived thread (at
// most kMaxConnections at once, so one slow app probe does not hold up a scrape), one request per
// connection ("Connection: close"). Handlers run on those threads and may run concurrently.
//
// Our own code rather than a library: the proxy runs in every pod, and this replaces a dependency
// that cost ~0.5 MB resident, 8 idle threads and pulled shared OpenSSL into a binary that links
// it statically (see bench/proxy/README.md, "Memory").
class HttpAdmin {
 public:
  // What a handler returns: status code, content type and body.
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  using Handler = std::function<Response()>;

  // Connections served at once; one more is answered 503 and closed.
  static constexpr int kMaxConnections = 16;

  // `request_timeout`: how long a client may take to send its whole request (head and body); a
  // client trickling bytes holds a connection slot no longer than that.
  explicit HttpAdmin(absl::Duration request_timeout = absl::Seconds(10));
  ~HttpAdmin();
  HttpAdmin(const HttpAdmin&) = delete;
  HttpAdmin& operator=(const HttpAdmin&) = delete;

  // Registers `handler` for GET and HEAD on `path`. A path ending in '*' matches every path with
  // that prefix. The first registered route that matches a request's path and method runs; a path
  // that matches only under another method gets 405. Call before Start().
  void Handle(const std::string& path, Handler handler) { Add("GET", path, std::move(handler)); }
  // Registers `handler` for POST on `path` (same matching).
  void HandlePost(const std::string& path, Handler handler) {
    Add("POST", path, std::move(handler));
  }

  // Binds `host:port` (port 0 picks a free one) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);

  // Stops accepting, cuts open connections and joins every thread. Idempotent.
  void Stop();

 private:
  struct State;
  void Add(const char* method, const std::string& path, Handler handler);
  std::unique_ptr<State> state_;
};

// Splits "host:port" (or "[v6]:port", or ":port" meaning all interfaces); InvalidArgument naming
// the input otherwise.
absl::Status ParseHostPort(const std::string& address, std::string* host, int* port);

}  // namespace trellis::admin
