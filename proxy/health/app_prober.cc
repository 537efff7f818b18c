#include "proxy/health/app_prober.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/crypto/openssl_error.h"

namespace trellis::proxy::health {
namespace {

using Response = admin::HttpAdmin::Response;

// Big enough for any status line and then some; only the status line is read.
constexpr size_t kMaxResponseHead = 4096;

absl::Status BadEntry(absl::string_view route, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "TRELLIS_APP_PROBES entry \"", route, "\": ", what,
      " (the entries are written by the sidecar injector from the pod's httpGet probes: fix the "
      "probe in the pod spec, or set trellis.io/rewrite-app-probes: \"false\")"));
}

// RFC 7230 token characters, what a header name may hold.
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (absl::ascii_isalnum(c)) continue;
    if (std::strchr("!#$%&'*+-.^_`|~", c) == nullptr || c == '\0') return false;
  }
  return true;
}

// No control characters (CR/LF would let a value end the header early), no DEL.
bool IsFieldValue(absl::string_view s) {
  for (unsigned char c : s) {
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

// A request target: printable ASCII without spaces, like Go's http client sends.
bool IsRequestTarget(absl::string_view s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

// A route segment the admin server can match literally: the container name and the kind are
// DNS-1123 labels in practice; anything else is refused rather than escaped.
bool IsRouteChar(char c) { return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '/'; }

absl::StatusOr<AppProbe> ParseEntry(const std::string& route, const nlohmann::json& value) {
  AppProbe probe;
  probe.route = route;
  if (!absl::StartsWith(route, kAppHealthPrefix) || route.size() == strlen(kAppHealthPrefix)) {
    return BadEntry(route, absl::StrCat("the path must start with ", kAppHealthPrefix,
                                        ", e.g. /app-health/web/livez"));
  }
  for (char c : route) {
    if (!IsRouteChar(c)) {
      return BadEntry(route, "the path may hold only letters, digits, '-', '_' and '/'");
    }
  }
  if (!value.is_object()) {
    return BadEntry(route, absl::StrCat("must be an object (the original httpGet plus "
                                        "timeoutSeconds), got ",
                                        value.dump()));
  }
  if (!value.contains("port")) return BadEntry(route, "port is required (a number 1-65535)");
  const nlohmann::json& port = value["port"];
  if (!port.is_number_integer() || port.get<int64_t>() < 1 || port.get<int64_t>() > 65535) {
    return BadEntry(route, absl::StrCat("port must be a number 1-65535 (named ports are resolved "
                                        "by the injector), got ",
                                        port.dump()));
  }
  probe.port = port.get<int>();
  if (value.contains("path") && !value["path"].is_null()) {
    if (!value["path"].is_string()) {
      return BadEntry(route, absl::StrCat("path must be a string, got ", value["path"].dump()));
    }
    probe.path = value["path"].get<std::string>();
    if (probe.path.empty()) probe.path = "/";
    if (probe.path[0] != '/') probe.path.insert(0, "/");
    if (!IsRequestTarget(probe.path)) {
      return BadEntry(route, absl::StrCat("path ", value["path"].dump(),
                                          " holds spaces or control characters; percent-encode "
                                          "them (%20)"));
    }
  }
  if (value.contains("scheme") && !value["scheme"].is_null()) {
    const nlohmann::json& scheme = value["scheme"];
    const std::string upper =
        scheme.is_string() ? absl::AsciiStrToUpper(scheme.get<std::string>()) : "";
    if (upper != "HTTP" && upper != "HTTPS") {
      return BadEntry(route,
                      absl::StrCat("scheme must be \"HTTP\" or \"HTTPS\", got ", scheme.dump()));
    }
    probe.https = upper == "HTTPS";
  }
  if (value.contains("host") && !value["host"].is_null()) {
    if (!value["host"].is_string() || !IsFieldValue(value["host"].get<std::string>()) ||
        absl::StrContains(value["host"].get<std::string>(), " ")) {
      return BadEntry(route, absl::StrCat("host must be an IP address or a host name, got ",
                                          value["host"].dump()));
    }
    probe.host = value["host"].get<std::string>();
  }
  if (value.contains("httpHeaders") && !value["httpHeaders"].is_null()) {
    const nlohmann::json& headers = value["httpHeaders"];
    if (!headers.is_array()) {
      return BadEntry(route, "httpHeaders must be a list of {\"name\": ..., \"value\": ...}");
    }
    for (size_t i = 0; i < headers.size(); ++i) {
      const nlohmann::json& h = headers[i];
      const std::string where = absl::StrCat("httpHeaders[", i, "]");
      if (!h.is_object() || !h.contains("name") || !h["name"].is_string()) {
        return BadEntry(route, absl::StrCat(where, " needs a string \"name\""));
      }
      const std::string name = h["name"].get<std::string>();
      if (!IsToken(name)) {
        return BadEntry(
            route, absl::StrCat(where, ".name \"", name, "\" is not a valid HTTP header name"));
      }
      std::string header_value;
      if (h.contains("value") && !h["value"].is_null()) {
        if (!h["value"].is_string()) {
          return BadEntry(route, absl::StrCat(where, ".value must be a string"));
        }
        header_value = h["value"].get<std::string>();
      }
      if (!IsFieldValue(header_value)) {
        return BadEntry(route, absl::StrCat(where, ".value holds control characters"));
      }
      probe.headers.emplace_back(name, header_value);
    }
  }
  if (value.contains("timeoutSeconds") && !value["timeoutSeconds"].is_null()) {
    const nlohmann::json& t = value["timeoutSeconds"];
    if (!t.is_number_integer() || t.get<int64_t>() < 1 || t.get<int64_t>() > 86400) {
      return BadEntry(
          route,
          absl::StrCat("timeoutSeconds must be a whole number of seconds >= 1, got ", t.dump()));
    }
    probe.timeout = absl::Seconds(t.get<int64_t>());
  }
  return probe;
}

// An owned socket descriptor.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Waits until `fd` is ready for `events` or `deadline` passes; false on timeout.
bool WaitFor(int fd, short events, absl::Time deadline) {
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{fd, events, 0};
    const int64_t ms =
        std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))));
    const int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;  // let the next I/O call report the error
  }
}

