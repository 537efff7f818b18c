#include "control-plane/kube/mesh_configmap_sync.h"

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log/json_log.h"

namespace trellis::control_plane::kube {
namespace {

constexpr char kRootsKey[] = "roots.crt";
constexpr char kTrustDomainKey[] = "trust-domain";
constexpr char kAddressKey[] = "control-plane-address";
// A 409 means another writer (the other replica) changed the object between our GET and our
// write: read again and retry, a few times, then leave it to the next pass.
constexpr int kAttempts = 3;

// Percent-encodes a query parameter value (label selectors contain '=', '/', ',', '!').
std::string QueryEscape(absl::string_view s) {
  std::string out;
  for (const char c : s) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  return out;
}

// Namespace and object names are DNS labels/subdomains; anything else would not be a safe path
// segment (and the API server would not have returned it).
bool IsDnsName(absl::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  for (const char c : s) {
    if (!(absl::ascii_islower(static_cast<unsigned char>(c)) ||
          absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.')) {
      return false;
    }
  }
  return true;
}

absl::Status HttpError(long status, absl::string_view what, absl::string_view body,
                       absl::string_view permission) {
  const std::string message = StatusMessage(body);
  const std::string detail =
      absl::StrCat(what, ": HTTP ", status, message.empty() ? "" : ": ", message);
  if (status == 401) {
    return absl::UnauthenticatedError(
        absl::StrCat(detail,
                     " (the API server does not accept the control plane's own token: check its "
                     "service account token file)"));
  }
  if (status == 403) {
    return absl::PermissionDeniedError(absl::StrCat(detail, " (the control plane's RBAC lacks ",
                                                    permission, "; apply k8s/rbac.yaml)"));
  }
  return absl::UnavailableError(detail);
}

std::string StringAt(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return "";
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

MeshConfigMapSync::MeshConfigMapSync(MeshConfigMapSyncOptions options, KubeApi* api,
                                     std::function<std::string()> roots_pem)
    : options_(std::move(options)), api_(api), roots_pem_(std::move(roots_pem)) {}

MeshConfigMapSync::~MeshConfigMapSync() { Stop(); }

absl::StatusOr<MeshConfigMapSync::Result> MeshConfigMapSync::Reconcile(
    const std::string& ns, const std::string& desired_pem) {
  const std::string name = options_.configmap_name;
  const std::string collection = absl::StrCat("/api/v1/namespaces/", ns, "/configmaps");
  const std::string item = absl::StrCat(collection, "/", name);
  const auto set_ours = [&](nlohmann::json& data) {
    data[kRootsKey] = desired_pem;
    data[kTrustDomainKey] = options_.trust_domain;
    data[kAddressKey] = options_.control_plane_address;
  };
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    absl::StatusOr<KubeResponse> got = api_->Call("GET", item, "");
    if (!got.ok()) return got.status();
    if (got->http_status == 404) {
      nlohmann::json object = {
          {"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata",
           {{"name", name},
            {"namespace", ns},
            {"labels",
             {{kManagedByLabel, kManagedByValue}, {"app.kubernetes.io/part-of", "trellis"}}}}},
          {"data", nlohmann::json::object()},
      };
      set_ours(object["data"]);
      absl::StatusOr<KubeResponse> created = api_->Call("POST", collection, object.dump());
      if (!created.ok()) return created.status();
      if (created->http_status == 200 || created->http_status == 201) return Result::kCreated;
      if (created->http_status == 409) {  // created meanwhile (the other replica): read it
        absl::MutexLock lock(&mu_);
        ++stats_.conflicts;
        continue;
      }
      return HttpError(created->http_status, absl::StrCat("creating ConfigMap ", ns, "/", name),
                       created->body, "`create configmaps`");
    }
    if (got->http_status != 200) {
      return HttpError(got->http_status, absl::StrCat("reading ConfigMap ", ns, "/", name),
                       got->body, "`get configmaps` on trellis-mesh");
    }
    nlohmann::json object = nlohmann::json::parse(got->body, nullptr, /*allow_exceptions=*/false);
    if (!object.is_object() || !object.contains("metadata") || !object["metadata"].is_object()) {
      return absl::UnavailableError(absl::StrCat("reading ConfigMap ", ns, "/", name,
                                                 ": the answer is not a ConfigMap object"));
    }
    nlohmann::json& metadata = object["metadata"];
    if (!metadata.contains("labels") || !metadata["labels"].is_object() ||
        StringAt(metadata["labels"], kManagedByLabel) != kManagedByValue) {
      return Result::kUnmanaged;
    }
    if (!object.contains("data") || !object["data"].is_object()) {
      object["data"] = nlohmann::json::object();
    }
    nlohmann::json& data = object["data"];
    if (StringAt(data, kRootsKey) == desired_pem &&
        StringAt(data, kTrustDomainKey) == options_.trust_domain &&
        StringAt(data, kAddressKey) == options_.control_plane_address) {
      return Result::kInSync;
    }
    set_ours(data);  // other keys, labels and annotations stay as they are
    absl::StatusOr<KubeResponse> put = api_->Call("PUT", item, object.dump());
    if (!put.ok()) return put.status();
    if (put->http_status == 200 || put->http_status == 201) return Result::kUpdated;
    if (put->http_status == 409) {  // resourceVersion moved on: read again
      absl::MutexLock lock(&mu_);
      ++stats_.conflicts;
      continue;
    }
    return HttpError(put->http_status, absl::StrCat("updating ConfigMap ", ns, "/", name),
                     put->body, "`update configmaps` on trellis-mesh");
  }
  return absl::AbortedError(absl::StrCat("ConfigMap ", ns, "/", name, ": still conflicting after ",
                                         kAttempts, " attempts; retrying on the next pass"));
}

absl::StatusOr<MeshConfigMapSync::Result> MeshConfigMapSync::ReconcileWebhook(
    const std::string& desired_pem) {
  const std::string name = options_.webhook_configuration;
  const std::string item =
      absl::StrCat("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/", name);
  const std::string ca_bundle = absl::Base64Escape(desired_pem);
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    absl::StatusOr<KubeResponse> got = api_->Call("GET", item, "");
    if (!got.ok()) return got.status();
    if (got->http_status == 404) {
      return absl::NotFoundError(
          absl::StrCat("MutatingWebhookConfiguration ", name,
                       " does not exist: apply k8s/ (or fix --webhook_configuration)"));
    }
    if (got->http_status != 200) {
      return HttpError(got->http_status,
                       absl::StrCat("reading MutatingWebhookConfiguration ", name), got->body,
                       "`get mutatingwebhookconfigurations` on " + name);
    }
    nlohmann::json object = nlohmann::json::parse(got->body, nullptr, /*allow_exceptions=*/false);
    if (!object.is_object() || !object.contains("webhooks") || !object["webhooks"].is_array()) {
      return absl::UnavailableError(absl::StrCat("reading MutatingWebhookConfiguration ", name,
                                                 ": the answer has no webhooks list"));
    }
    bool changed = false;
    for (nlohmann::json& webhook : object["webhooks"]) {
      if (!webhook.is_object()) continue;
      if (!webhook.contains("clientConfig") || !webhook["clientConfig"].is_object()) {
        webhook["clientConfig"] = nlohmann::json::object();
      }
      nlohmann::json& client_config = webhook["clientConfig"];
      if (StringAt(client_config, "caBundle") != ca_bundle) {
        client_config["caBundle"] = ca_bundle;
        changed = true;
      }
    }
    if (!changed) return Result::kInSync;
    absl::StatusOr<KubeResponse> put = api_->Call("PUT", item, object.dump());
    if (!put.ok()) return put.status();
    if (put->http_status == 200 || put->http_status == 201) return Result::kUpdated;
    if (put->http_status == 409) {  // the other replica (or kubectl) wrote it: read again
      absl::MutexLock lock(&mu_);
      ++stats_.conflicts;
      continue;
    }
    return HttpError(put->http_status, absl::StrCat("updating MutatingWebhookConfiguration ", name),
                     put->body, "`update mutatingwebhookconfigurations` on " + name);
  }
  return absl::AbortedError(absl::StrCat("MutatingWebhookConfiguration ", name,
                                         ": still conflicting after ", kAttempts,
                                         " attempts; retrying on the next pass"));
}

bool MeshConfigMapSync::ShouldLogFailure(const std::string& what, absl::string_view message,
                                         absl::Time now) {
  auto it = logged_failures_.find(what);
  if (it != logged_failures_.end() && it->second.message == message &&
      now - it->second.at < absl::Minutes(1)) {
    return false;
  }
  logged_failures_[what] = LoggedFailure{std::string(message), now};
  return true;
}

absl::Status MeshConfigMapSync::SyncOnce() {
  const absl::Time now = options_.clock();
  const auto fail_pass = [&](const absl::Status& status) {
    if (ShouldLogFailure("list", status.message(), now)) {
      log::Error(
          "mesh ConfigMap sync: cannot list the injected namespaces; retrying",
          {{"selector", options_.namespace_selector}, {"error", std::string(status.message())}});
    }
    absl::MutexLock lock(&mu_);
    ++stats_.errors;
    ++stats_.passes_failed;
    return status;
  };
  const std::string pem = roots_pem_();
  if (pem.empty()) {
    // Never publish an empty bundle: proxies would trust nothing.
    return fail_pass(absl::FailedPreconditionError("the live trust bundle is empty"));
  }
  const uint64_t content_hash = absl::HashOf(
      pem, options_.trust_domain, options_.control_plane_address, options_.configmap_name);

  absl::StatusOr<KubeResponse> listed = api_->Call(
      "GET",
      absl::StrCat("/api/v1/namespaces?labelSelector=", QueryEscape(options_.namespace_selector)),
      "");
  if (!listed.ok()) return fail_pass(listed.status());
  if (listed->http_status != 200) {
    return fail_pass(
        HttpError(listed->http_status, "listing namespaces", listed->body, "`list namespaces`"));
  }
  const nlohmann::json list = nlohmann::json::parse(listed->body, nullptr, false);
  if (!list.is_object() || !list.contains("items") || !list["items"].is_array()) {
    return fail_pass(absl::UnavailableError("listing namespaces: the answer is not a list"));
  }
  logged_failures_.erase("list");
  std::vector<std::string> namespaces;
  for (const nlohmann::json& item : list["items"]) {
    if (!item.is_object() || !item.contains("metadata")) continue;
    const std::string name = StringAt(item["metadata"], "name");
    // A terminating namespace refuses new objects; there is nothing left to serve there.
    if (!IsDnsName(name) ||
        (item.contains("status") && StringAt(item["status"], "phase") == "Terminating")) {
      continue;
    }
    namespaces.push_back(name);
  }

  absl::Status first_error;
  uint64_t created = 0, updated = 0, errors = 0;
  absl::flat_hash_set<std::string> seen;
  for (const std::string& ns : namespaces) {
    seen.insert(ns);
    auto known = known_.find(ns);
    if (known != known_.end() && known->second.content_hash == content_hash &&
        now - known->second.checked < options_.resync) {
      continue;
    }
    absl::StatusOr<Result> result = Reconcile(ns, pem);
    if (!result.ok()) {
      ++errors;
      known_.erase(ns);
      if (ShouldLogFailure("namespace/" + ns, result.status().message(), now)) {
        log::Error("mesh ConfigMap sync failed for a namespace; retrying on the next pass",
                   {{"namespace", ns},
                    {"configmap", options_.configmap_name},
                    {"error", std::string(result.status().message())}});
      }
      if (first_error.ok()) first_error = result.status();
      continue;
    }
    known_[ns] = Known{content_hash, now};
    logged_failures_.erase("namespace/" + ns);
    if (*result == Result::kUnmanaged) {
      unmanaged_.insert(ns);
      if (warned_unmanaged_.insert(ns).second) {
        log::Warn(
            "mesh ConfigMap sync: a ConfigMap of that name exists but is not managed by the "
            "control plane, so it is left alone and its roots.crt will NOT follow rotations; "
            "delete it (the control plane recreates it) or add the label to hand it over",
            {{"namespace", ns},
             {"configmap", options_.configmap_name},
             {"label", absl::StrCat(kManagedByLabel, "=", kManagedByValue)}});
      }
      continue;
    }
    unmanaged_.erase(ns);
    warned_unmanaged_.erase(ns);
    if (*result == Result::kCreated) {
      ++created;
      log::Info("mesh ConfigMap created",
                {{"namespace", ns}, {"configmap", options_.configmap_name}});
    } else if (*result == Result::kUpdated) {
      ++updated;
      log::Info("mesh ConfigMap updated",
                {{"namespace", ns}, {"configmap", options_.configmap_name}});
    }
  }
  // Forget namespaces that are gone or no longer labelled.
  absl::erase_if(known_, [&](const auto& kv) { return !seen.contains(kv.first); });
  absl::erase_if(unmanaged_, [&](const std::string& ns) { return !seen.contains(ns); });
  absl::erase_if(warned_unmanaged_, [&](const std::string& ns) { return !seen.contains(ns); });

  // The webhook's caBundle: one GET per pass, so a re-applied placeholder is repaired quickly.
  uint64_t webhook_updates = 0, webhook_errors = 0;
  if (!options_.webhook_configuration.empty()) {
    absl::StatusOr<Result> result = ReconcileWebhook(pem);
    if (!result.ok()) {
      ++webhook_errors;
      if (ShouldLogFailure("webhook", result.status().message(), now)) {
        log::Error("webhook caBundle sync failed; retrying on the next pass",
                   {{"webhook_configuration", options_.webhook_configuration},
                    {"error", std::string(result.status().message())}});
      }
      if (first_error.ok()) first_error = result.status();
    } else {
      logged_failures_.erase("webhook");
    }
    if (result.ok() && *result == Result::kUpdated) {
      ++webhook_updates;
      log::Info("webhook caBundle set to the live trust bundle",
                {{"webhook_configuration", options_.webhook_configuration}});
    }
  }

  absl::MutexLock lock(&mu_);
  stats_.created += created;
  stats_.updated += updated;
  stats_.webhook_updates += webhook_updates;
  stats_.webhook_errors += webhook_errors;
  stats_.errors += errors;
  stats_.namespaces = static_cast<int64_t>(namespaces.size());
  stats_.unmanaged = static_cast<int64_t>(unmanaged_.size());
  if (first_error.ok()) {
    ++stats_.passes_ok;
    stats_.last_success_unix = absl::ToUnixSeconds(options_.clock());
  } else {
    ++stats_.passes_failed;
  }
  return first_error;
}

void MeshConfigMapSync::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable() || stop_) return;
  thread_ = std::thread([this] { Loop(); });
}

