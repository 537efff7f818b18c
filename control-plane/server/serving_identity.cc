#include "control-plane/server/serving_identity.h"

#include "common/identity/certificate.h"
#include "common/log/json_log.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::control_plane {

absl::Status ServingIdentity::Refresh(absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<ca::LocalSigner> signer = ca_->signer();
  const std::string issuer_serial = signer->ca_certificate().serial_hex();
  if (now < refresh_at_ && issuer_serial == issuer_serial_) return absl::OkStatus();

  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
  if (!key.ok()) return key.status();
  const absl::Duration ttl = std::min(options_.ttl, signer->options().max_ttl);
  absl::StatusOr<std::vector<identity::Certificate>> chain =
      signer->SignLeaf(key->get(), options_.spiffe_id, ttl, options_.dns_names);
  if (!chain.ok()) return chain.status();
  absl::StatusOr<std::string> key_pem = key->ToPem();
  if (!key_pem.ok()) return key_pem.status();
  // The key first: gRPC's watcher reads both files and refuses a pair that does not match, so a
  // read between the two renames keeps the previous pair for one more refresh interval.
  absl::Status status = ca::WriteFileAtomically(key_path(), *key_pem, 0600, /*overwrite=*/true);
  if (status.ok()) {
    status = ca::WriteFileAtomically(cert_path(), identity::ToPemChain(*chain), 0644,
                                     /*overwrite=*/true);
  }
  if (!status.ok()) return status;
  const absl::Time not_after = chain->front().not_after();
  refresh_at_ = now + (not_after - now) / 2;
  issuer_serial_ = issuer_serial;
  log::Info("serving certificate issued", {{"spiffe_id", options_.spiffe_id.ToString()},
                                           {"serial", chain->front().serial_hex()},
                                           {"not_after", absl::FormatTime(not_after)}});
  return absl::OkStatus();
}

}  // namespace trellis::control_plane