// The exchange with the app, over plaintext or TLS, every step bounded by one deadline.
class Exchange {
 public:
  Exchange(const AppProbe& probe, SSL_CTX* tls, absl::Time deadline)
      : probe_(probe), tls_ctx_(tls), deadline_(deadline) {}

  ProbeOutcome Run() {
    connect_host_ = ConnectHost();
    url_ =
        absl::StrCat(probe_.https ? "https://" : "http://", HostPort(connect_host_), probe_.path);
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    int family = AF_INET;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
    if (inet_pton(AF_INET, connect_host_.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      v4->sin_port = htons(static_cast<uint16_t>(probe_.port));
      addr_len = sizeof(sockaddr_in);
    } else if (inet_pton(AF_INET6, connect_host_.c_str(), &v6->sin6_addr) == 1) {
      family = AF_INET6;
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(static_cast<uint16_t>(probe_.port));
      addr_len = sizeof(sockaddr_in6);
    } else {
      return Outcome(ProbeResult::kError, "bad address");  // ConnectHost() returns IPs only
    }
    Socket fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return Outcome(ProbeResult::kError, Errno("socket"));
    fd_ = fd.get();
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
      if (errno != EINPROGRESS) return Unreachable(errno);
      if (!WaitFor(fd_, POLLOUT, deadline_)) return Timeout("connecting");
      int error = 0;
      socklen_t len = sizeof(error);
      getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &len);
      if (error != 0) return Unreachable(error);
    }
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (probe_.https) {
      ssl_.reset(SSL_new(tls_ctx_));
      if (ssl_ == nullptr || SSL_set_fd(ssl_.get(), fd_) != 1) {
        crypto::ClearOpenSslErrors();
        return Outcome(ProbeResult::kError, "cannot set up TLS");
      }
      // SNI as Go's client sends it: only for a host name, never for an IP address.
      if (!probe_.host.empty() && probe_.host != connect_host_ && !IsIp(probe_.host)) {
        SSL_set_tlsext_host_name(ssl_.get(), probe_.host.c_str());
      }
      while (true) {
        errno = 0;
        const int rc = SSL_connect(ssl_.get());
        if (rc == 1) break;
        const int err = SSL_get_error(ssl_.get(), rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
          if (!WaitFor(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline_)) {
            return Timeout("in the TLS handshake");
          }
          continue;
        }
        const std::string why =
            err == SSL_ERROR_SYSCALL && errno != 0
                ? std::string(std::strerror(errno))
                : std::string(
                      crypto::OpenSslError(absl::StatusCode::kUnavailable, "TLS error").message());
        crypto::ClearOpenSslErrors();
        return Outcome(
            ProbeResult::kError,
            absl::StrCat("TLS handshake with the app failed, is it serving HTTPS? (", why, ")"));
      }
    }
    const std::string request = Request();
    size_t sent = 0;
    while (sent < request.size()) {
      const ssize_t n = Write(request.data() + sent, request.size() - sent);
      if (n > 0) {
        sent += static_cast<size_t>(n);
        continue;
      }
      if (n == kWantRead || n == kWantWrite) {
        if (!WaitFor(fd_, n == kWantRead ? POLLIN : POLLOUT, deadline_)) {
          return Timeout("sending the request");
        }
        continue;
      }
      return Outcome(ProbeResult::kUnreachable,
                     absl::StrCat("the app closed the connection before reading the request (",
                                  last_error_, ")"));
    }
    std::string head;
    char buf[1024];
    while (head.find("\r\n") == std::string::npos && head.size() < kMaxResponseHead) {
      const ssize_t n = Read(buf, sizeof(buf));
      if (n > 0) {
        head.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == kWantRead || n == kWantWrite) {
        if (!WaitFor(fd_, n == kWantRead ? POLLIN : POLLOUT, deadline_)) {
          return Timeout("waiting for the response");
        }
        continue;
      }
      if (head.empty()) {
        return Outcome(ProbeResult::kError,
                       absl::StrCat("the app closed the connection without an HTTP response",
                                    last_error_.empty() ? "" : " (", last_error_,
                                    last_error_.empty() ? "" : ")"));
      }
      break;
    }
    return FromStatusLine(head.substr(0, head.find("\r\n")));
  }

 private:
  static constexpr ssize_t kWantRead = -2;
  static constexpr ssize_t kWantWrite = -3;

  static bool IsIp(const std::string& host) {
    unsigned char buf[16];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 ||
           inet_pton(AF_INET6, host.c_str(), buf) == 1;
  }

  std::string ConnectHost() const {
    if (!probe_.host.empty() && IsIp(probe_.host)) return probe_.host;
    return "127.0.0.1";
  }

  std::string HostPort(const std::string& host) const {
    return absl::StrContains(host, ':') ? absl::StrCat("[", host, "]:", probe_.port)
                                        : absl::StrCat(host, ":", probe_.port);
  }

  std::string Request() const {
    // Host as the kubelet sends it (host:port of the URL) unless httpHeaders set it; the last
    // Host header wins, as in Go's client.
    std::string host = HostPort(probe_.host.empty() ? connect_host_ : probe_.host);
    bool agent = false, accept = false;
    std::string extra;
    for (const auto& [name, value] : probe_.headers) {
      if (absl::EqualsIgnoreCase(name, "Host")) {
        host = value;
        continue;
      }
      if (absl::EqualsIgnoreCase(name, "Connection")) continue;  // always "close", below
      agent = agent || absl::EqualsIgnoreCase(name, "User-Agent");
      accept = accept || absl::EqualsIgnoreCase(name, "Accept");
      absl::StrAppend(&extra, name, ": ", value, "\r\n");
    }
    std::string request = absl::StrCat("GET ", probe_.path, " HTTP/1.1\r\nHost: ", host, "\r\n");
    if (!agent) absl::StrAppend(&request, "User-Agent: kube-probe/trellis\r\n");
    if (!accept) absl::StrAppend(&request, "Accept: */*\r\n");
    absl::StrAppend(&request, extra, "Connection: close\r\n\r\n");
    return request;
  }

  // > 0 bytes, 0 EOF, -1 error (last_error_), kWantRead / kWantWrite.
  ssize_t Write(const char* data, size_t size) {
    if (ssl_ == nullptr) {
      const ssize_t n = send(fd_, data, size, MSG_NOSIGNAL);
      if (n >= 0) return n;
      if (errno == EAGAIN || errno == EINTR) return kWantWrite;
      last_error_ = std::strerror(errno);
      return -1;
    }
    errno = 0;
    const int n = SSL_write(ssl_.get(), data, static_cast<int>(size));
    return SslResult(n);
  }

  ssize_t Read(char* data, size_t size) {
    if (ssl_ == nullptr) {
      const ssize_t n = recv(fd_, data, size, 0);
      if (n >= 0) return n;
      if (errno == EAGAIN || errno == EINTR) return kWantRead;
      last_error_ = std::strerror(errno);
      return -1;
    }
    errno = 0;
    const int n = SSL_read(ssl_.get(), data, static_cast<int>(size));
    return SslResult(n);
  }

  ssize_t SslResult(int n) {
    if (n > 0) return n;
    const int err = SSL_get_error(ssl_.get(), n);
    if (err == SSL_ERROR_WANT_READ) return kWantRead;
    if (err == SSL_ERROR_WANT_WRITE) return kWantWrite;
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_SYSCALL && errno != 0) last_error_ = std::strerror(errno);
    crypto::ClearOpenSslErrors();
    return err == SSL_ERROR_SYSCALL && last_error_.empty() ? 0 : -1;
  }

  ProbeOutcome FromStatusLine(const std::string& line) {
    // "HTTP/1.1 200 OK"
    int status = 0;
    if (!absl::StartsWith(line, "HTTP/1.") || line.size() < 12 || line[8] != ' ' ||
        !absl::SimpleAtoi(line.substr(9, 3), &status)) {
      std::string shown = line.substr(0, 60);
      for (char& c : shown) {
        if (!absl::ascii_isprint(c)) c = '?';
      }
      return Outcome(ProbeResult::kError,
                     absl::StrCat("the app's answer is not HTTP/1.x (starts \"", shown,
                                  "\"); is the probe's scheme right?"));
    }
    ProbeOutcome outcome;
    outcome.result = status >= 200 && status < 400 ? ProbeResult::kPass : ProbeResult::kFail;
    outcome.status = status >= 200 && status <= 599 ? status : 503;
    outcome.detail = absl::StrCat("app answered ", status, " to GET ", url_);
    return outcome;
  }

  ProbeOutcome Outcome(ProbeResult result, absl::string_view what) const {
    ProbeOutcome outcome;
    outcome.result = result;
    outcome.status = 503;
    outcome.detail = absl::StrCat(what, " (GET ", url_, ")");
    return outcome;
  }

  ProbeOutcome Unreachable(int error) const {
    return Outcome(ProbeResult::kUnreachable,
                   absl::StrCat("cannot reach the app at ", HostPort(connect_host_), ": ",
                                std::strerror(error)));
  }

  ProbeOutcome Timeout(absl::string_view when) const {
    return Outcome(ProbeResult::kTimeout,
                   absl::StrCat("timeout: the app did not answer within ",
                                absl::FormatDuration(probe_.timeout), " (", when, ")"));
  }

  std::string Errno(absl::string_view call) const {
    return absl::StrCat(call, ": ", std::strerror(errno));
  }

  const AppProbe& probe_;
  SSL_CTX* const tls_ctx_;
  const absl::Time deadline_;
  std::string connect_host_;
  std::string url_;
  int fd_ = -1;
  crypto::UniquePtr<SSL> ssl_;
  std::string last_error_;
};

