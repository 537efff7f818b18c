#pragma once

// A minimal client for the Kubernetes API server: one JSON request over HTTPS (libcurl), the
// control plane's own bearer token re-read from its file on every call (projected tokens rotate),
// only the given CA trusted. Enough for the mesh ConfigMap sync; no watch, no retries (the
// callers loop).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace trellis::control_plane::kube {

struct KubeApiConfig {
  // https://HOST[:PORT], no path.
  std::string server_url;
  // PEM CA bundle for the API server's serving certificate.
  std::string ca_file;
  // The control plane's own bearer token (its service account's). Read on every call.
  std::string token_file;
  // Bound on one call (connect + TLS + request + answer).
  absl::Duration request_timeout = absl::Seconds(5);
};

// Where a pod's service-account credentials are mounted.
inline constexpr absl::string_view kServiceAccountDir =
    "/var/run/secrets/kubernetes.io/serviceaccount";

// The in-cluster configuration: KUBERNETES_SERVICE_HOST/PORT, ca.crt and token in
// `service_account_dir`. FailedPrecondition (saying what to set instead) outside a pod.
absl::StatusOr<KubeApiConfig> InClusterConfig(
    absl::string_view service_account_dir = kServiceAccountDir);

struct KubeResponse {
  long http_status = 0;
  std::string body;  // JSON as the API server sent it (at most 4 MiB)
};

// The calls the sync needs, as an interface so tests can substitute an in-memory API server.
// Implementations are thread-safe (KubeApiClient: each call has its own connection), so one client
// serves the ConfigMap sync's thread and start-up calls alike.
class KubeApi {
 public:
  virtual ~KubeApi() = default;
  // METHOD (GET, POST, PUT) PATH (starting with "/", query included) with a JSON body.
  // Any HTTP answer is returned as is; UNAVAILABLE if there is none (unreachable, timeout, TLS
  // verification failed, token file unreadable), with a message naming the cause.
  virtual absl::StatusOr<KubeResponse> Call(absl::string_view method, absl::string_view path,
                                            absl::string_view body) = 0;
};

class KubeApiClient : public KubeApi {
 public:
  // Checks the configuration (https URL without a path, readable CA file, a token file named).
  static absl::StatusOr<std::unique_ptr<KubeApiClient>> Create(KubeApiConfig config);

  absl::StatusOr<KubeResponse> Call(absl::string_view method, absl::string_view path,
                                    absl::string_view body) override;

  const KubeApiConfig& config() const { return config_; }

 private:
  explicit KubeApiClient(KubeApiConfig config) : config_(std::move(config)) {}
  const KubeApiConfig config_;
};

// The `message` of a Kubernetes Status object in an error answer ("" if there is none),
// truncated for logs.
std::string StatusMessage(absl::string_view body);

// Overwrites a string that held a secret (a token) before it is freed.
void WipeSecret(std::string& s);

// Text from the API server made safe for a status message: `secret` (when given) replaced by
// "<token>" (defence in depth: the API server does not echo it), and truncated to 512 bytes.
std::string QuoteForMessage(absl::string_view text, absl::string_view secret = "");

}  // namespace trellis::control_plane::kube
