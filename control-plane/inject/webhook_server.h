// Serves the injection webhook (webhook.h) over HTTPS: POST /inject. The certificate and key are
// read from files on every TLS handshake, so the control plane's rotating serving certificate
// (ServingIdentity, state_dir/serving.{crt,key}) is picked up with no restart. The API server
// trusts it through the MutatingWebhookConfiguration's caBundle (the mesh roots). Every call is
// counted by result and logged (one JSON line; refusals with the reason the user saw).

#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "control-plane/inject/webhook.h"

namespace httplib {
class Server;
}

namespace trellis::control_plane::inject {

class WebhookServer {
 public:
  WebhookServer(WebhookOptions options, std::string cert_path, std::string key_path);
  ~WebhookServer();

  // Binds host:port (0 picks a free one), serves from its own thread; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();  // idempotent

  // Prometheus text: trellis_webhook_requests_total{result="injected|refused|..."}.
  std::string RenderMetrics() const;
  int64_t CountOf(WebhookResult result) const;

 private:
  // Counts the call and writes the operator's log line: refusals and failures at warn with
  // the reason, injections at info, the rest at debug.
  void Record(const WebhookResponse& response, const std::string& peer);

  const WebhookOptions options_;
  const std::pair<std::string, std::string> files_;  // certificate chain, key
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::array<std::atomic<int64_t>, kWebhookResultCount> counts_{};
};

}  // namespace trellis::control_plane::inject
