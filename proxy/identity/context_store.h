#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/deny_list.h"
#include "common/tls/tls_context.h"

namespace trellis::proxy {

// Everything the proxy's TLS needs: our chain and key, and what we trust and refuse.
struct Credentials {
  std::vector<identity::Certificate> chain;  // leaf first
  std::shared_ptr<const identity::PrivateKey> key;
  identity::TrustBundle bundle;
  tls::DenyList deny_list;
};

// The proxy's current mutual-TLS contexts (one server-side for inbound, one client-side for
// outbound). A new set of credentials is built into new contexts whole and validated before it is
// published; publishing swaps two shared_ptrs. Each new connection takes the current contexts
// once and keeps them for its whole life (TlsSession holds a shared_ptr), so existing connections
// are never disturbed by a rotation and an old context is freed with its last connection.
//
// Thread-safe: workers call the getters for every new connection (a shared lock; a worker may
// cache by generation() to skip it); the control thread calls Update*.
class ContextStore {
 public:
  struct Options {
    std::vector<std::string> alpn = {std::string(tls::kMeshAlpn)};
    std::function<absl::Time()> clock;  // for validity checks; absl::Now when empty
  };

  ContextStore() : ContextStore(Options()) {}
  explicit ContextStore(Options options) : options_(std::move(options)) {}

  // Builds and publishes contexts for `credentials`. On error nothing changes: the proxy keeps
  // serving with what it had, and the caller logs and counts the error.
  absl::Status Update(Credentials credentials);

  // Replaces only the bundle and deny-list (a Watch update), keeping chain and key. Fails with
  // FailedPrecondition before the first Update.
  absl::Status UpdateTrust(identity::TrustBundle bundle, tls::DenyList deny_list);

  // Null until the first successful Update: connections then fail fast with kNotReady.
  std::shared_ptr<const tls::TlsContext> server_context() const;
  std::shared_ptr<const tls::TlsContext> client_context() const;

  // The credentials last published, for /certs and /config_dump.
  std::optional<Credentials> credentials() const;

  // Increments with every publish.
  uint64_t generation() const;

  // Registers a callback run on the publishing thread after every publish (e.g. to close
  // existing connections whose peer is now on the deny-list). Register before serving.
  void OnPublish(std::function<void(const Credentials&)> callback);

 private:
  absl::Status Publish(Credentials credentials);

  const Options options_;
  mutable absl::Mutex mu_;
  std::optional<Credentials> credentials_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const tls::TlsContext> server_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const tls::TlsContext> client_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::function<void(const Credentials&)>> callbacks_;
};

}  // namespace trellis::proxy
