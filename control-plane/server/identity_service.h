#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/identity/certificate.h"
#include "common/identity/spiffe_id.h"
#include "control-plane/auth/authenticator.h"
#include "control-plane/server/admission.h"
#include "control-plane/server/ca_manager.h"
#include "control-plane/server/mesh_state.h"
#include "control-plane/server/metrics.h"
#include "trellis/identity/v1/identity.grpc.pb.h"

namespace trellis::control_plane {

struct IdentityServiceOptions {
  std::string trust_domain = "cluster.local";
  // Authenticators by credential kind; null means that kind is not accepted (the refusal says
  // which flag enables it). Not owned; must outlive the service.
  Authenticator* kubernetes_authenticator = nullptr;
  Authenticator* join_token_authenticator = nullptr;
  // refresh_after = now + lifetime * (refresh_fraction +/- refresh_jitter).
  double refresh_fraction = 0.5;
  double refresh_jitter = 0.1;
  std::function<absl::Time()> clock;
};

// The trellis.identity.v1.Identity service: parse, authenticate, admit, sign, reply. No crypto is
// done inline: CSR checks and signing live in common/identity and control-plane/ca.
//
// Both methods use gRPC's callback API, so neither a waiting issuance nor an open Watch stream
// costs a thread: thousands of proxies can renew and watch at once.
class IdentityService final
    : public trellis::identity::v1::Identity::WithCallbackMethod_IssueCertificate<
          trellis::identity::v1::Identity::WithCallbackMethod_Watch<
              trellis::identity::v1::Identity::Service>> {
 public:
  IdentityService(IdentityServiceOptions options, CaManager* ca, MeshState* mesh,
                  IssuanceAdmission* admission, ControlPlaneMetrics* metrics);
  ~IdentityService() override;

  // Returns at once: the issuance waits for a signing slot in IssuanceAdmission and runs on its
  // worker threads, which finish the call.
  grpc::ServerUnaryReactor* IssueCertificate(
      grpc::CallbackServerContext* context,
      const trellis::identity::v1::IssueCertificateRequest* request,
      trellis::identity::v1::IssueCertificateResponse* response) override;

  grpc::ServerWriteReactor<trellis::identity::v1::WatchResponse>* Watch(
      grpc::CallbackServerContext* context,
      const trellis::identity::v1::WatchRequest* request) override;

  // Ends every open Watch stream with UNAVAILABLE ("shutting down; reconnect"), for a graceful
  // stop: proxies reconnect to another replica at once instead of waiting for a timeout.
  void CloseWatches();

  class WatchReactor;

 private:
  friend class WatchReactor;

  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  // Authenticate, check the CSR, rate-limit, sign, answer: the work of one issuance once it holds
  // a signing slot.
  grpc::Status IssueAdmitted(grpc::ServerContextBase* context,
                             const trellis::identity::v1::IssueCertificateRequest* request,
                             trellis::identity::v1::IssueCertificateResponse* response,
                             absl::Time start, absl::Duration ttl);
  std::vector<identity::Certificate> PeerChain(const grpc::ServerContextBase& context) const;
  std::vector<identity::Certificate> ParseIntermediates(grpc::string_ref pem) const;
  absl::StatusOr<identity::Certificate> ParseLeaf(grpc::string_ref pem) const;

  const IdentityServiceOptions options_;
  CaManager* const ca_;
  MeshState* const mesh_;
  IssuanceAdmission* const admission_;
  ControlPlaneMetrics* const metrics_;
  // The identities a renewal certificate may name: this trust domain.
  std::vector<identity::SpiffeIdPattern> own_domain_;

  // The last intermediates text a renewal presented, and its parse (see ParseIntermediates).
  mutable absl::Mutex intermediates_mu_;
  mutable std::string intermediates_pem_ ABSL_GUARDED_BY(intermediates_mu_);
  mutable std::vector<identity::Certificate> intermediates_ ABSL_GUARDED_BY(intermediates_mu_);

  // Renewing clients' leaf certificates by their PEM text (see ParseLeaf). Bounded: emptied when
  // it reaches kMaxCachedLeaves.
  static constexpr size_t kMaxCachedLeaves = 1024;
  mutable absl::Mutex leaves_mu_;
  mutable absl::flat_hash_map<std::string, identity::Certificate> leaves_
      ABSL_GUARDED_BY(leaves_mu_);

  absl::Mutex watches_mu_;
  std::set<WatchReactor*> watches_ ABSL_GUARDED_BY(watches_mu_);
  bool closing_ ABSL_GUARDED_BY(watches_mu_) = false;
};

// Process settings for hosting IdentityService; call once before the server starts.
// Debian builds Abseil without NDEBUG, which leaves absl::Mutex's deadlock detector on: every lock
// of every absl::Mutex in the process (gRPC's included) updates a global lock graph, about a
// tenth of the control plane's CPU per certificate (bench/issuance). The detector is a debugging
// aid, so it is switched off for the whole process. (This once also sized gRPC's synchronous
// thread pool; IssueCertificate has since moved to the callback API.)
void PrepareIssuanceProcess();

// Ends every client connection `age` after it opened (+/-10%, gRPC's jitter): a GOAWAY, then the
// connection closes `grace` later, cutting a Watch stream that is still open. Proxies reconnect
// through the Service, so connections (Watch streams and the renewals that share them) spread
// over replicas added since, as istiod's 30-minute max connection age does. Zero: never.
void SetMaxConnectionAge(grpc::ServerBuilder* builder, absl::Duration age, absl::Duration grace);

// The trailing-metadata key that carries a retry hint in milliseconds on RESOURCE_EXHAUSTED and
// UNAVAILABLE answers.
inline constexpr char kRetryAfterMetadataKey[] = "retry-after-ms";

}  // namespace trellis::control_plane
