#pragma once

// The certificate authority's files on disk, laid out as a Kubernetes Secret volume would mount
// them:
//
//   ca.crt     the signing CA certificate (a root, or an intermediate under an external root)
//   ca.key     its PEM private key; must not be readable by group or others
//   chain.crt  optional: the intermediates above the signing CA, up to but excluding the root
//   roots.crt  the trusted roots (one or more), the mesh's trust bundle
//
// A Kubernetes Secret volume defaults to mode 0644; mount the CA Secret with `defaultMode: 0400`.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/trust_bundle.h"

namespace trellis::control_plane::ca {

inline constexpr char kCaCertFile[] = "ca.crt";
inline constexpr char kCaKeyFile[] = "ca.key";
inline constexpr char kChainFile[] = "chain.crt";
inline constexpr char kRootsFile[] = "roots.crt";

// A loaded and checked CA. Copies share the key.
struct CaFiles {
  identity::Certificate cert;                       // ca.crt
  std::shared_ptr<const identity::PrivateKey> key;  // ca.key
  std::vector<identity::Certificate> chain;         // chain.crt; empty if absent
  identity::TrustBundle roots;                      // roots.crt
};

// Checks that the pieces form a usable signing CA: `cert` is a CA certificate, `key` is its
// private key, and `cert` chains through `chain` to one of `roots` at time `now`. Errors say
// which check failed and never contain key bytes.
absl::Status ValidateCa(const CaFiles& ca, absl::Time now);

// Loads the CA from `dir` and checks it with ValidateCa. Refuses a ca.key readable by group or
// others (FailedPrecondition naming the file, its mode and the `chmod 600` fix); a missing file is
// NotFound naming the file.
absl::StatusOr<CaFiles> LoadCaFiles(const std::string& dir, absl::Time now = absl::Now());

struct WriteOptions {
  // Replace existing files. When false, any of the files already present is refused
  // (AlreadyExists naming it) before anything is written.
  bool overwrite = false;
};

// Writes `ca` to `dir` in the layout above: certificates at 0644, ca.key at 0600. chain.crt is
// written only when the chain is non-empty (with `overwrite`, a stale chain.crt is removed). Every
// file is written to a temporary file in `dir` and then renamed into place, so a reader never
// sees half a file. `dir` must exist.
absl::Status WriteCaFiles(const std::string& dir, const CaFiles& ca, const WriteOptions& options);

// Writes `contents` to `path` atomically (temporary file in the same directory, fsync, rename)
// with permission bits `mode`. Without `overwrite`, an existing `path` is refused with
// AlreadyExists and left untouched.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents, int mode,
                                 bool overwrite);

// `dir` + "/" + `name`.
std::string JoinPath(absl::string_view dir, absl::string_view name);

}  // namespace trellis::control_plane::ca
