#pragma once

// Root rotation of a CA directory (see ca_files.h), in three steps an operator runs with
// `trellisctl ca rotate`, each safe to apply to a live control plane (it reloads the directory):
//
//   prepare   make a new root and a new signing intermediate under it; keep them in DIR/next/,
//             and publish the new root by appending it to roots.crt. Proxies learn it through
//             Watch and trust both roots. Nothing is signed by the new CA yet.
//   activate  once every proxy has the new root: make the new intermediate the signing CA
//             (ca.crt, ca.key, chain.crt), keep the old one in DIR/previous/, and record when.
//             The control plane signs with the new CA and tells proxies to renew soon.
//   retire    once every leaf of the old CA has expired (the longest TTL after activation):
//             remove every root the signing CA does not chain to from roots.crt.
//
// Every file is replaced atomically (write to a temporary file, rename), so the control plane
// never reads half a step; a step that is not valid now is refused with what to do first.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace trellis::control_plane::ca {

struct RotationOptions {
  std::string dir;
  absl::Time now;
  // prepare: the new root's and intermediate's names and lifetimes.
  std::string root_common_name = "Trellis Root CA";
  std::string intermediate_common_name = "Trellis Intermediate CA";
  absl::Duration root_ttl = absl::Hours(24 * 365 * 10);
  absl::Duration intermediate_ttl = absl::Hours(24 * 365);
  // retire: the longest workload-certificate lifetime the control plane grants (its --max_ttl);
  // retiring earlier than this after activation could cut off valid leaves.
  absl::Duration max_leaf_ttl = absl::Hours(24);
  // retire: skip the waiting-time check.
  bool force = false;
};

// What `status` shows; also used by the steps to check their preconditions.
struct RotationStatus {
  std::string step;  // "idle", "prepared", "activated"
  std::vector<std::string> roots;  // subject + SHA-256 of each trusted root
  std::string signing_ca;          // subject + serial of ca.crt
  std::string signing_root;        // the root ca.crt chains to
  absl::Time activated_at = absl::InfinitePast();  // when "activated"
  absl::Time retire_after = absl::InfinitePast();  // when "activated"
};

absl::StatusOr<RotationStatus> GetRotationStatus(const std::string& dir);

// Each returns a human-readable summary of what it did and what to do next.
absl::StatusOr<std::string> PrepareRotation(const RotationOptions& options);
absl::StatusOr<std::string> ActivateRotation(const RotationOptions& options);
absl::StatusOr<std::string> RetireOldRoots(const RotationOptions& options);

}  // namespace trellis::control_plane::ca
