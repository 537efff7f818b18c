#include "proxy/admin/admin_endpoint.h"

#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/identity/certificate.h"

namespace trellis::proxy {
namespace {

using Response = admin::HttpAdmin::Response;

constexpr char kJson[] = "application/json";
constexpr char kPrometheus[] = "text/plain; version=0.0.4; charset=utf-8";

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

Response Text(int status, std::string body) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  r.body.push_back('\n');
  return r;
}

Response Json(const nlohmann::json& value) {
  Response r;
  r.content_type = kJson;
  // Replace invalid UTF-8 rather than throw.
  r.body = value.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  r.body.push_back('\n');
  return r;
}

// A configuration is not supposed to hold secrets; if one slipped in as PEM, hide it.
void RedactPem(nlohmann::json* value) {
  if (value->is_string()) {
    if (absl::StrContains(value->get_ref<const std::string&>(), "PRIVATE KEY")) {
      *value = "<redacted>";
    }
    return;
  }
  if (value->is_structured()) {
    for (auto& item : *value) RedactPem(&item);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<AdminEndpoint>> AdminEndpoint::Create(Options options) {
  if (options.store == nullptr || options.stats == nullptr) {
    return absl::InvalidArgumentError("AdminEndpoint needs the ContextStore and ProxyStats");
  }
  if (!options.listeners_up || !options.drain) {
    return absl::InvalidArgumentError("AdminEndpoint needs listeners_up and drain callbacks");
  }
  return std::unique_ptr<AdminEndpoint>(new AdminEndpoint(std::move(options)));
}

void AdminEndpoint::Register(admin::HttpAdmin* http) {
  http->Handle("/ready", [this] { return Ready(); });
  http->Handle("/live", [this] { return Live(); });
  http->Handle("/stats/prometheus", [this] { return Prometheus(); });
  http->Handle("/certs", [this] { return Certs(); });
  http->Handle("/config_dump", [this] { return ConfigDump(); });
  http->Handle("/drain", [] {
    return Text(405, "method not allowed: start draining with POST /drain (curl -X POST ...)");
  });
  http->HandlePost("/drain", [this] {
    Drain();
    return Text(200, "draining");
  });
  if (options_.app_prober != nullptr) options_.app_prober->Register(http);
}

void AdminEndpoint::Drain() {
  if (!draining_.exchange(true)) options_.drain();
}

Response AdminEndpoint::Ready() const {
  if (draining()) return Text(503, "draining");
  std::shared_ptr<const tls::TlsContext> context = options_.store->server_context();
  if (context == nullptr) return Text(503, "no certificate yet");
  const absl::Time now = Now();
  if (now >= context->not_after()) {
    return Text(503, absl::StrCat("certificate expired at ", Rfc3339(context->not_after()),
                                  " (serial ", context->chain().front().serial_hex(), ")"));
  }
  if (now < context->chain().front().not_before()) {
    return Text(503, absl::StrCat("certificate not valid until ",
                                  Rfc3339(context->chain().front().not_before())));
  }
  if (!options_.listeners_up()) return Text(503, "listeners not up");
  return Text(200, "ready");
}

Response AdminEndpoint::Live() const { return Text(200, "live"); }

Response AdminEndpoint::Prometheus() const {
  std::vector<const WorkerStats*> workers;
  if (options_.workers) workers = options_.workers();
  Response r;
  r.content_type = kPrometheus;
  r.body = RenderPrometheus(workers, *options_.stats);
  if (options_.app_prober != nullptr) r.body += options_.app_prober->RenderPrometheus();
  return r;
}

Response AdminEndpoint::Certs() const {
  const std::optional<Credentials> creds = options_.store->credentials();
  nlohmann::json out = {{"spiffe_id", nullptr},
                        {"serial", nullptr},
                        {"not_before", nullptr},
                        {"not_after", nullptr},
                        {"chain", nlohmann::json::array()},
                        {"bundle_roots", nlohmann::json::array()},
                        {"deny_list", {{"serials", 0}, {"spiffe_ids", 0}}}};
  out["generation"] = options_.store->generation();
  out["rotation"] = {{"next_rotation", nullptr},
                     {"last_error", nullptr},
                     {"rotation_count", options_.stats->rotations.load()}};
  if (options_.rotation) {
    const RotationInfo rotation = options_.rotation();
    if (rotation.next_rotation.has_value()) {
      out["rotation"]["next_rotation"] = Rfc3339(*rotation.next_rotation);
    }
    if (!rotation.last_error.empty()) out["rotation"]["last_error"] = rotation.last_error;
  }
  if (!creds.has_value() || creds->chain.empty()) return Json(out);

  const identity::Certificate& leaf = creds->chain.front();
  absl::StatusOr<identity::SpiffeId> id = leaf.GetSpiffeId();
  if (id.ok()) out["spiffe_id"] = id->ToString();
  out["serial"] = leaf.serial_hex();
  out["not_before"] = Rfc3339(leaf.not_before());
  out["not_after"] = Rfc3339(leaf.not_after());
  for (const identity::Certificate& cert : creds->chain) {
    out["chain"].push_back({{"subject", cert.subject()},
                            {"issuer", cert.issuer()},
                            {"serial", cert.serial_hex()},
                            {"not_before", Rfc3339(cert.not_before())},
                            {"not_after", Rfc3339(cert.not_after())},
                            {"sha256", cert.sha256_hex()}});
  }
  for (const identity::Certificate& root : creds->bundle.roots()) {
    out["bundle_roots"].push_back({{"subject", root.subject()},
                                   {"serial", root.serial_hex()},
                                   {"not_after", Rfc3339(root.not_after())},
                                   {"sha256", root.sha256_hex()}});
  }
  out["deny_list"] = {{"serials", creds->deny_list.serials().size()},
                      {"spiffe_ids", creds->deny_list.spiffe_ids().size()}};
  return Json(out);
}

Response AdminEndpoint::ConfigDump() const {
  nlohmann::json config = options_.config_dump ? options_.config_dump() : nlohmann::json::object();
  RedactPem(&config);
  return Json(config);
}

}  // namespace trellis::proxy
