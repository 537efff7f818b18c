#pragma once

// SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md) and the patterns
// that policies and peer checks match them against.

#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace trellis::identity {

// The most bytes a SPIFFE ID may have, and its trust domain name (SPIFFE ID standard, 2.3-2.4).
inline constexpr size_t kMaxSpiffeIdLength = 2048;
inline constexpr size_t kMaxTrustDomainLength = 255;

// A SPIFFE ID: spiffe://<trust-domain>/<path>. Immutable value type: every instance holds a valid
// ID (there is no empty state), so code receiving a SpiffeId need not validate it again.
// Thread-compatible; cheap to copy (one string).
class SpiffeId {
 public:
  // Parses and validates `text` per the SPIFFE ID standard:
  //  - the scheme is exactly "spiffe://" (lowercase);
  //  - the trust domain is non-empty, at most 255 bytes of lowercase letters, digits, '.', '-'
  //    and '_' (no port, no userinfo);
  //  - the path is empty or one or more segments "/" + [a-zA-Z0-9.-_]+, none of them "." or "..",
  //    with no trailing '/';
  //  - no query, fragment or percent-encoding anywhere, and at most 2048 bytes in all.
  // The standard admits no aliases, so a valid text is already canonical: ToString() returns it
  // unchanged. On failure returns InvalidArgument whose message quotes the input (truncated and
  // with non-printable bytes escaped) and names the rule that was broken.
  static absl::StatusOr<SpiffeId> Parse(absl::string_view text);

  // Builds spiffe://<trust_domain>/ns/<ns>/sa/<service_account>, the identity of a Kubernetes
  // service account. `ns` must be a Kubernetes namespace name (an RFC 1123 label: at most 63
  // lowercase letters, digits or '-', starting and ending alphanumeric) and `service_account` a
  // service account name (an RFC 1123 subdomain: at most 253 lowercase letters, digits, '-' or
  // '.', each dot-separated label starting and ending alphanumeric). InvalidArgument otherwise.
  static absl::StatusOr<SpiffeId> ForKubernetesServiceAccount(absl::string_view trust_domain,
                                                              absl::string_view ns,
                                                              absl::string_view service_account);

  // The canonical text, e.g. "spiffe://cluster.local/ns/default/sa/web".
  const std::string& ToString() const { return text_; }

  // The trust domain name, e.g. "cluster.local". Never empty.
  absl::string_view trust_domain() const;

  // The path: "" (the ID of the trust domain itself) or a string starting with '/'.
  absl::string_view path() const;

  // For an ID whose path is exactly /ns/<ns>/sa/<sa>: the namespace and the service account.
  // Empty for any other path (including deeper ones such as /ns/a/sa/b/extra).
  std::optional<std::string> kubernetes_namespace() const;
  std::optional<std::string> service_account() const;

  // IDs compare by their canonical text (so the order groups IDs by trust domain).
  friend bool operator==(const SpiffeId& a, const SpiffeId& b) { return a.text_ == b.text_; }
  friend bool operator!=(const SpiffeId& a, const SpiffeId& b) { return a.text_ != b.text_; }
  friend bool operator<(const SpiffeId& a, const SpiffeId& b) { return a.text_ < b.text_; }

  template <typename H>
  friend H AbslHashValue(H h, const SpiffeId& id) {
    return H::combine(std::move(h), id.text_);
  }

 private:
  SpiffeId(std::string text, size_t trust_domain_length)
      : text_(std::move(text)), trust_domain_length_(trust_domain_length) {}

  std::string text_;
  size_t trust_domain_length_;  // bytes after "spiffe://"
};

// Validates a trust domain name on its own, e.g. "cluster.local" (used for config flags): the
// trust domain rules of SpiffeId::Parse. InvalidArgument, quoting the input, otherwise.
absl::Status ValidateTrustDomain(absl::string_view td);

// A pattern matching SPIFFE IDs, in one of four forms:
//  - exact:        "spiffe://td/ns/a/sa/b" matches that ID only;
//  - path prefix:  "spiffe://td/ns/a/*" matches every ID of trust domain td whose path lies under
//                  /ns/a/ at any depth (/ns/a/sa/b, /ns/a/x/y/z), but neither /ns/a itself nor
//                  /ns/ab/...: the prefix ends at a segment boundary;
//  - trust domain: "spiffe://td" or "spiffe://td/*" matches every ID of td, including the ID
//                  "spiffe://td" itself;
//  - any:          "*" matches every ID of every trust domain.
// '*' is allowed nowhere else: not in a trust domain, not inside a segment ("/ns/a*"), not in the
// middle of a path ("/ns/*/sa/b"). Immutable value type.
class SpiffeIdPattern {
 public:
  // Parses and validates a pattern; the non-wildcard part must follow the SpiffeId::Parse rules.
  // InvalidArgument, quoting the input and naming the broken rule, otherwise.
  static absl::StatusOr<SpiffeIdPattern> Parse(absl::string_view text);

  // True if `id` is one of the IDs the pattern stands for.
  bool Matches(const SpiffeId& id) const;

  // The canonical text: "*", "spiffe://td/*" (for both trust domain forms), "spiffe://td/p/*" or
  // the exact ID. Parse(ToString()) gives back an equivalent pattern.
  const std::string& ToString() const { return text_; }

 private:
  enum class Kind { kAny, kTrustDomain, kPathPrefix, kExact };

  SpiffeIdPattern(Kind kind, std::string text, size_t trust_domain_length)
      : kind_(kind), text_(std::move(text)), trust_domain_length_(trust_domain_length) {}

  Kind kind_;
  // For kPathPrefix, text_ without its final '*' (e.g. "spiffe://td/ns/a/") is what an ID must
  // start with.
  std::string text_;
  size_t trust_domain_length_;  // bytes after "spiffe://"; 0 for kAny
};

}  // namespace trellis::identity
