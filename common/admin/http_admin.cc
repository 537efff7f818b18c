#include "common/admin/http_admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace trellis::admin {
namespace {

// A request head larger than this is refused (431); admin requests are a line and a few headers.
constexpr size_t kMaxHeadBytes = 16 * 1024;
// A request body (nothing here reads one) is drained up to this size so the client sees the answer.
constexpr size_t kMaxBodyBytes = 64 * 1024;
// How long a response may wait for the client to read it.
constexpr int kSendTimeoutSeconds = 10;

struct Route {
  std::string method;
  std::string pattern;  // exact, or a prefix when it ends in '*'
  HttpAdmin::Handler handler;

  bool Matches(absl::string_view path) const {
    if (!pattern.empty() && pattern.back() == '*') {
      return absl::StartsWith(path, absl::string_view(pattern).substr(0, pattern.size() - 1));
    }
    return path == pattern;
  }
};

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    default:
      return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
  }
}

bool SendAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void SendResponse(int fd, const HttpAdmin::Response& r, bool head_only,
                  absl::string_view extra_headers = "") {
  std::string out = absl::StrCat(
      "HTTP/1.1 ", r.status, " ", Reason(r.status), "\r\nContent-Type: ", r.content_type,
      "\r\nContent-Length: ", r.body.size(), "\r\n", extra_headers, "Connection: close\r\n\r\n");
  if (!head_only) out += r.body;
  SendAll(fd, out);
}

HttpAdmin::Response Text(int status, std::string body) {
  return HttpAdmin::Response{status, "text/plain; charset=utf-8", absl::StrCat(body, "\n")};
}

// What the request head says, or the response that refuses it.
struct ParsedHead {
  std::string method;
  std::string path;
  size_t body_bytes = 0;
};

bool ParseHead(absl::string_view head, ParsedHead* out, HttpAdmin::Response* refusal) {
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  std::vector<absl::string_view> first = absl::StrSplit(lines[0], ' ');
  if (first.size() != 3 || first[0].empty() || first[1].empty() ||
      !absl::StartsWith(first[2], "HTTP/1.")) {
    *refusal = Text(400, "malformed request line: expected \"METHOD /path HTTP/1.1\"");
    return false;
  }
  out->method = std::string(first[0]);
  absl::string_view target = first[1];
  target = target.substr(0, target.find('?'));
  if (target.empty() || target[0] != '/') {
    *refusal = Text(400, "request target must be a path starting with '/'");
    return false;
  }
  out->path = std::string(target);
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    const absl::string_view name = lines[i].substr(0, colon);
    const absl::string_view value = absl::StripAsciiWhitespace(lines[i].substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      if (!absl::SimpleAtoi(value, &out->body_bytes)) {
        *refusal = Text(400, "Content-Length is not a number");
        return false;
      }
      if (out->body_bytes > kMaxBodyBytes) {
        *refusal = Text(413, "request body too large; these endpoints read no body");
        return false;
      }
    } else if (absl::EqualsIgnoreCase(name, "Transfer-Encoding") &&
               !absl::EqualsIgnoreCase(value, "identity")) {
      *refusal = Text(411, "chunked request bodies are not accepted; send Content-Length");
      return false;
    }
  }
  return true;
}

// recv() that gives up at `deadline`: -1 with errno ETIMEDOUT once it has passed.
ssize_t RecvBefore(int fd, char* buffer, size_t size,
                   std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return -1;
    if (ready == 0) continue;  // the loop checks the deadline
    const ssize_t n = recv(fd, buffer, size, 0);
    if (n < 0 && errno == EINTR) continue;
    return n;
  }
}

// Ends our side, then reads what the client still sends (at most 64 KiB, for at most a second)
// until it closes: closing with unread bytes would send a reset, which can destroy the answer
// before the client has read it.
void LingerBeforeClose(int fd) {
  shutdown(fd, SHUT_WR);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  char chunk[4096];
  for (size_t discarded = 0; discarded < kMaxBodyBytes;) {
    const ssize_t n = RecvBefore(fd, chunk, sizeof(chunk), deadline);
    if (n <= 0) return;
    discarded += static_cast<size_t>(n);
  }
}

}  // namespace

struct HttpAdmin::State {
  std::chrono::steady_clock::duration request_timeout;
  std::vector<Route> routes;
  int listen_fd = -1;
  int wake_fd = -1;  // eventfd: Stop() makes it readable to end the accept loop
  std::thread acceptor;

  struct Connection {
    int fd = -1;        // guarded by mu; -1 once the connection's thread has closed it
    bool done = false;  // guarded by mu
    std::thread thread;
  };
  std::mutex mu;
  std::list<std::unique_ptr<Connection>> connections;  // guarded by mu

  void AcceptLoop();
  void Serve(int fd);
  // Joins the threads of finished connections; returns how many are still open. Holds mu.
  int ReapLocked();
};