Response Text(int status, std::string body) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  r.body.push_back('\n');
  return r;
}

}  // namespace

const char* ProbeResultName(ProbeResult result) {
  switch (result) {
    case ProbeResult::kPass:
      return "pass";
    case ProbeResult::kFail:
      return "fail";
    case ProbeResult::kTimeout:
      return "timeout";
    case ProbeResult::kUnreachable:
      return "unreachable";
    case ProbeResult::kError:
      return "error";
    case ProbeResult::kBusy:
      return "busy";
  }
  return "unknown";
}

absl::StatusOr<std::vector<AppProbe>> ParseAppProbes(absl::string_view json) {
  std::vector<AppProbe> probes;
  if (absl::StripAsciiWhitespace(json).empty()) return probes;
  const nlohmann::json parsed =
      nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(
        "TRELLIS_APP_PROBES is not valid JSON; expected an object such as "
        "{\"/app-health/web/livez\": {\"path\": \"/healthz\", \"port\": 8080}} (the sidecar "
        "injector writes it; was the env var edited by hand?)");
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TRELLIS_APP_PROBES must be a JSON object mapping /app-health/... paths to probes, got ",
        parsed.type_name()));
  }
  for (const auto& [route, value] : parsed.items()) {
    absl::StatusOr<AppProbe> probe = ParseEntry(route, value);
    if (!probe.ok()) return probe.status();
    probes.push_back(*std::move(probe));
  }
  return probes;
}

