#pragma once

// Join tokens: how a workload outside Kubernetes (a VM, an IoT device) proves its identity to the
// control plane the first time. An operator creates a token bound to exactly one SPIFFE ID
// (`trellisctl join-token create`), hands it to the workload once, and the workload presents it
// in IssueCertificateRequest.join_token. Afterwards the workload renews with its certificate.
//
// The control plane keeps only a SHA-256 hash of each token, in a JSON file that must not be
// readable by group or others (mode 0600 or 0400):
//
//   {
//     "tokens": [
//       {
//         "name": "edge-gw-1",
//         "sha256": "<64 hex digits: SHA-256 of the whole token text, prefix included>",
//         "spiffe_id": "spiffe://cluster.local/vm/edge-gw-1",
//         "expires": "2030-01-01T00:00:00Z",      // optional, RFC 3339
//         "single_use": true,
//         "created": "2029-12-01T10:00:00Z"       // optional, informational
//       }
//     ]
//   }
//
// Unknown members are refused (a misspelt "expires" must not silently make a token immortal).
// Names and hashes are unique within the file. `printf %s "$TOKEN" | sha256sum` gives the hash of
// a token.
//
// Single-use tokens that were consumed are recorded in a state file next to the tokens file,
// <tokens file> + ".used" (see join_token_authenticator.h).

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/identity/spiffe_id.h"

namespace trellis::control_plane {

// Every token starts with this, so that a leaked token is recognisable in a secret scan.
inline constexpr absl::string_view kJoinTokenPrefix = "trellis-join-";
// The random part: this many bytes, base64url without padding (43 characters).
inline constexpr size_t kJoinTokenRandomBytes = 32;
inline constexpr size_t kJoinTokenLength = 13 + 43;
// The most bytes of a tokens file or a state file that are read.
inline constexpr size_t kMaxJoinTokenFileSize = 16 << 20;
// A token's name: 1 to this many bytes of [A-Za-z0-9._-], starting with a letter or digit.
inline constexpr size_t kMaxJoinTokenNameLength = 128;
// The state file of consumed single-use tokens is the tokens file's path plus this.
inline constexpr char kJoinTokenUsedSuffix[] = ".used";

using JoinTokenHash = std::array<uint8_t, 32>;

// One entry of the tokens file.
struct JoinTokenEntry {
  std::string name;
  JoinTokenHash sha256;
  identity::SpiffeId spiffe_id;
  std::optional<absl::Time> expires;  // none: never expires
  bool single_use;
};

// One consumed single-use token, as recorded in the state file.
struct JoinTokenUse {
  std::string name;
  JoinTokenHash sha256;
  absl::Time used_at;
};

// True if `text` has the form of a join token: kJoinTokenPrefix followed by the canonical unpadded
// base64url encoding of kJoinTokenRandomBytes bytes. Says nothing about whether it is known.
bool IsJoinTokenFormat(absl::string_view text);

// SHA-256 of the token text (prefix included).
JoinTokenHash HashJoinToken(absl::string_view token);

// Lowercase hex of a hash, as in the "sha256" member.
std::string JoinTokenHashHex(const JoinTokenHash& hash);

// InvalidArgument (quoting the name) unless `name` follows the name rule above.
absl::Status ValidateJoinTokenName(absl::string_view name);

// Parses and checks the text of a tokens file. InvalidArgument naming the entry (its index and,
// when it has a usable one, its name) and the broken rule otherwise. Never fails on a token's
// expiry: expired entries are parsed and refused when presented.
absl::StatusOr<std::vector<JoinTokenEntry>> ParseJoinTokenFile(absl::string_view text);

// Reads a tokens file (at most kMaxJoinTokenFileSize bytes) and fills `*st` with the fstat of what
// was read. NotFound if it does not exist; FailedPrecondition, naming the file and the
// `chmod 600` fix, if it is readable or writable by group or others, or is not a regular file.
absl::StatusOr<std::string> ReadJoinTokenFile(const std::string& path, struct stat* st);

// <tokens_file> + ".used".
std::string JoinTokenUsedStatePath(const std::string& tokens_file);

// Loads the state file of consumed tokens: empty if it does not exist; FailedPrecondition naming
// the file if it cannot be read or parsed (the caller must not start with a state it cannot
// trust: forgetting it would make consumed tokens usable again).
absl::StatusOr<std::vector<JoinTokenUse>> LoadJoinTokenUses(const std::string& path);

// Writes the state file atomically at mode 0600.
absl::Status SaveJoinTokenUses(const std::string& path, const std::vector<JoinTokenUse>& uses);

// Generates a new token bound to `id`, appends its hashed entry named `name` to `tokens_file`
// (created at mode 0600 if missing) and writes the file atomically. Returns the token: this is the
// only time it is ever visible; it is stored nowhere.
//
// Errors: InvalidArgument for a bad name or an expiry not in the future; AlreadyExists if the file
// already has a token named `name`; the errors of ReadJoinTokenFile (a file readable by others is
// refused, not silently tightened); FailedPrecondition if the existing file does not parse (fix it
// first: nothing is written). Calls in one process are serialized; two processes appending to the
// same file at the same instant may lose one entry (run one `trellisctl` at a time).
absl::StatusOr<std::string> CreateJoinToken(const std::string& tokens_file, const std::string& name,
                                            const identity::SpiffeId& id,
                                            std::optional<absl::Time> expires, bool single_use);

}  // namespace trellis::control_plane
