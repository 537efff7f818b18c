#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "control-plane/ca/signer.h"
#include "control-plane/server/mesh_state.h"
#include "control-plane/server/metrics.h"

namespace trellis::control_plane {

// Owns the live signing CA: loads the CA directory (see control-plane/ca/ca_files.h), and on
// Reload() (called every second and on SIGHUP) notices changed files, loads and validates them
// whole, and only then swaps the signer and publishes the new trust bundle to every watcher. A
// broken update is logged and counted, and the previous CA keeps signing.
//
// When the signing CA changes (a rotation's "switch" step), watchers are told to renew before
// now + `renew_spread`, so leaves from the old CA are replaced soon rather than at expiry.
class CaManager {
 public:
  struct Options {
    std::string ca_dir;
    ca::LocalSignerOptions signer;
    absl::Duration renew_spread = absl::Minutes(5);
  };

  // Loads the CA once; an error here is fatal for the caller (no CA, no control plane).
  static absl::StatusOr<std::unique_ptr<CaManager>> Create(Options options, MeshState* mesh,
                                                           ControlPlaneMetrics* metrics);

  // The signer to use for one issuance; callers keep the shared_ptr for the duration of it.
  std::shared_ptr<ca::LocalSigner> signer() const;

  // Reloads if any CA file changed since the last load (or unconditionally with `force`).
  // Returns OK if nothing changed or the reload succeeded.
  absl::Status Reload(bool force = false);

 private:
  CaManager(Options options, MeshState* mesh, ControlPlaneMetrics* metrics)
      : options_(std::move(options)), mesh_(mesh), metrics_(metrics) {}

  std::string FilesStamp() const;
  void UpdateGauges(const ca::LocalSigner& signer);

  const Options options_;
  MeshState* const mesh_;
  ControlPlaneMetrics* const metrics_;

  absl::Mutex reload_mu_;  // one reload at a time
  std::string stamp_ ABSL_GUARDED_BY(reload_mu_);

  mutable absl::Mutex mu_;
  std::shared_ptr<ca::LocalSigner> signer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace trellis::control_plane
