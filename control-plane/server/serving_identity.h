#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "control-plane/server/ca_manager.h"

namespace trellis::control_plane {

// The control plane's own serving certificate, issued by its own CA for its DNS names and SPIFFE
// ID, written to `dir`/serving.{crt,key} for gRPC's file-watching certificate provider. Refresh()
// re-issues it at half its lifetime or when the signing CA changed, so the endpoint's
// certificate rotates like any workload's, with no restart.
class ServingIdentity {
 public:
  struct Options {
    std::string dir;
    identity::SpiffeId spiffe_id;
    std::vector<std::string> dns_names;
    absl::Duration ttl = absl::Hours(24);
  };

  ServingIdentity(Options options, CaManager* ca) : options_(std::move(options)), ca_(ca) {}

  std::string cert_path() const { return options_.dir + "/serving.crt"; }
  std::string key_path() const { return options_.dir + "/serving.key"; }

  // Issues a new certificate if none exists yet, half its lifetime has passed, or the signing CA
  // is not the one that issued it.
  absl::Status Refresh(absl::Time now);

 private:
  const Options options_;
  CaManager* const ca_;
  absl::Mutex mu_;
  absl::Time refresh_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string issuer_serial_ ABSL_GUARDED_BY(mu_);
};

}  // namespace trellis::control_plane
