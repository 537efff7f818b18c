#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/crypto/handles.h"

namespace trellis::identity {

// The kinds of public key Trellis can tell apart. Only the ECDSA curves are accepted for
// workload certificates; the rest exist so that refusals can say what was found.
enum class KeyAlgorithm { kEcdsaP256, kEcdsaP384, kEcdsaOtherCurve, kRsa, kOther };

// Human-readable name, e.g. "ECDSA P-256" or "RSA", for error messages.
absl::string_view KeyAlgorithmName(KeyAlgorithm algorithm);

// Classifies any public or private key.
KeyAlgorithm KeyAlgorithmOf(const EVP_PKEY* key);

// An asymmetric private key (ECDSA P-256 for workloads and the CA by default). Move-only; the
// key material never leaves the object except through ToPem(), which callers use only to write a
// key file with owner-only permissions. Nothing in Trellis logs a key.
class PrivateKey {
 public:
  // Generates a fresh ECDSA key on P-256 (the workload and CA default) or P-384.
  static absl::StatusOr<PrivateKey> GenerateEcdsaP256();
  static absl::StatusOr<PrivateKey> GenerateEcdsaP384();

  // Parses a PEM private key (PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY"). The error message
  // never includes the input.
  static absl::StatusOr<PrivateKey> FromPem(absl::string_view pem);

  // Takes ownership of an existing key (for tests that need other algorithms).
  static absl::StatusOr<PrivateKey> FromEvpPkey(crypto::UniquePtr<EVP_PKEY> key);

  PrivateKey(PrivateKey&&) = default;
  PrivateKey& operator=(PrivateKey&&) = default;

  // PKCS#8 PEM, unencrypted.
  absl::StatusOr<std::string> ToPem() const;

  // DER SubjectPublicKeyInfo of the public half.
  absl::StatusOr<std::string> PublicKeyDer() const;

  KeyAlgorithm algorithm() const { return KeyAlgorithmOf(key_.get()); }

  // The underlying key; owned by this object.
  EVP_PKEY* get() const { return key_.get(); }

 private:
  explicit PrivateKey(crypto::UniquePtr<EVP_PKEY> key) : key_(std::move(key)) {}

  crypto::UniquePtr<EVP_PKEY> key_;
};

}  // namespace trellis::identity
