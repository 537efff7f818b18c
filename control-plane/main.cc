// trellis-control-plane: the mesh's certificate authority. Wires the pieces together and owns
// the process lifecycle (signals, reload loop, graceful shutdown); all logic lives in libraries.

#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/admin/http_admin.h"
#include "common/identity/certificate.h"
#include "common/log/json_log.h"
#include "common/process/grpc_logs.h"
#include "common/process/startup.h"
#include "common/tls/deny_list.h"
#include "control-plane/auth/join_token_authenticator.h"
#include "control-plane/auth/kubernetes_jwt_authenticator.h"
#include "control-plane/auth/tokenreview_authenticator.h"
#include "control-plane/inject/webhook_server.h"
#include "control-plane/kube/kube_api.h"
#include "control-plane/kube/mesh_configmap_sync.h"
#include "control-plane/kube/server_version.h"
#include "control-plane/server/admission.h"
#include "control-plane/server/ca_manager.h"
#include "control-plane/server/identity_service.h"
#include "control-plane/server/mesh_state.h"
#include "control-plane/server/metrics.h"
#include "control-plane/server/serving_identity.h"

ABSL_FLAG(std::string, grpc_address, "0.0.0.0:15012",
          "Where the Identity gRPC service (TLS) listens, host:port; port 0 picks a free port "
          "(printed in the 'listening' log line).");
ABSL_FLAG(std::string, admin_address, "0.0.0.0:15014",
          "Where the plain-HTTP operator endpoints listen: /metrics (Prometheus), /ready, /live.");
ABSL_FLAG(std::string, ca_dir, "",
          "Required. Directory with ca.crt, ca.key (mode 0600), optional chain.crt, and roots.crt, "
          "as mounted from the CA Secret (trellisctl ca init writes it). Re-read every second "
          "and on SIGHUP.");
ABSL_FLAG(std::string, trust_domain, "cluster.local", "The mesh's SPIFFE trust domain.");
ABSL_FLAG(std::string, state_dir, "",
          "Writable directory for the control plane's own serving certificate and key "
          "(an emptyDir in Kubernetes). Default: a new directory under $TMPDIR.");
ABSL_FLAG(std::string, dns_names,
          "trellis-control-plane.trellis-system.svc,trellis-control-plane.trellis-system.svc."
          "cluster.local,localhost",
          "Comma-separated DNS names in the serving certificate; proxies check one of them.");
ABSL_FLAG(std::string, serving_spiffe_id, "",
          "SPIFFE ID of the serving certificate. Default: "
          "spiffe://<trust_domain>/ns/trellis-system/sa/trellis-control-plane.");
ABSL_FLAG(std::string, deny_list_file, "",
          "Revocation deny-list the operator edits: one 'serial:<hex>' or 'spiffe://...' per "
          "line, '#' comments. Re-read when it changes and pushed to every proxy.");
ABSL_FLAG(std::string, jwks_file, "",
          "Verify Kubernetes service-account tokens offline against this JWKS file (the API "
          "server's /openid/v1/jwks). Re-read when it changes.");
ABSL_FLAG(std::string, jwt_issuers, "https://kubernetes.default.svc.cluster.local",
          "Comma-separated accepted 'iss' values for offline token verification.");
ABSL_FLAG(bool, tokenreview, false,
          "Verify Kubernetes service-account tokens with the TokenReview API of the cluster "
          "(in-cluster configuration, or --kube_api_server/--kube_ca_file/--kube_token_file).");
ABSL_FLAG(std::string, kube_api_server, "",
          "API server URL for TokenReview and --mesh_configmap_sync, e.g. "
          "https://10.96.0.1:443. Default: in-cluster.");
ABSL_FLAG(std::string, kube_ca_file, "",
          "CA bundle for the API server (TokenReview, --mesh_configmap_sync).");
ABSL_FLAG(std::string, kube_token_file, "",
          "The control plane's own bearer token for the API server (TokenReview, "
          "--mesh_configmap_sync); re-read on use.");
ABSL_FLAG(std::string, audience, "trellis",
          "Audience a Kubernetes service-account token must carry.");
ABSL_FLAG(std::string, join_tokens_file, "",
          "Join tokens for workloads outside Kubernetes (mode 0600; trellisctl join-token "
          "create). Re-read when it changes.");
