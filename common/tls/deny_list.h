#pragma once

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/identity/spiffe_id.h"

namespace trellis::tls {

// The revocation deny-list: certificate serials and whole SPIFFE IDs that must be refused.
// Immutable once built; a new list replaces the old one as a whole.
class DenyList {
 public:
  DenyList() = default;

  // `serials_hex` are normalised to lowercase hex without leading zeros; an entry that is not
  // hex, or an ID that is not a SPIFFE ID, is refused with a message naming it.
  static absl::StatusOr<DenyList> Create(const std::vector<std::string>& serials_hex,
                                         const std::vector<std::string>& spiffe_ids);

  // Parses the operator's deny-list file: one entry per line, "serial:<hex>" or
  // "spiffe://...", blank lines and '#' comments ignored. Errors name the line number.
  static absl::StatusOr<DenyList> Parse(absl::string_view text);

  bool IsDenied(absl::string_view serial_hex, const identity::SpiffeId& id) const;
  bool IsSerialDenied(absl::string_view serial_hex) const;
  bool IsIdentityDenied(const identity::SpiffeId& id) const;

  bool empty() const { return serials_.empty() && ids_.empty(); }
  size_t size() const { return serials_.size() + ids_.size(); }

  // Entries in sorted order, for display and for the Watch API.
  std::vector<std::string> serials() const;
  std::vector<std::string> spiffe_ids() const;

 private:
  absl::flat_hash_set<std::string> serials_;
  absl::flat_hash_set<std::string> ids_;
};

// Lowercase hex without leading zeros ("0" for zero); error if `text` is not hex.
absl::StatusOr<std::string> NormalizeSerialHex(absl::string_view text);

}  // namespace trellis::tls