int HttpAdmin::State::ReapLocked() {
  int open = 0;
  for (auto it = connections.begin(); it != connections.end();) {
    if ((*it)->done) {
      (*it)->thread.join();
      it = connections.erase(it);
    } else {
      ++open;
      ++it;
    }
  }
  return open;
}

void HttpAdmin::State::AcceptLoop() {
  pollfd fds[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors (EMFILE/ENFILE) leaves the connection queued: back off, do not spin.
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      continue;
    }
    const timeval timeout{kSendTimeoutSeconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    std::lock_guard<std::mutex> lock(mu);
    if (ReapLocked() >= kMaxConnections) {
      SendResponse(
          fd,
          Text(503, absl::StrCat("busy: ", kMaxConnections, " admin requests in progress; retry")),
          false);
      close(fd);
      continue;
    }
    auto connection = std::make_unique<Connection>();
    Connection* c = connection.get();
    c->fd = fd;
    c->thread = std::thread([this, c, fd] {
      Serve(fd);
      LingerBeforeClose(fd);
      std::lock_guard<std::mutex> lock(mu);
      close(c->fd);
      c->fd = -1;
      c->done = true;
    });
    connections.push_back(std::move(connection));
  }
}

void HttpAdmin::State::Serve(int fd) {
  const auto deadline = std::chrono::steady_clock::now() + request_timeout;
  std::string buffer;
  size_t head_end = std::string::npos;
  char chunk[4096];
  while (head_end == std::string::npos) {
    if (buffer.size() > kMaxHeadBytes) {
      SendResponse(fd, Text(431, "request head larger than 16 KiB"), false);
      return;
    }
    const ssize_t n = RecvBefore(fd, chunk, sizeof(chunk), deadline);
    if (n <= 0) return;  // closed, reset, or too slow: nobody to answer
    buffer.append(chunk, static_cast<size_t>(n));
    head_end = buffer.find("\r\n\r\n");
  }
  ParsedHead head;
  Response refusal;
  if (!ParseHead(absl::string_view(buffer).substr(0, head_end), &head, &refusal)) {
    SendResponse(fd, refusal, false);
    return;
  }
  // Drain a (small) body so that closing does not reset the connection before the answer is read.
  size_t body_left = head.body_bytes - std::min(head.body_bytes, buffer.size() - head_end - 4);
  while (body_left > 0) {
    const ssize_t n = RecvBefore(fd, chunk, std::min(sizeof(chunk), body_left), deadline);
    if (n <= 0) return;
    body_left -= static_cast<size_t>(n);
  }

  const bool head_only = head.method == "HEAD";
  const std::string route_method = head_only ? "GET" : head.method;
  std::string allowed;
  for (const Route& route : routes) {
    if (!route.Matches(head.path)) continue;
    if (route.method == route_method) {
      SendResponse(fd, route.handler(), head_only);
      return;
    }
    if (!absl::StrContains(allowed, route.method)) {
      absl::StrAppend(&allowed, allowed.empty() ? "" : ", ", route.method);
    }
  }
  if (!allowed.empty()) {
    SendResponse(
        fd,
        Text(405, absl::StrCat(head.method, " is not allowed on ", head.path, "; use ", allowed)),
        head_only, absl::StrCat("Allow: ", allowed, "\r\n"));
    return;
  }
  SendResponse(fd, Text(404, absl::StrCat("no such endpoint: ", head.path)), head_only);
}

HttpAdmin::HttpAdmin(absl::Duration request_timeout) : state_(std::make_unique<State>()) {
  state_->request_timeout = absl::ToChronoNanoseconds(request_timeout);
}

HttpAdmin::~HttpAdmin() { Stop(); }

void HttpAdmin::Add(const char* method, const std::string& path, Handler handler) {
  state_->routes.push_back(Route{method, path, std::move(handler)});
}

absl::StatusOr<int> HttpAdmin::Start(const std::string& host, int port) {
  if (state_->listen_fd >= 0) return absl::FailedPreconditionError("admin server already started");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot listen on ", host, ":", port, ": ", gai_strerror(rc)));
  }
  std::string last_error = "no address";
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_error = strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
      last_error = strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port, ": ",
                                               last_error, " (in use, or not a local address?)"));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  const int bound_port =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  state_->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (state_->wake_fd < 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  }
  state_->listen_fd = fd;
  State* state = state_.get();
  state_->acceptor = std::thread([state] { state->AcceptLoop(); });
  return bound_port;
}

void HttpAdmin::Stop() {
  if (!state_->acceptor.joinable()) return;
  const uint64_t one = 1;
  (void)!write(state_->wake_fd, &one, sizeof(one));
  state_->acceptor.join();
  {
    // Cut connections still open (a client that never sends, a response nobody reads); a handler
    // already running finishes first (each bounds its own work, e.g. an app probe's timeout).
    std::lock_guard<std::mutex> lock(state_->mu);
    for (auto& c : state_->connections) {
      if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
    }
  }
  for (auto& c : state_->connections) c->thread.join();
  state_->connections.clear();
  close(state_->listen_fd);
  close(state_->wake_fd);
  state_->listen_fd = state_->wake_fd = -1;
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