ABSL_FLAG(absl::Duration, default_ttl, absl::Hours(1), "Workload certificate lifetime by default.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Minutes(30),
          "Close each proxy's gRPC connection this long after it opened (GOAWAY, then 10 s "
          "grace), so that Watch streams and renewals spread over replicas added since; 0: "
          "never.");
ABSL_FLAG(absl::Duration, min_ttl, absl::Minutes(1),
          "Shortest lifetime a request may ask for (down to 1s, for tests).");
ABSL_FLAG(absl::Duration, max_ttl, absl::Hours(24),
          "Longest lifetime a request may ask for (at most 24h).");
ABSL_FLAG(absl::Duration, backdate, absl::Minutes(5),
          "NotBefore is set this far in the past, for clock skew between hosts.");
ABSL_FLAG(absl::Duration, renew_spread, absl::Minutes(5),
          "After the signing CA changes, proxies are told to renew within this window.");
ABSL_FLAG(int, max_concurrent_signings, 0,
          "Issuances processed at once (token and CSR checks, signing), each on one of as many "
          "worker threads; 0 means twice the number of usable cores. Callers beyond that wait in "
          "a queue (no thread each) for a bounded time, then get UNAVAILABLE with a "
          "retry-after-ms hint.");
ABSL_FLAG(absl::Duration, renewal_queue_wait, absl::Milliseconds(250),
          "How long a renewal may wait for a free slot before it is told to come back later.");
ABSL_FLAG(absl::Duration, first_issuance_queue_wait, absl::Seconds(2),
          "How long a first issuance may wait for a free slot (they are served before renewals).");
ABSL_FLAG(int, reserved_first_issuance_slots, 1,
          "Of those, slots only first issuances may use (renewal storms cannot starve new pods).");
ABSL_FLAG(double, per_identity_rate, 1.0, "Issuances per second allowed per identity.");
ABSL_FLAG(double, per_identity_burst, 5.0, "Burst allowed per identity above that rate.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM: stop accepting, close Watch streams, let calls in flight finish this long.");
ABSL_FLAG(std::string, webhook_address, "",
          "Where the sidecar-injection admission webhook (HTTPS, POST /inject) listens, "
          "host:port, e.g. 0.0.0.0:15017; empty disables it. It serves the control plane's own "
          "serving certificate, so the MutatingWebhookConfiguration's caBundle is the mesh roots.");
ABSL_FLAG(std::string, inject_proxy_image, "ghcr.io/trellis-mesh/trellis-proxy:latest",
          "Image of the injected trellis-proxy sidecar.");
ABSL_FLAG(std::string, inject_init_image, "ghcr.io/trellis-mesh/trellis-init:latest",
          "Image of the injected trellis-init container.");
ABSL_FLAG(std::string, inject_sidecar_mode, "auto",
          "How the webhook injects the proxy: native (an init container with restartPolicy: "
          "Always; Kubernetes 1.29+), classic (a regular container; any version), or auto: "
          "native if the API server (GET /version, through the --kube_* or in-cluster "
          "configuration) is 1.29 or newer, else classic; classic if it cannot be asked. A pod's "
          "trellis.io/sidecar-mode annotation overrides it.");
ABSL_FLAG(std::string, inject_failure_policy, "Fail",
          "Fail or Ignore, as the webhook configuration's failurePolicy: a pod that cannot be "
          "injected is refused (Fail) or admitted unmeshed with a warning (Ignore).");
ABSL_FLAG(bool, mesh_configmap_sync, false,
          "Keep the mesh ConfigMap (--mesh_configmap_name: roots.crt = the live trust bundle, "
          "trust-domain, control-plane-address) in every namespace labelled "
          "trellis.io/inject=enabled, through the Kubernetes API (in-cluster configuration, or "
          "--kube_api_server/--kube_ca_file/--kube_token_file). Needs RBAC: namespaces list; "
          "configmaps create, get/update (k8s/rbac.yaml).");
ABSL_FLAG(std::string, mesh_configmap_name, "trellis-mesh",
          "Name of the mesh ConfigMap injected proxies mount from their namespace.");
ABSL_FLAG(std::string, webhook_configuration, "",
          "With --mesh_configmap_sync: the MutatingWebhookConfiguration (e.g. "
          "trellis-sidecar-injector) whose webhooks' caBundle the control plane keeps equal to "
          "the live trust bundle, so the API server trusts its webhook certificate across root "
          "rotations with no manual patch; empty: left alone.");
