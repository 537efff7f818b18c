// Serves the injection webhook (webhook.h) over HTTPS: POST /inject. The certificate and key are
// read from files on every TLS handshake, so the control plane's rotating serving certificate
// (ServingIdentity, state_dir/serving.{crt,key}) is picked up with no restart. The API server
// trusts it through the MutatingWebhookConfiguration's caBundle (the mesh roots).

#pragma once

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

 private:
  const WebhookOptions options_;
  const std::pair<std::string, std::string> files_;  // certificate chain, key
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace trellis::control_plane::inject
