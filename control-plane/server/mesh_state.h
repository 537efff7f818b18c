#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/deny_list.h"

namespace trellis::control_plane {

// One complete, immutable view of what every proxy must know: the trust bundle, the deny-list
// and an optional "renew before" hint. Watchers always receive whole snapshots.
struct MeshSnapshot {
  // An opaque fingerprint of the content: equal versions mean equal content, also across
  // control-plane replicas, so a client can skip a snapshot it already has. Not ordered.
  uint64_t version = 0;
  identity::TrustBundle bundle;
  tls::DenyList deny_list;
  std::optional<absl::Time> renew_before;
};

// Holds the current MeshSnapshot and pushes every change to subscribers (the Watch streams).
// Thread-safe. Subscribers are called with the new snapshot on the thread that made the change,
// while a lock is held that Unsubscribe also takes: after Unsubscribe returns, the callback is
// never running and never called again. Callbacks must therefore be quick and must not call
// back into MeshState.
class MeshState {
 public:
  using Subscriber = std::function<void(std::shared_ptr<const MeshSnapshot>)>;

  MeshState(identity::TrustBundle bundle, tls::DenyList deny_list);

  std::shared_ptr<const MeshSnapshot> Current() const;

  // Each replaces one part and, if the content changed, publishes a new snapshot.
  void SetBundle(identity::TrustBundle bundle);
  void SetDenyList(tls::DenyList deny_list);
  void SetRenewBefore(std::optional<absl::Time> renew_before);

  // Registers `subscriber` and returns its id and the current snapshot (so nothing published
  // between the two can be missed).
  int Subscribe(Subscriber subscriber, std::shared_ptr<const MeshSnapshot>* current);
  void Unsubscribe(int id);
  size_t subscriber_count() const;

 private:
  void Publish(identity::TrustBundle bundle, tls::DenyList deny_list,
               std::optional<absl::Time> renew_before) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::shared_ptr<const MeshSnapshot> current_ ABSL_GUARDED_BY(mu_);
  std::map<int, Subscriber> subscribers_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// The content fingerprint used as MeshSnapshot::version.
uint64_t MeshVersion(const identity::TrustBundle& bundle, const tls::DenyList& deny_list,
                     const std::optional<absl::Time>& renew_before);

}  // namespace trellis::control_plane
