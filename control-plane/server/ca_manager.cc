#include "control-plane/server/ca_manager.h"

#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log/json_log.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::control_plane {

absl::StatusOr<std::unique_ptr<CaManager>> CaManager::Create(Options options, MeshState* mesh,
                                                             ControlPlaneMetrics* metrics) {
  std::unique_ptr<CaManager> manager(new CaManager(std::move(options), mesh, metrics));
  absl::Status status = manager->Reload(/*force=*/true);
  if (!status.ok()) return status;
  return manager;
}

std::shared_ptr<ca::LocalSigner> CaManager::signer() const {
  absl::MutexLock lock(&mu_);
  return signer_;
}

std::string CaManager::FilesStamp() const {
  // Kubernetes updates a Secret volume by swapping a symlink, so stat() (which follows it) sees
  // a new inode and mtime for every changed file.
  std::string stamp;
  for (const char* name : {"ca.crt", "ca.key", "chain.crt", "roots.crt"}) {
    struct stat st;
    const std::string path = ca::JoinPath(options_.ca_dir, name);
    if (stat(path.c_str(), &st) == 0) {
      absl::StrAppend(&stamp, name, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec, ";");
    } else {
      absl::StrAppend(&stamp, name, ":missing;");
    }
  }
  return stamp;
}

void CaManager::UpdateGauges(const ca::LocalSigner& signer) {
  metrics_->ca_not_after_seconds = absl::ToUnixSeconds(signer.ca_certificate().not_after());
  absl::Time earliest = absl::InfiniteFuture();
  for (const identity::Certificate& root : signer.trust_bundle().roots()) {
    earliest = std::min(earliest, root.not_after());
  }
  metrics_->root_not_after_seconds = absl::ToUnixSeconds(earliest);
  metrics_->bundle_roots = static_cast<int64_t>(signer.trust_bundle().roots().size());
}

absl::Status CaManager::Reload(bool force) {
  absl::MutexLock reload_lock(&reload_mu_);
  const std::string stamp = FilesStamp();
  if (!force && stamp == stamp_) return absl::OkStatus();
  const absl::Time now = options_.signer.clock ? options_.signer.clock() : absl::Now();
  absl::StatusOr<ca::CaFiles> files = ca::LoadCaFiles(options_.ca_dir, now);
  absl::StatusOr<std::unique_ptr<ca::LocalSigner>> signer =
      files.ok() ? ca::LocalSigner::Create(*std::move(files), options_.signer)
                 : absl::StatusOr<std::unique_ptr<ca::LocalSigner>>(files.status());
  if (!signer.ok()) {
    metrics_->CountReload(/*ca=*/true, /*ok=*/false);
    // Remember the stamp so a broken file is reported once, not every second.
    stamp_ = stamp;
    log::Error("CA reload failed; still signing with the previous CA",
               {{"dir", options_.ca_dir}, {"error", std::string(signer.status().message())}});
    return signer.status();
  }
  std::shared_ptr<ca::LocalSigner> next = *std::move(signer);
  std::shared_ptr<ca::LocalSigner> previous;
  {
    absl::MutexLock lock(&mu_);
    previous = signer_;
    signer_ = next;
  }
  stamp_ = stamp;
  metrics_->CountReload(/*ca=*/true, /*ok=*/true);
  UpdateGauges(*next);
  mesh_->SetBundle(next->trust_bundle());
  const bool signing_ca_changed =
      previous != nullptr && previous->ca_certificate() != next->ca_certificate();
  if (signing_ca_changed) {
    mesh_->SetRenewBefore(now + options_.renew_spread);
  }
  log::Info(previous == nullptr ? "CA loaded" : "CA reloaded",
            {{"dir", options_.ca_dir},
             {"signing_ca", next->ca_certificate().subject()},
             {"signing_ca_serial", next->ca_certificate().serial_hex()},
             {"signing_ca_not_after", absl::FormatTime(next->ca_certificate().not_after())},
             {"roots", next->trust_bundle().roots().size()},
             {"signing_ca_changed", signing_ca_changed}});
  return absl::OkStatus();
}

}  // namespace trellis::control_plane
