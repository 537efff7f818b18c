#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/crypto/handles.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"

namespace trellis::identity {

// Creates a DER PKCS#10 certificate signing request signed with `key` (SHA-256). When `id` is
// given it is carried as the request's only URI SAN; the control plane ignores it for deciding
// identity and only checks that it agrees with the caller's credential.
absl::StatusOr<std::string> CreateCsrDer(const PrivateKey& key,
                                         const std::optional<SpiffeId>& id = std::nullopt);

// What the control plane learns from a CSR that passed ParseCsrDer's checks.
struct ParsedCsr {
  // The requester's public key (P-256 or P-384).
  crypto::UniquePtr<EVP_PKEY> public_key;
  KeyAlgorithm algorithm = KeyAlgorithm::kOther;
  // The URI SANs the requester asked for, verbatim and unvalidated.
  std::vector<std::string> requested_uri_sans;
};

// Parses a DER CSR, verifies its self-signature and applies the key policy: ECDSA on P-256 or
// P-384 only. Every refusal is InvalidArgument with a message that says what is wrong and what
// to send instead, e.g. "CSR key is RSA; Trellis accepts only ECDSA P-256 or P-384 keys".
absl::StatusOr<ParsedCsr> ParseCsrDer(absl::string_view der);

// Upper bound on an accepted CSR; real ones are a few hundred bytes.
inline constexpr size_t kMaxCsrBytes = 16 * 1024;

}  // namespace trellis::identity
