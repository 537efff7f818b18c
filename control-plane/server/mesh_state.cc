#include "control-plane/server/mesh_state.h"

#include <openssl/sha.h>

#include <cstring>
#include <string>

namespace trellis::control_plane {

uint64_t MeshVersion(const identity::TrustBundle& bundle, const tls::DenyList& deny_list,
                     const std::optional<absl::Time>& renew_before) {
  // A stable serialisation hashed with SHA-256 (absl::Hash is salted per process, so it would
  // differ between replicas).
  std::string text;
  for (const std::string& der : bundle.ToDer()) {
    text += "root:" + std::to_string(der.size()) + ":" + der;
  }
  for (const std::string& serial : deny_list.serials()) text += "serial:" + serial + "\n";
  for (const std::string& id : deny_list.spiffe_ids()) text += "id:" + id + "\n";
  if (renew_before.has_value()) text += "renew:" + std::to_string(absl::ToUnixSeconds(*renew_before));
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(text.data()), text.size(), digest);
  uint64_t version = 0;
  std::memcpy(&version, digest, sizeof(version));
  return version == 0 ? 1 : version;  // 0 means "none" in WatchRequest.known_version
}

MeshState::MeshState(identity::TrustBundle bundle, tls::DenyList deny_list) {
  absl::MutexLock lock(&mu_);
  Publish(std::move(bundle), std::move(deny_list), std::nullopt);
}

std::shared_ptr<const MeshSnapshot> MeshState::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

void MeshState::SetBundle(identity::TrustBundle bundle) {
  absl::MutexLock lock(&mu_);
  Publish(std::move(bundle), current_->deny_list, current_->renew_before);
}

void MeshState::SetDenyList(tls::DenyList deny_list) {
  absl::MutexLock lock(&mu_);
  Publish(current_->bundle, std::move(deny_list), current_->renew_before);
}

void MeshState::SetRenewBefore(std::optional<absl::Time> renew_before) {
  absl::MutexLock lock(&mu_);
  Publish(current_->bundle, current_->deny_list, renew_before);
}

void MeshState::Publish(identity::TrustBundle bundle, tls::DenyList deny_list,
                        std::optional<absl::Time> renew_before) {
  const uint64_t version = MeshVersion(bundle, deny_list, renew_before);
  if (current_ != nullptr && current_->version == version) return;
  current_ = std::make_shared<const MeshSnapshot>(
      MeshSnapshot{version, std::move(bundle), std::move(deny_list), renew_before});
  for (auto& [id, subscriber] : subscribers_) subscriber(current_);
}

int MeshState::Subscribe(Subscriber subscriber, std::shared_ptr<const MeshSnapshot>* current) {
  absl::MutexLock lock(&mu_);
  const int id = next_id_++;
  subscribers_.emplace(id, std::move(subscriber));
  *current = current_;
  return id;
}

void MeshState::Unsubscribe(int id) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(id);
}

size_t MeshState::subscriber_count() const {
  absl::MutexLock lock(&mu_);
  return subscribers_.size();
}

}  // namespace trellis::control_plane