ABSL_FLAG(absl::Duration, mesh_configmap_interval, absl::Seconds(5),
          "How often --mesh_configmap_sync looks for newly labelled namespaces (a trust bundle "
          "change is written at once; every copy is re-read each minute).");
ABSL_FLAG(std::string, mesh_control_plane_address, "trellis-control-plane.trellis-system.svc:15012",
          "The control-plane-address written into the mesh ConfigMap.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error.");

namespace trellis::control_plane {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<bool> g_reload{false};

void OnSignal(int signal) {
  if (signal == SIGHUP) {
    g_reload = true;
  } else {
    g_stop = true;
  }
}

[[noreturn]] void Die(absl::string_view what, const absl::Status& status) {
  log::Error(what, {{"error", std::string(status.message())}});
  // _exit, not exit: threads already started (workers, file watchers, gRPC) may still be
  // running, and static destructors run under them crash the process instead of exiting 1.
  std::fflush(nullptr);
  _exit(1);
}

// A client for the cluster's API server: --kube_api_server/--kube_ca_file/--kube_token_file when
// set, else the pod's in-cluster configuration.
absl::StatusOr<std::unique_ptr<kube::KubeApiClient>> MakeKubeApiClient() {
  kube::KubeApiConfig config;
  if (absl::GetFlag(FLAGS_kube_api_server).empty()) {
    absl::StatusOr<kube::KubeApiConfig> in_cluster = kube::InClusterConfig();
    if (!in_cluster.ok()) return in_cluster.status();
    config = *std::move(in_cluster);
  } else {
    config.server_url = absl::GetFlag(FLAGS_kube_api_server);
    config.ca_file = absl::GetFlag(FLAGS_kube_ca_file);
    config.token_file = absl::GetFlag(FLAGS_kube_token_file);
  }
  return kube::KubeApiClient::Create(std::move(config));
}

// Watches the deny-list file and publishes it; keeps the last good list on a bad edit.
class DenyListFile {
 public:
  DenyListFile(std::string path, MeshState* mesh, ControlPlaneMetrics* metrics)
      : path_(std::move(path)), mesh_(mesh), metrics_(metrics) {}