void MeshConfigMapSync::Loop() {
  while (true) {
    (void)SyncOnce();  // logs and counts its own failures
    absl::MutexLock lock(&mu_);
    const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&woken), options_.interval);
    if (stop_) return;
    wake_ = false;
  }
}

void MeshConfigMapSync::Notify() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void MeshConfigMapSync::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

MeshConfigMapSyncStats MeshConfigMapSync::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

std::string MeshConfigMapSync::RenderMetrics() const {
  const MeshConfigMapSyncStats s = stats();
  std::string out;
  absl::StrAppend(
      &out,
      "# HELP trellis_mesh_configmap_sync_passes_total Passes over the injected namespaces, by "
      "result.\n# TYPE trellis_mesh_configmap_sync_passes_total counter\n",
      "trellis_mesh_configmap_sync_passes_total{result=\"ok\"} ", s.passes_ok, "\n",
      "trellis_mesh_configmap_sync_passes_total{result=\"error\"} ", s.passes_failed, "\n");
  absl::StrAppend(
      &out,
      "# HELP trellis_mesh_configmap_writes_total Mesh ConfigMaps written, by operation.\n"
      "# TYPE trellis_mesh_configmap_writes_total counter\n",
      "trellis_mesh_configmap_writes_total{operation=\"create\"} ", s.created, "\n",
      "trellis_mesh_configmap_writes_total{operation=\"update\"} ", s.updated, "\n");
  absl::StrAppend(
      &out,
      "# HELP trellis_mesh_configmap_conflicts_total 409 answers (another writer got there "
      "first; retried).\n# TYPE trellis_mesh_configmap_conflicts_total counter\n",
      "trellis_mesh_configmap_conflicts_total ", s.conflicts, "\n");
  absl::StrAppend(&out,
                  "# HELP trellis_mesh_configmap_errors_total Failed namespace lists and namespace "
                  "reconciles.\n# TYPE trellis_mesh_configmap_errors_total counter\n",
                  "trellis_mesh_configmap_errors_total ", s.errors, "\n");
  absl::StrAppend(&out,
                  "# HELP trellis_mesh_configmap_namespaces Namespaces labelled for injection.\n"
                  "# TYPE trellis_mesh_configmap_namespaces gauge\n",
                  "trellis_mesh_configmap_namespaces ", s.namespaces, "\n");
  absl::StrAppend(
      &out,
      "# HELP trellis_mesh_configmap_unmanaged_namespaces Injected namespaces whose ConfigMap of "
      "that name is not managed by the control plane (left alone; will not follow rotations).\n"
      "# TYPE trellis_mesh_configmap_unmanaged_namespaces gauge\n",
      "trellis_mesh_configmap_unmanaged_namespaces ", s.unmanaged, "\n");
  absl::StrAppend(
      &out,
      "# HELP trellis_mesh_configmap_last_success_timestamp_seconds End of the last pass with no "
      "error (0: none yet).\n# TYPE trellis_mesh_configmap_last_success_timestamp_seconds gauge\n",
      "trellis_mesh_configmap_last_success_timestamp_seconds ", s.last_success_unix, "\n",
      "# HELP trellis_webhook_ca_bundle_updates_total caBundle writes to the injection webhook's "
      "configuration, by result.\n# TYPE trellis_webhook_ca_bundle_updates_total counter\n",
      "trellis_webhook_ca_bundle_updates_total{result=\"ok\"} ", s.webhook_updates, "\n",
      "trellis_webhook_ca_bundle_updates_total{result=\"error\"} ", s.webhook_errors, "\n");
  return out;
}

}  // namespace trellis::control_plane::kube
