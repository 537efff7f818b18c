#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "common/identity/spiffe_id.h"

namespace trellis::identity {

// One parsed X.509 certificate. Cheap to copy (copies share the immutable OpenSSL object).
class Certificate {
 public:
  // Parses one DER certificate; trailing bytes are an error.
  static absl::StatusOr<Certificate> FromDer(absl::string_view der);

  // Parses the first CERTIFICATE block of a PEM text.
  static absl::StatusOr<Certificate> FromPem(absl::string_view pem);

  // Wraps an existing certificate, taking one more reference on it.
  static Certificate FromX509(X509* cert);

  Certificate(const Certificate& other) : cert_(crypto::UpRef(other.cert_.get())) {}
  Certificate& operator=(const Certificate& other) {
    cert_ = crypto::UpRef(other.cert_.get());
    return *this;
  }
  Certificate(Certificate&&) = default;
  Certificate& operator=(Certificate&&) = default;

  std::string ToDer() const;
  std::string ToPem() const;

  absl::Time not_before() const;
  absl::Time not_after() const;

  // The serial number as lowercase hex without leading zeros, e.g. "3f9a01c2".
  std::string serial_hex() const;

  // The subject as a one-line RFC 2253 string, for display only: identity never comes from it.
  std::string subject() const;
  std::string issuer() const;

  // True if basicConstraints says cA=TRUE.
  bool is_ca() const;

  // Every URI SAN, in order.
  std::vector<std::string> uri_sans() const;

  // Every DNS SAN, in order.
  std::vector<std::string> dns_sans() const;

  // The SPIFFE ID per the X.509-SVID rules: exactly one URI SAN, and it must be a valid SPIFFE ID.
  // The subject CN is never consulted. Errors say which rule was broken.
  absl::StatusOr<SpiffeId> GetSpiffeId() const;

  // SHA-256 of the DER encoding, lowercase hex (for display and pinning).
  std::string sha256_hex() const;

  // The underlying certificate; owned by this object (and its copies).
  X509* get() const { return cert_.get(); }

  bool operator==(const Certificate& other) const;
  bool operator!=(const Certificate& other) const { return !(*this == other); }

 private:
  explicit Certificate(crypto::UniquePtr<X509> cert) : cert_(std::move(cert)) {}

  crypto::UniquePtr<X509> cert_;
};

// Parses every CERTIFICATE block of a PEM text, in order. A text with none is an error, as is
// a block that does not parse (the message says which block).
absl::StatusOr<std::vector<Certificate>> ParsePemChain(absl::string_view pem);

// Reads a PEM file and parses it with ParsePemChain; errors name the file.
absl::StatusOr<std::vector<Certificate>> LoadPemChainFile(const std::string& path);

// Concatenated PEM of `certs`, in order.
std::string ToPemChain(const std::vector<Certificate>& certs);

// The SPIFFE ID of a raw certificate, under the same rules as Certificate::GetSpiffeId.
absl::StatusOr<SpiffeId> SpiffeIdOf(X509* cert);

// Converts an ASN1_TIME to absl::Time.
absl::Time Asn1TimeToAbsl(const ASN1_TIME* time);

// Reads a whole file; errors name the file and say why (missing, unreadable).
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace trellis::identity