  absl::Status Reload(bool force) {
    if (path_.empty()) return absl::OkStatus();
    struct stat st;
    std::string stamp = "missing";
    if (stat(path_.c_str(), &st) == 0) {
      stamp =
          absl::StrCat(st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
    }
    if (!force && stamp == stamp_) return absl::OkStatus();
    stamp_ = stamp;
    absl::StatusOr<std::string> text = identity::ReadFileToString(path_);
    absl::StatusOr<tls::DenyList> list =
        text.ok() ? tls::DenyList::Parse(*text) : absl::StatusOr<tls::DenyList>(text.status());
    if (!list.ok()) {
      metrics_->CountReload(/*ca=*/false, /*ok=*/false);
      log::Error("deny-list reload failed; the previous list stays in force",
                 {{"file", path_}, {"error", std::string(list.status().message())}});
      return list.status();
    }
    metrics_->CountReload(/*ca=*/false, /*ok=*/true);
    metrics_->deny_list_entries = static_cast<int64_t>(list->size());
    log::Info("deny-list loaded", {{"file", path_},
                                   {"serials", list->serials().size()},
                                   {"spiffe_ids", list->spiffe_ids().size()}});
    mesh_->SetDenyList(*std::move(list));
    return absl::OkStatus();
  }

 private:
  const std::string path_;
  MeshState* const mesh_;
  ControlPlaneMetrics* const metrics_;
  std::string stamp_;
};

std::string MakeStateDir() {
  std::string dir = absl::GetFlag(FLAGS_state_dir);
  if (!dir.empty()) return dir;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/trellis-cp.XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    Die("cannot create a state directory", absl::InternalError(pattern));
  }
  return pattern;
}

int Run() {
  log::SetComponent("control-plane");
  log::Level level;
  if (!log::ParseLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    Die("bad --log_level", absl::InvalidArgumentError("use debug, info, warn or error"));
  }
  log::SetMinLevel(level);
  if (absl::GetFlag(FLAGS_ca_dir).empty()) {
    Die("--ca_dir is required",
        absl::InvalidArgumentError("point it at the CA directory (trellisctl ca init --dir DIR)"));
  }
  const std::string trust_domain = absl::GetFlag(FLAGS_trust_domain);
  if (absl::Status s = identity::ValidateTrustDomain(trust_domain); !s.ok()) {
    Die("bad --trust_domain", s);
  }

  ControlPlaneMetrics metrics;
  // The bundle is replaced by the CA manager's first load below.
  CaManager::Options ca_options;
  ca_options.ca_dir = absl::GetFlag(FLAGS_ca_dir);
  ca_options.signer.default_ttl = absl::GetFlag(FLAGS_default_ttl);
  ca_options.signer.min_ttl = absl::GetFlag(FLAGS_min_ttl);
  ca_options.signer.max_ttl = absl::GetFlag(FLAGS_max_ttl);
  ca_options.signer.backdate = absl::GetFlag(FLAGS_backdate);
  ca_options.renew_spread = absl::GetFlag(FLAGS_renew_spread);
  absl::StatusOr<ca::CaFiles> first = ca::LoadCaFiles(ca_options.ca_dir);
  if (!first.ok()) Die("cannot load the CA", first.status());
  MeshState mesh(first->roots, tls::DenyList());
  absl::StatusOr<std::unique_ptr<CaManager>> ca = CaManager::Create(ca_options, &mesh, &metrics);
  if (!ca.ok()) Die("cannot load the CA", ca.status());
  DenyListFile deny_list(absl::GetFlag(FLAGS_deny_list_file), &mesh, &metrics);
  if (absl::Status s = deny_list.Reload(true); !s.ok()) Die("cannot load the deny-list", s);

  // Authenticators.
  std::unique_ptr<Authenticator> kubernetes;
  if (!absl::GetFlag(FLAGS_jwks_file).empty() && absl::GetFlag(FLAGS_tokenreview)) {
    Die("choose one way to verify Kubernetes tokens",
        absl::InvalidArgumentError("--jwks_file and --tokenreview are mutually exclusive"));
  }
  if (!absl::GetFlag(FLAGS_jwks_file).empty()) {
    KubernetesJwtAuthenticatorOptions options;
    options.trust_domain = trust_domain;
    options.audience = absl::GetFlag(FLAGS_audience);
    options.jwks_path = absl::GetFlag(FLAGS_jwks_file);
    options.issuers = absl::StrSplit(absl::GetFlag(FLAGS_jwt_issuers), ',', absl::SkipEmpty());
    options.on_reload = [path = options.jwks_path](const absl::Status& status) {
      if (status.ok()) {
        log::Info("JWKS reloaded", {{"file", path}});
      } else {
        log::Error("JWKS reload failed; the previous keys stay in use",
                   {{"file", path}, {"error", std::string(status.message())}});
      }
    };
    auto created = KubernetesJwtAuthenticator::Create(std::move(options));
    if (!created.ok()) Die("cannot set up offline token verification", created.status());
    kubernetes = *std::move(created);
  } else if (absl::GetFlag(FLAGS_tokenreview)) {
    absl::StatusOr<std::unique_ptr<TokenReviewAuthenticator>> created;
    if (absl::GetFlag(FLAGS_kube_api_server).empty()) {
      absl::StatusOr<TokenReviewOptions> options = TokenReviewAuthenticator::InClusterOptions();
      if (!options.ok()) Die("cannot read the in-cluster configuration", options.status());
      options->audience = absl::GetFlag(FLAGS_audience);
      options->trust_domain = trust_domain;
      created = TokenReviewAuthenticator::Create(*std::move(options));
    } else {
      TokenReviewOptions options;
      options.api_server_url = absl::GetFlag(FLAGS_kube_api_server);
      options.ca_file = absl::GetFlag(FLAGS_kube_ca_file);
      options.token_file = absl::GetFlag(FLAGS_kube_token_file);
      options.audience = absl::GetFlag(FLAGS_audience);
      options.trust_domain = trust_domain;
      created = TokenReviewAuthenticator::Create(std::move(options));
    }
    if (!created.ok()) Die("cannot set up TokenReview", created.status());
    kubernetes = *std::move(created);
  }
  std::unique_ptr<JoinTokenAuthenticator> join_tokens;
  if (!absl::GetFlag(FLAGS_join_tokens_file).empty()) {
    JoinTokenAuthenticatorOptions options;
    options.tokens_file = absl::GetFlag(FLAGS_join_tokens_file);
    options.on_reload = [path = options.tokens_file](const absl::Status& status) {
      if (status.ok()) {
        log::Info("join tokens reloaded", {{"file", path}});
      } else {
        log::Error("join tokens reload failed; the previous tokens stay in use",
                   {{"file", path}, {"error", std::string(status.message())}});
      }
    };
    auto created = JoinTokenAuthenticator::Create(std::move(options));
    if (!created.ok()) Die("cannot load the join tokens", created.status());
    join_tokens = *std::move(created);
  }

  AdmissionOptions admission_options;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  admission_options.max_concurrent = absl::GetFlag(FLAGS_max_concurrent_signings) > 0
                                         ? absl::GetFlag(FLAGS_max_concurrent_signings)
                                         : 2 * cores;
  admission_options.renewal_wait = absl::GetFlag(FLAGS_renewal_queue_wait);
  admission_options.first_issuance_wait = absl::GetFlag(FLAGS_first_issuance_queue_wait);
  admission_options.reserved_for_first_issuance =
      absl::GetFlag(FLAGS_reserved_first_issuance_slots);
  admission_options.per_identity_rate_per_second = absl::GetFlag(FLAGS_per_identity_rate);
  admission_options.per_identity_burst = absl::GetFlag(FLAGS_per_identity_burst);
  IssuanceAdmission admission(admission_options);

  IdentityServiceOptions service_options;
  service_options.trust_domain = trust_domain;
  service_options.kubernetes_authenticator = kubernetes.get();
  service_options.join_token_authenticator = join_tokens.get();
  IdentityService service(service_options, ca->get(), &mesh, &admission, &metrics);

  // Our own serving certificate, from our own CA, rotated through files gRPC watches.
  std::string serving_id_text = absl::GetFlag(FLAGS_serving_spiffe_id);
  if (serving_id_text.empty()) {
    serving_id_text =
        absl::StrCat("spiffe://", trust_domain, "/ns/trellis-system/sa/trellis-control-plane");
  }
  absl::StatusOr<identity::SpiffeId> serving_id = identity::SpiffeId::Parse(serving_id_text);
  if (!serving_id.ok()) Die("bad --serving_spiffe_id", serving_id.status());
  ServingIdentity serving(
      {MakeStateDir(), *serving_id,
       absl::StrSplit(absl::GetFlag(FLAGS_dns_names), ',', absl::SkipEmpty()), absl::Hours(24)},
      ca->get());
  if (absl::Status s = serving.Refresh(absl::Now()); !s.ok()) {
    Die("cannot issue the serving certificate", s);
  }

  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      serving.key_path(), serving.cert_path(), /*refresh_interval_sec=*/1);
  grpc::experimental::TlsServerCredentialsOptions tls_options(provider);
  tls_options.watch_identity_key_cert_pairs();
  // Ask for a client certificate but verify it in the service, against the live bundle and
  // deny-list (renewal); token callers present none.
  tls_options.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_grpc_address),
                           grpc::experimental::TlsServerCredentials(tls_options), &grpc_port);
  builder.RegisterService(&service);
  PrepareIssuanceProcess();
  const absl::Duration max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  if (max_connection_age < absl::ZeroDuration() || max_connection_age > absl::Hours(24 * 24)) {
    Die("bad --max_connection_age",
        absl::InvalidArgumentError("use 0 (never) or a duration up to 24 days, e.g. 30m"));
  }
  SetMaxConnectionAge(&builder, max_connection_age, absl::Seconds(10));
  // Detect dead proxies on idle Watch streams; allow their keepalive pings.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    Die("cannot start the gRPC server",
        absl::UnavailableError(
            absl::StrCat("could not listen on ", absl::GetFlag(FLAGS_grpc_address))));
  }
  server->GetHealthCheckService()->SetServingStatus(true);

  // The mesh ConfigMap in every injected namespace, following the live bundle.
  std::unique_ptr<kube::KubeApiClient> kube_api;
  std::unique_ptr<kube::MeshConfigMapSync> mesh_configmaps;
  int bundle_subscription = 0;
  if (absl::GetFlag(FLAGS_mesh_configmap_sync)) {
    absl::StatusOr<std::unique_ptr<kube::KubeApiClient>> client = MakeKubeApiClient();
    if (!client.ok())
      Die("--mesh_configmap_sync: no Kubernetes API configuration", client.status());
    kube_api = *std::move(client);
    kube::MeshConfigMapSyncOptions sync_options;
    sync_options.configmap_name = absl::GetFlag(FLAGS_mesh_configmap_name);
    sync_options.trust_domain = trust_domain;
    sync_options.control_plane_address = absl::GetFlag(FLAGS_mesh_control_plane_address);
    sync_options.interval = absl::GetFlag(FLAGS_mesh_configmap_interval);
    sync_options.webhook_configuration = absl::GetFlag(FLAGS_webhook_configuration);
    if (sync_options.interval <= absl::ZeroDuration()) {
      Die("bad --mesh_configmap_interval", absl::InvalidArgumentError("must be positive"));
    }
    mesh_configmaps = std::make_unique<kube::MeshConfigMapSync>(
        sync_options, kube_api.get(), [&mesh] { return mesh.Current()->bundle.ToPem(); });
    // A rotation reaches every namespace at once, not at the next interval.
    std::shared_ptr<const MeshSnapshot> unused;
    kube::MeshConfigMapSync* sync = mesh_configmaps.get();
    bundle_subscription = mesh.Subscribe([sync](auto) { sync->Notify(); }, &unused);
    mesh_configmaps->Start();
    log::Info("mesh ConfigMap sync started",
              {{"configmap", sync_options.configmap_name},
               {"namespaces", sync_options.namespace_selector},
               {"interval", absl::FormatDuration(sync_options.interval)}});
  }

  std::unique_ptr<inject::WebhookServer> webhook;
  if (const std::string address = absl::GetFlag(FLAGS_webhook_address); !address.empty()) {
    inject::WebhookOptions webhook_options;
    webhook_options.inject.proxy_image = absl::GetFlag(FLAGS_inject_proxy_image);
    webhook_options.inject.init_image = absl::GetFlag(FLAGS_inject_init_image);
    const std::string mode = absl::GetFlag(FLAGS_inject_sidecar_mode);
    if (mode == "classic") {
      webhook_options.inject.classic = true;
    } else if (mode == "auto") {
      // Asked once: an API server upgrade restarts control planes anyway (rolling update).
      // The ConfigMap sync's client when there is one; a client of its own otherwise.
      absl::StatusOr<kube::ServerVersion> version =
          absl::InternalError("no Kubernetes API configuration");
      if (kube_api != nullptr) {
        version = kube::FetchServerVersion(*kube_api);
      } else if (absl::StatusOr<std::unique_ptr<kube::KubeApiClient>> client = MakeKubeApiClient();
                 client.ok()) {
        version = kube::FetchServerVersion(**client);
      } else {
        version = client.status();
      }
      if (version.ok()) {
        webhook_options.inject.classic = !version->SupportsNativeSidecars();
        log::Info("injection: sidecar mode chosen from the API server's version",
                  {{"kubernetes_version", absl::StrCat(version->major, ".", version->minor)},
                   {"sidecar_mode", webhook_options.inject.classic ? "classic" : "native"}});
      } else {
        webhook_options.inject.classic = true;
        log::Warn(
            "injection: cannot read the API server's version; injecting classic sidecars, "
            "which work on every version (set --inject_sidecar_mode=native to choose)",
            {{"error", std::string(version.status().message())}});
      }
    } else if (mode != "native") {
      Die("bad --inject_sidecar_mode",
          absl::InvalidArgumentError("must be auto, native or classic"));
    }
    const std::string policy = absl::GetFlag(FLAGS_inject_failure_policy);
    if (policy != "Fail" && policy != "Ignore") {
      Die("bad --inject_failure_policy", absl::InvalidArgumentError("must be Fail or Ignore"));
    }
    webhook_options.failure_policy =
        policy == "Ignore" ? inject::FailurePolicy::kIgnore : inject::FailurePolicy::kFail;
    std::string webhook_host;
    int webhook_port = 0;
    if (absl::Status s = admin::ParseHostPort(address, &webhook_host, &webhook_port); !s.ok()) {
      Die("bad --webhook_address", s);
    }
    webhook = std::make_unique<inject::WebhookServer>(webhook_options, serving.cert_path(),
                                                      serving.key_path());
    absl::StatusOr<int> bound_webhook = webhook->Start(webhook_host, webhook_port);
    if (!bound_webhook.ok()) Die("cannot start the injection webhook", bound_webhook.status());
    log::Info("injection webhook listening", {{"webhook_port", *bound_webhook}});
  }

  std::atomic<bool> ready{true};
  admin::HttpAdmin admin_http;
  admin_http.Handle("/metrics", [&] {
    std::string text = metrics.Render();
    text += admission.RenderMetrics();
    if (mesh_configmaps) text += mesh_configmaps->RenderMetrics();
    if (webhook) text += webhook->RenderMetrics();
    return admin::HttpAdmin::Response{200, "text/plain; version=0.0.4", std::move(text)};
  });
  admin_http.Handle("/ready", [&] {
    return ready ? admin::HttpAdmin::Response{200, "text/plain", "ready\n"}
                 : admin::HttpAdmin::Response{503, "text/plain", "shutting down\n"};
  });
  admin_http.Handle("/live", [] { return admin::HttpAdmin::Response{200, "text/plain", "ok\n"}; });
  std::string admin_host;
  int admin_port = 0;
  if (absl::Status s =
          admin::ParseHostPort(absl::GetFlag(FLAGS_admin_address), &admin_host, &admin_port);
      !s.ok()) {
    Die("bad --admin_address", s);
  }
  absl::StatusOr<int> bound_admin = admin_http.Start(admin_host, admin_port);
  if (!bound_admin.ok()) Die("cannot start the admin endpoint", bound_admin.status());

  log::Info("listening", {{"grpc_port", grpc_port},
                          {"admin_port", *bound_admin},
                          {"trust_domain", trust_domain},
                          {"kubernetes_auth", kubernetes ? std::string(kubernetes->name()) : "off"},
                          {"join_tokens", join_tokens != nullptr}});

  // The control thread: reload files every second (and at once on SIGHUP) until told to stop.
  while (!g_stop) {
    for (int i = 0; i < 10 && !g_stop && !g_reload; ++i) absl::SleepFor(absl::Milliseconds(100));
    const bool forced = g_reload.exchange(false);
    if (forced) log::Info("SIGHUP: reloading the CA and the deny-list");
    (void)(*ca)->Reload(forced);
    (void)deny_list.Reload(forced);
    if (join_tokens != nullptr) (void)join_tokens->Reload();
    if (absl::Status s = serving.Refresh(absl::Now()); !s.ok()) {
      log::Error("cannot refresh the serving certificate", {{"error", std::string(s.message())}});
    }
  }

  log::Info("SIGTERM: shutting down",
            {{"grace", absl::FormatDuration(absl::GetFlag(FLAGS_shutdown_grace))}});
  ready = false;
  server->GetHealthCheckService()->SetServingStatus(false);
  service.CloseWatches();
  server->Shutdown(std::chrono::system_clock::now() +
                   absl::ToChronoSeconds(absl::GetFlag(FLAGS_shutdown_grace)));
  if (webhook) webhook->Stop();
  if (mesh_configmaps) {
    mesh.Unsubscribe(bundle_subscription);
    mesh_configmaps->Stop();
  }
  admin_http.Stop();
  log::Info("stopped");
  return 0;
}

}  // namespace
}  // namespace trellis::control_plane

int main(int argc, char** argv) {
  trellis::process::RouteGrpcLogsToJson();
  if (!trellis::process::ParseFlagsOrPrintHelp(
          argc, argv,
          "the Trellis mesh certificate authority.\n"
          "Issues short-lived SPIFFE workload certificates over gRPC "
          "(trellis.identity.v1.Identity)\n"
          "and streams the trust bundle and revocation deny-list to every proxy.\n\n"
          "Usage: trellis-control-plane --ca_dir=DIR [flags]\n"
          "       trellis-control-plane --flagfile=FILE   (a config file: one --flag=value per "
          "line)\n"
          "Signals: SIGHUP reloads the CA, deny-list and join tokens now; SIGTERM shuts down "
          "gracefully.")) {
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction action = {};
  action.sa_handler = trellis::control_plane::OnSignal;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGHUP, &action, nullptr);
  return trellis::control_plane::Run();
}