absl::StatusOr<std::unique_ptr<AppProber>> AppProber::Create(std::vector<AppProbe> probes,
                                                             Options options) {
  if (options.max_in_flight < 1 || options.max_in_flight_per_route < 1) {
    return absl::InvalidArgumentError(
        "AppProber: max_in_flight and max_in_flight_per_route must be at least 1");
  }
  std::set<std::string> routes;
  bool https = false;
  for (const AppProbe& p : probes) {
    if (!absl::StartsWith(p.route, kAppHealthPrefix)) {
      return absl::InvalidArgumentError(
          absl::StrCat("app probe route \"", p.route, "\" must start with ", kAppHealthPrefix));
    }
    if (!routes.insert(p.route).second) {
      return absl::InvalidArgumentError(absl::StrCat("app probe route \"", p.route, "\" twice"));
    }
    https = https || p.https;
  }
  crypto::UniquePtr<SSL_CTX> tls;
  if (https) {
    tls.reset(SSL_CTX_new(TLS_client_method()));
    if (tls == nullptr) return crypto::OpenSslInternalError("SSL_CTX_new for HTTPS app probes");
    // Like the kubelet: an HTTPS probe checks that the app answers, not who it is.
    SSL_CTX_set_verify(tls.get(), SSL_VERIFY_NONE, nullptr);
  }
  return std::unique_ptr<AppProber>(new AppProber(std::move(probes), options, std::move(tls)));
}

