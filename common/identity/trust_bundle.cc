#include "common/identity/trust_bundle.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"

namespace trellis::identity {

absl::StatusOr<TrustBundle> TrustBundle::Create(std::vector<Certificate> roots) {
  if (roots.empty()) {
    return absl::InvalidArgumentError(
        "trust bundle is empty: it needs at least one root certificate");
  }
  std::vector<Certificate> unique;
  for (Certificate& cert : roots) {
    if (!cert.is_ca()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle entry \"", cert.subject(), "\" (serial ", cert.serial_hex(),
                       ") is not a CA certificate (basicConstraints CA:TRUE is missing)"));
    }
    if (std::find(unique.begin(), unique.end(), cert) == unique.end()) {
      unique.push_back(std::move(cert));
    }
  }
  return TrustBundle(std::move(unique));
}

absl::StatusOr<TrustBundle> TrustBundle::FromPem(absl::string_view pem) {
  absl::StatusOr<std::vector<Certificate>> certs = ParsePemChain(pem);
  if (!certs.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("trust bundle: ", certs.status().message()));
  }
  return Create(*std::move(certs));
}

absl::StatusOr<TrustBundle> TrustBundle::FromDer(const std::vector<std::string>& roots_der) {
  std::vector<Certificate> certs;
  for (size_t i = 0; i < roots_der.size(); ++i) {
    absl::StatusOr<Certificate> cert = Certificate::FromDer(roots_der[i]);
    if (!cert.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle entry ", i, ": ", cert.status().message()));
    }
    certs.push_back(*std::move(cert));
  }
  return Create(std::move(certs));
}

std::vector<std::string> TrustBundle::ToDer() const {
  std::vector<std::string> out;
  out.reserve(roots_.size());
  for (const Certificate& cert : roots_) out.push_back(cert.ToDer());
  return out;
}

bool TrustBundle::Contains(const Certificate& cert) const {
  return std::find(roots_.begin(), roots_.end(), cert) != roots_.end();
}

absl::StatusOr<crypto::UniquePtr<X509_STORE>> TrustBundle::NewX509Store() const {
  crypto::UniquePtr<X509_STORE> store(X509_STORE_new());
  if (store == nullptr) return crypto::OpenSslInternalError("cannot allocate an X509_STORE");
  for (const Certificate& root : roots_) {
    if (X509_STORE_add_cert(store.get(), root.get()) != 1) {
      return crypto::OpenSslInternalError("cannot add a root to the X509_STORE");
    }
  }
  X509_STORE_set_flags(store.get(), X509_V_FLAG_X509_STRICT);
  return store;
}

}  // namespace trellis::identity
