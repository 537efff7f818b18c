#pragma once

// The API server's version (GET /version, readable by every identity) and what it implies for
// injection: native sidecars (init containers with restartPolicy: Always) exist from 1.29 on
// (beta, on by default); an older API server refuses a pod that has one, so the webhook must
// inject classic sidecars there.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "control-plane/kube/kube_api.h"

namespace trellis::control_plane::kube {

struct ServerVersion {
  int major = 0;
  int minor = 0;  // "29+" (as managed clusters report it) reads as 29
  bool SupportsNativeSidecars() const { return major > 1 || (major == 1 && minor >= 29); }
};

// Parses the body of GET /version ({"major": "1", "minor": "29+", ...}); InvalidArgument saying
// which field is wrong.
absl::StatusOr<ServerVersion> ParseServerVersion(absl::string_view body);

// Asks the API server; UNAVAILABLE (with the cause) if it does not answer 200 with a version.
absl::StatusOr<ServerVersion> FetchServerVersion(KubeApi& api);

}  // namespace trellis::control_plane::kube
