#pragma once

// The proxy's pod-local admin routes (port 15000 by default), served by a common/admin HttpAdmin:
//
//   GET  /ready             200 "ready" only when a valid, unexpired certificate is loaded, the
//                           listeners are up and the proxy is not draining; else 503 and the
//                           reason ("no certificate yet", "certificate expired at ...",
//                           "listeners not up", "draining"). Kubernetes' readiness probe.
//   GET  /live              200 "live" while the admin thread answers. Liveness probe.
//   GET  /stats/prometheus  Prometheus text: the sum of every worker's WorkerStats plus ProxyStats.
//   GET  /certs             JSON: our SPIFFE ID, serial, validity, the chain, the bundle's roots,
//                           the deny-list sizes, and rotation fields (see Certs()).
//   GET  /config_dump       JSON: the effective configuration (from the config_dump callback).
//   POST /drain             starts draining (idempotent): 200 "draining". GET is 405.
//   GET  /app-health/<container>/{livez,readyz,startupz}
//                           the app's own HTTP probes, rewritten by the injector to come through
//                           here (proxy/health/app_prober.h): the proxy runs the original probe
//                           against the app and answers with the app's status code, or 503 and
//                           the reason. Other /app-health/ paths are 404. Only with app_prober.
//
// Nothing any route returns contains key material.
//
// Threading: the handlers run on the HttpAdmin's connection threads, several at once; so do the
// callbacks, which must therefore be thread-safe. Drain() may also be called from the control thread (SIGTERM). The endpoint
// must outlive the HttpAdmin's serving: stop the HttpAdmin before destroying it.

#include <atomic>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/admin/http_admin.h"
#include "proxy/health/app_prober.h"
#include "proxy/identity/context_store.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

class AdminEndpoint {
 public:
  // What /certs shows about rotation, from whichever credential source runs.
  struct RotationInfo {
    std::optional<absl::Time> next_rotation;  // empty: not scheduled (file mode, or unknown)
    std::string last_error;                   // empty: the last attempt succeeded
  };

  struct Options {
    // The proxy's contexts and process-wide stats; required, and must outlive the endpoint.
    ContextStore* store = nullptr;
    ProxyStats* stats = nullptr;
    // Every worker's stats block, for /stats/prometheus. Empty function: no workers.
    std::function<std::vector<const WorkerStats*>()> workers;
    // True once every listener is bound and accepting. Required.
    std::function<bool()> listeners_up;
    // Starts the graceful drain (stop accepting, let connections finish). Called at most once,
    // by the first of POST /drain and Drain(). Required.
    std::function<void()> drain;
    // The effective configuration (listeners, timeouts, workers, file paths; never secrets).
    // Empty function: /config_dump returns {}.
    std::function<nlohmann::json()> config_dump;
    // The credential source's rotation state for /certs. Empty function: next_rotation and
    // last_error are null. rotation_count always comes from ProxyStats::rotations.
    std::function<RotationInfo()> rotation;
    // For the certificate expiry check; absl::Now when empty.
    std::function<absl::Time()> clock;
    // The app's HTTP probes (from TRELLIS_APP_PROBES): routes /app-health/..., and their counts
    // in /stats/prometheus. Null: no /app-health routes. Must outlive the endpoint.
    health::AppProber* app_prober = nullptr;
  };

  // InvalidArgument if a required option is missing.
  static absl::StatusOr<std::unique_ptr<AdminEndpoint>> Create(Options options);

  AdminEndpoint(const AdminEndpoint&) = delete;
  AdminEndpoint& operator=(const AdminEndpoint&) = delete;

  // Registers every route on `http`. Call before http->Start().
  void Register(admin::HttpAdmin* http);

  // Starts draining: from now on /ready is 503 "draining". Runs the drain callback the first time
  // only. Thread-safe. This is what the proxy's SIGTERM handling calls (from the control thread,
  // e.g. after reading a signalfd; never from inside a signal handler).
  void Drain();
  bool draining() const { return draining_.load(); }

  // The routes' responses, as served.
  admin::HttpAdmin::Response Ready() const;
  admin::HttpAdmin::Response Live() const;
  admin::HttpAdmin::Response Prometheus() const;
  // {spiffe_id, serial, not_before, not_after, generation, chain: [{subject, issuer, serial,
  //  not_before, not_after, sha256}], bundle_roots: [{subject, serial, not_after, sha256}],
  //  deny_list: {serials, spiffe_ids}, rotation: {next_rotation, last_error, rotation_count}}.
  // Before the first certificate the certificate fields are null and the lists empty.
  // next_rotation and last_error are null unless the rotation callback reports them.
  admin::HttpAdmin::Response Certs() const;
  admin::HttpAdmin::Response ConfigDump() const;

 private:
  explicit AdminEndpoint(Options options) : options_(std::move(options)) {}

  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  const Options options_;
  std::atomic<bool> draining_{false};
};

}  // namespace trellis::proxy
