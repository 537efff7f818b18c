#include "control-plane/inject/webhook_server.h"

#include <httplib.h>
#include <openssl/ssl.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log/json_log.h"

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
  server->Post("/inject", [this](const httplib::Request& req, httplib::Response& res) {
    WebhookResponse r = HandleAdmissionReview(req.body, options_);
    Record(r, absl::StrCat(req.remote_addr, ":", req.remote_port));
    res.status = r.http_status;
    res.set_content(r.body, r.content_type.c_str());
  });
  const int bound =
      port == 0 ? server->bind_to_any_port(host) : (server->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("webhook: cannot listen on ", host, ":", port));
  }
  server_ = std::move(server);
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void WebhookServer::Record(const WebhookResponse& r, const std::string& peer) {
  counts_[static_cast<size_t>(r.result)].fetch_add(1, std::memory_order_relaxed);
  log::Level level = log::Level::kDebug;
  const char* msg = "admission review: nothing to inject";
  switch (r.result) {
    case WebhookResult::kInjected:
      level = log::Level::kInfo;
      msg = "pod injected";
      break;
    case WebhookResult::kSkipped:
      level = log::Level::kInfo;
      msg = "pod not injectable, admitted without the mesh";
      break;
    case WebhookResult::kRefused:
      level = log::Level::kWarning;
      msg = "pod refused: sidecar injection failed (failurePolicy Fail)";
      break;
    case WebhookResult::kAdmittedUnmeshed:
      level = log::Level::kWarning;
      msg = "pod admitted WITHOUT the mesh: sidecar injection failed (failurePolicy Ignore)";
      break;
    case WebhookResult::kBadRequest:
      level = log::Level::kWarning;
      msg = "admission request rejected: not an AdmissionReview v1 with a uid";
      break;
    case WebhookResult::kUnchanged:
    case WebhookResult::kNotAPod:
      break;
  }
  if (!log::Enabled(level)) return;
  nlohmann::json fields = {{"result", WebhookResultName(r.result)}, {"peer", peer}};
  if (!r.pod.empty()) fields["pod"] = r.pod;
  if (!r.uid.empty()) fields["uid"] = r.uid;
  if (!r.reason.empty()) fields["reason"] = r.reason;
  log::Log(level, msg, fields);
}

int64_t WebhookServer::CountOf(WebhookResult result) const {
  return counts_[static_cast<size_t>(result)].load(std::memory_order_relaxed);
}

std::string WebhookServer::RenderMetrics() const {
  std::string out =
      "# HELP trellis_webhook_requests_total Admission reviews served by the injection webhook, "
      "by result.\n# TYPE trellis_webhook_requests_total counter\n";
  for (int i = 0; i < kWebhookResultCount; ++i) {
    const auto result = static_cast<WebhookResult>(i);
    absl::StrAppend(&out, "trellis_webhook_requests_total{result=\"", WebhookResultName(result),
                    "\"} ", CountOf(result), "\n");
  }
  return out;
}

void WebhookServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace trellis::control_plane::inject
