#pragma once

// Application health probes through the proxy.
//
// The injector (control-plane/inject) rewrites every HTTP liveness/readiness/startup probe of an
// app container to GET /app-health/<container>/{livez,readyz,startupz} on the proxy's admin port,
// and hands the originals to the proxy as TRELLIS_APP_PROBES, a JSON object:
//
//   {"/app-health/web/livez": {"path": "/healthz", "port": 8080, "scheme": "HTTPS",
//                              "httpHeaders": [{"name": "X-Probe", "value": "1"}],
//                              "host": "10.1.2.3", "timeoutSeconds": 3}, ...}
//
// (path, scheme, httpHeaders, host and timeoutSeconds are optional; port is a number.) The kubelet
// cannot reach the app itself once the app's ports are captured by iptables and served over mTLS,
// so the proxy (UID 1337, whose traffic iptables leaves alone) performs the original probe on the
// kubelet's behalf and answers with the app's status code.
//
// What a probe does, as the kubelet would: HTTP/1.1 GET to 127.0.0.1:<port><path> (or to `host`
// when it is an IP address; a DNS name is not resolved, it only goes into the Host header), with
// the httpHeaders, `Host: <host or 127.0.0.1>:<port>` unless httpHeaders set Host,
// `User-Agent: kube-probe/trellis` and `Accept: */*` unless they set those; HTTPS without
// certificate verification (the kubelet does not verify either); the whole exchange bounded by
// timeoutSeconds (default 1 s). Redirects are not followed: a 3xx counts as success, as the
// kubelet counts a redirect to another host.
//
// The answer on the admin port:
//   app status 200-599  that status (the kubelet counts 200-399 as success), body says so
//   app not reachable   503 "cannot reach the app at ...: connection refused"
//   timeout             503 "timeout: the app did not answer within 1s ..."
//   not HTTP / TLS      503 with the reason
//   too many at once    503 "busy": at most Options::max_in_flight_per_route probes of one route
//                       and Options::max_in_flight in all run at once, so a hung app holds only
//                       that many of the admin server's 16 connection slots: the other routes
//                       (/ready, /stats/prometheus, ...) keep answering, and a hung container
//                       does not starve its healthy neighbours' probes. (The kubelet sends one
//                       probe per route at a time, and gives up after the same timeoutSeconds.)
// Probes never touch the data plane: they run on the admin server's connection threads.
//
// The process must ignore SIGPIPE (trellis-proxy does): OpenSSL writes with write(2).

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/admin/http_admin.h"
#include "common/crypto/handles.h"

namespace trellis::proxy::health {

// The route prefix the injector uses; every TRELLIS_APP_PROBES key starts with it.
inline constexpr char kAppHealthPrefix[] = "/app-health/";

// One HTTP probe of the app, as the injector recorded it.
struct AppProbe {
  std::string route;       // the admin path, "/app-health/<container>/<livez|readyz|startupz>"
  int port = 0;            // the app's port
  std::string path = "/";  // the request target, e.g. "/healthz?full=1"
  bool https = false;
  std::string host;                                          // httpGet.host; empty: 127.0.0.1
  std::vector<std::pair<std::string, std::string>> headers;  // httpHeaders, in order
  absl::Duration timeout = absl::Seconds(1);
};

// Parses TRELLIS_APP_PROBES (empty or only spaces: no probes). InvalidArgument saying which entry
// and field is wrong and what is expected, so an operator can fix the pod spec.
absl::StatusOr<std::vector<AppProbe>> ParseAppProbes(absl::string_view json);

// How a probe ended; also the `result` label of trellis_proxy_app_probes_total.
enum class ProbeResult {
  kPass,         // the app answered 200-399
  kFail,         // the app answered another status
  kTimeout,      // no answer within timeoutSeconds
  kUnreachable,  // connection refused / reset / no route
  kError,        // TLS handshake failed, or the answer was not HTTP
  kBusy,         // refused: too many probes in flight
};
inline constexpr int kProbeResultCount = 6;
const char* ProbeResultName(ProbeResult result);

struct ProbeOutcome {
  ProbeResult result = ProbeResult::kError;
  int status = 503;    // what the admin endpoint answers with
  std::string detail;  // one line for the body: what happened, against which URL
};

class AppProber {
 public:
  struct Options {
    // Probes running at once, over all routes; more are answered 503 "busy" at once. Keep it
    // well below HttpAdmin::kMaxConnections (16) so that other admin routes always get served.
    int max_in_flight = 6;
    // Probes of one route running at once.
    int max_in_flight_per_route = 2;
  };

  // InvalidArgument if two probes share a route or a route does not start with /app-health/.
  static absl::StatusOr<std::unique_ptr<AppProber>> Create(std::vector<AppProbe> probes,
                                                           Options options);
  static absl::StatusOr<std::unique_ptr<AppProber>> Create(std::vector<AppProbe> probes) {
    return Create(std::move(probes), Options());
  }

  AppProber(const AppProber&) = delete;
  AppProber& operator=(const AppProber&) = delete;

  // Registers GET on every probe's route, then a catch-all for /app-health/... answering 404
  // with the routes this proxy serves. Call before http->Start().
  void Register(admin::HttpAdmin* http);

  // Runs probe `index` now (counted, subject to max_in_flight) and returns the admin answer.
  admin::HttpAdmin::Response Serve(size_t index);

  // Runs one probe against the app; not counted, no in-flight limit. Thread-safe.
  ProbeOutcome Run(const AppProbe& probe) const;

  // trellis_proxy_app_probes_total{path="...",result="..."} for every route and result.
  std::string RenderPrometheus() const;

  const std::vector<AppProbe>& probes() const { return probes_; }

 private:
  AppProber(std::vector<AppProbe> probes, Options options, crypto::UniquePtr<SSL_CTX> tls)
      : probes_(std::move(probes)),
        options_(options),
        tls_(std::move(tls)),
        counts_(probes_.size()),
        route_in_flight_(probes_.size()) {}

  const std::vector<AppProbe> probes_;
  const Options options_;
  const crypto::UniquePtr<SSL_CTX> tls_;  // only when some probe is HTTPS
  std::vector<std::array<std::atomic<uint64_t>, kProbeResultCount>> counts_;
  std::vector<std::atomic<int>> route_in_flight_;
  std::atomic<int> in_flight_{0};
};

}  // namespace trellis::proxy::health
