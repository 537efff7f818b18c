#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proxy/identity/context_store.h"
#include "proxy/identity/control_plane_transport.h"
#include "proxy/identity/refresh_policy.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

struct IdentityClientOptions {
  // The control plane's gRPC endpoint, host:port.
  std::string control_plane_address;
  // The DNS name its serving certificate must carry (checked against the pinned roots).
  std::string control_plane_name = "trellis-control-plane.trellis-system.svc";
  // The mesh root(s) to trust for the control plane, PEM (a ConfigMap mount).
  std::string root_file;
  // The credential for a first issuance: a projected service-account token (re-read on every use:
  // the kubelet rotates it) or a join token file. Renewals use the token when there is one and
  // the current certificate otherwise.
  std::string token_file;
  std::string join_token_file;
  // Requested lifetime; zero lets the control plane decide.
  absl::Duration requested_ttl = absl::ZeroDuration();
  RefreshPolicy policy;
  // Deadline of one IssueCertificate call.
  absl::Duration call_timeout = absl::Seconds(10);
  std::function<absl::Time()> clock;
  // Makes the wire to the control plane: NewGrpcTransport (grpc_transport.h), or in the proxy
  // binary the one from the library it loads (transport_loader.h). Required.
  TransportFactory transport;
  TransportLogSink transport_log_sink = nullptr;
};

// What /certs shows about rotation.
struct IdentityClientStatus {
  absl::Time next_rotation = absl::InfinitePast();
  std::string last_error;  // empty after a success
  absl::Time last_error_time = absl::InfinitePast();
  uint64_t rotation_count = 0;  // certificates put into use
  bool control_plane_reachable = false;
  bool watching = false;        // a Watch stream is open
  uint64_t bundle_version = 0;  // last Watch snapshot applied
};

// The proxy's side of the control plane, run on the control thread (modelled on linkerd's
// identity client): generate a P-256 key in memory, send a CSR with the credential, publish the
// certificate to the ContextStore, sleep until NextRefresh, repeat; on failure retry with backoff
// and jitter, never dropping a certificate that is still valid. A second thread keeps a Watch
// stream open and applies trust-bundle and deny-list snapshots to the store, reconnecting with
// backoff. The private key never leaves the process.
class IdentityClient {
 public:
  static absl::StatusOr<std::unique_ptr<IdentityClient>> Create(IdentityClientOptions options,
                                                                ContextStore* store,
                                                                ProxyStats* stats);
  ~IdentityClient();

  // Starts both loops. The first certificate arrives asynchronously; WaitForFirstCertificate
  // blocks (bounded) until it does.
  void Start();
  bool WaitForFirstCertificate(absl::Duration timeout);

  // Stops both loops and joins them. Idempotent.
  void Stop();

  IdentityClientStatus status() const;

  // Called after each Watch snapshot was applied, with the deny-list now in force (to close
  // connections with newly denied peers). Set before Start().
  void set_on_trust_update(std::function<void(const tls::DenyList&)> callback);

  class Impl;

 private:
  explicit IdentityClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace trellis::proxy
