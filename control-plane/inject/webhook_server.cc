#include "control-plane/inject/webhook_server.h"

#include <openssl/ssl.h>

#include <httplib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace trellis::control_plane::inject {
namespace {

// SSL_CTX_set_cert_cb: loads the current files for this handshake (0 aborts it).
int LoadCertForHandshake(SSL* ssl, void* arg) {
  const auto* files = static_cast<const std::pair<std::string, std::string>*>(arg);
  if (SSL_use_certificate_chain_file(ssl, files->first.c_str()) != 1) return 0;
  if (SSL_use_PrivateKey_file(ssl, files->second.c_str(), SSL_FILETYPE_PEM) != 1) return 0;
  return SSL_check_private_key(ssl) == 1 ? 1 : 0;
}

}  // namespace

WebhookServer::WebhookServer(WebhookOptions options, std::string cert_path, std::string key_path)
    : options_(std::move(options)), files_(std::move(cert_path), std::move(key_path)) {}

WebhookServer::~WebhookServer() { Stop(); }

absl::StatusOr<int> WebhookServer::Start(const std::string& host, int port) {
  if (server_) return absl::FailedPreconditionError("webhook: already started");
  void* files = const_cast<std::pair<std::string, std::string>*>(&files_);
  auto server = std::make_unique<httplib::SSLServer>([files](SSL_CTX& ctx) {
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(&ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_cert_cb(&ctx, LoadCertForHandshake, files);
    return true;
  });
  if (!server->is_valid()) return absl::InternalError("cannot create the webhook's TLS context");
  server->set_payload_max_length(8 << 20);  // a Pod is far smaller; the API server caps at 3 MiB
  server->set_read_timeout(10, 0);
  const WebhookOptions* options = &options_;
  server->Post("/inject", [options](const httplib::Request& req, httplib::Response& res) {
    WebhookResponse r = HandleAdmissionReview(req.body, *options);
    res.status = r.http_status;
    res.set_content(r.body, r.content_type.c_str());
  });
  const int bound = port == 0 ? server->bind_to_any_port(host)
                              : (server->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("webhook: cannot listen on ", host, ":", port));
  }
  server_ = std::move(server);
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void WebhookServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace trellis::control_plane::inject