void AppProber::Register(admin::HttpAdmin* http) {
  for (size_t i = 0; i < probes_.size(); ++i) {
    http->Handle(probes_[i].route, [this, i] { return Serve(i); });
  }
  std::vector<std::string> routes;
  for (const AppProbe& p : probes_) routes.push_back(p.route);
  const std::string known = routes.empty()
                                ? "none (TRELLIS_APP_PROBES is empty: no HTTP probe was rewritten)"
                                : absl::StrJoin(routes, ", ");
  // The admin server matches routes in registration order: the exact routes above win.
  http->Handle("/app-health/*", [known] {
    return Text(404, absl::StrCat("no such app probe; this proxy serves: ", known));
  });
}

admin::HttpAdmin::Response AppProber::Serve(size_t index) {
  ProbeOutcome outcome;
  const int route = route_in_flight_[index].fetch_add(1);
  const int all = in_flight_.fetch_add(1);
  if (route >= options_.max_in_flight_per_route || all >= options_.max_in_flight) {
    outcome.result = ProbeResult::kBusy;
    outcome.status = 503;
    outcome.detail =
        route >= options_.max_in_flight_per_route
            ? absl::StrCat("busy: ", route, " earlier probes of ", probes_[index].route,
                           " are still waiting for the app; not probing")
            : absl::StrCat("busy: ", all,
                           " app probes are already waiting for the app(s); not probing");
  } else {
    outcome = Run(probes_[index]);
  }
  in_flight_.fetch_sub(1);
  route_in_flight_[index].fetch_sub(1);
  counts_[index][static_cast<int>(outcome.result)].fetch_add(1, std::memory_order_relaxed);
  return Text(outcome.status, outcome.detail);
}

ProbeOutcome AppProber::Run(const AppProbe& probe) const {
  return Exchange(probe, tls_.get(), absl::Now() + probe.timeout).Run();
}

std::string AppProber::RenderPrometheus() const {
  std::string out =
      "# HELP trellis_proxy_app_probes_total App health probes served on the admin port for the "
      "kubelet (/app-health/...), by path and result.\n"
      "# TYPE trellis_proxy_app_probes_total counter\n";
  for (size_t i = 0; i < probes_.size(); ++i) {
    for (int r = 0; r < kProbeResultCount; ++r) {
      absl::StrAppend(&out, "trellis_proxy_app_probes_total{path=\"", probes_[i].route,
                      "\",result=\"", ProbeResultName(static_cast<ProbeResult>(r)), "\"} ",
                      counts_[i][r].load(std::memory_order_relaxed), "\n");
    }
  }
  return out;
}

}  // namespace trellis::proxy::health
