#pragma once

// Keeps the `trellis-mesh` ConfigMap in every namespace labelled trellis.io/inject=enabled, so
// that injected proxies (which mount it from THEIR namespace) always have the live trust bundle:
// the operator never copies it by hand, and after `trellisctl ca rotate prepare` the new root
// reaches every namespace before any leaf is signed by it (as istiod does with
// istio-ca-root-cert).
//
// Each pass lists the labelled namespaces (one LIST) and reconciles the namespaces whose
// ConfigMap may be out of date: new namespaces, all of them when the desired content changed
// (the bundle rotated), and each one again every `resync` (a deleted or edited copy is repaired).
// Reconciling one namespace: GET the ConfigMap; create it if missing; if it carries our
// managed-by label and one of OUR keys differs, PUT it back with those keys set (other keys and
// labels are kept; the PUT carries the resourceVersion read, so a concurrent edit is a 409, not
// a lost update). A ConfigMap of that name WITHOUT our label belongs to someone else: it is never
// touched, and a warning says how to hand it over. 409s (the other replica won the race) are
// retried at once from a fresh GET, a few times.
//
// With `webhook_configuration` set, each pass also keeps the caBundle of every webhook in that
// MutatingWebhookConfiguration equal to the live trust bundle (as istiod patches its injector's
// caBundle): the API server trusts the control plane's webhook serving certificate from the
// start and across root rotations, with no manual patch, and a re-applied placeholder is
// repaired within one interval.
//
// RBAC this needs (k8s/rbac.yaml): namespaces list; configmaps create, and get/update on
// resourceNames [trellis-mesh] only; mutatingwebhookconfigurations get/update on the one name.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "control-plane/kube/kube_api.h"

namespace trellis::control_plane::kube {

inline constexpr char kManagedByLabel[] = "app.kubernetes.io/managed-by";
inline constexpr char kManagedByValue[] = "trellis-control-plane";

struct MeshConfigMapSyncOptions {
  std::string configmap_name = "trellis-mesh";
  // A label selector (the webhook's namespaceSelector).
  std::string namespace_selector = "trellis.io/inject=enabled";
  // The keys we own, besides roots.crt (the live bundle).
  std::string trust_domain = "cluster.local";
  std::string control_plane_address = "trellis-control-plane.trellis-system.svc:15012";
  // Time between passes (a bundle change wakes the loop at once: Notify()).
  absl::Duration interval = absl::Seconds(5);
  // The MutatingWebhookConfiguration whose caBundles follow the bundle; empty: not managed.
  std::string webhook_configuration;
  // Every namespace's ConfigMap is read again at least this often.
  absl::Duration resync = absl::Minutes(1);
  // Clock (tests inject a fake one).
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

// Counters since start, for /metrics (RenderMetrics) and tests.
struct MeshConfigMapSyncStats {
  uint64_t passes_ok = 0;
  uint64_t passes_failed = 0;
  uint64_t created = 0;
  uint64_t updated = 0;
  uint64_t conflicts = 0;         // 409s answered by the API server (retried)
  uint64_t errors = 0;            // failed namespace reconciles and failed namespace lists
  int64_t namespaces = 0;         // labelled namespaces seen in the last successful list
  int64_t unmanaged = 0;          // of those, holding a ConfigMap of that name that is not ours
  int64_t last_success_unix = 0;  // end of the last pass with no error (0: none yet)
  uint64_t webhook_updates = 0;   // caBundle writes to the webhook configuration
  uint64_t webhook_errors = 0;    // failed webhook caBundle reconciles
};

class MeshConfigMapSync {
 public:
  // `roots_pem` returns the live trust bundle as PEM (called on the sync thread).
  MeshConfigMapSync(MeshConfigMapSyncOptions options, KubeApi* api,
                    std::function<std::string()> roots_pem);
  ~MeshConfigMapSync();  // Stop()s

  // One pass, on the caller's thread. OK if every labelled namespace is in sync or held by a
  // ConfigMap that is not ours; otherwise the first error (every namespace is still tried).
  absl::Status SyncOnce();

  // Runs SyncOnce every `interval` on its own thread, and at once after Notify().
  void Start();
  void Stop();  // idempotent; returns once the thread has exited
  // Wakes the loop (e.g. the trust bundle changed). Cheap; safe from any thread.
  void Notify();

  MeshConfigMapSyncStats stats() const;
  // Prometheus text exposition of stats() (trellis_mesh_configmap_*).
  std::string RenderMetrics() const;

 private:
  enum class Result { kInSync, kCreated, kUpdated, kUnmanaged };
  absl::StatusOr<Result> Reconcile(const std::string& ns, const std::string& desired_pem);
  // The webhook configuration's caBundles: kInSync or kUpdated.
  absl::StatusOr<Result> ReconcileWebhook(const std::string& desired_pem);
  void Loop();
  // Whether to log a failure of `what` now: a new message, or the same one a minute later (a
  // broken namespace would otherwise repeat its line every pass). Success forgets `what`.
  bool ShouldLogFailure(const std::string& what, absl::string_view message, absl::Time now);

  const MeshConfigMapSyncOptions options_;
  KubeApi* const api_;
  const std::function<std::string()> roots_pem_;

  // Sync-thread state (SyncOnce is not reentrant).
  struct Known {
    uint64_t content_hash = 0;  // of the desired content last found in place
    absl::Time checked;
  };
  absl::flat_hash_map<std::string, Known> known_;
  absl::flat_hash_set<std::string> warned_unmanaged_;
  absl::flat_hash_set<std::string> unmanaged_;
  struct LoggedFailure {
    std::string message;
    absl::Time at;
  };
  absl::flat_hash_map<std::string, LoggedFailure> logged_failures_;

  mutable absl::Mutex mu_;
  MeshConfigMapSyncStats stats_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace trellis::control_plane::kube
