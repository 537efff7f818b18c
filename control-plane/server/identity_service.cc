#include "control-plane/server/identity_service.h"

#include <google/protobuf/util/time_util.h>
#include <grpc/grpc_security_constants.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "common/identity/certificate.h"
#include "common/identity/csr.h"
#include "common/log/json_log.h"
#include "common/tls/peer_verifier.h"
#include "proto/time_convert.h"

namespace trellis::control_plane {
namespace {

using trellis::identity::v1::IssueCertificateRequest;
using trellis::identity::v1::IssueCertificateResponse;
using trellis::identity::v1::WatchRequest;
using trellis::identity::v1::WatchResponse;

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  // absl and gRPC share the canonical code numbers.
  return static_cast<grpc::StatusCode>(static_cast<int>(code));
}

absl::string_view ResultLabel(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "ok";
    case absl::StatusCode::kUnauthenticated:
      return "unauthenticated";
    case absl::StatusCode::kPermissionDenied:
      return "permission_denied";
    case absl::StatusCode::kInvalidArgument:
      return "invalid_argument";
    case absl::StatusCode::kResourceExhausted:
      return "resource_exhausted";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    case absl::StatusCode::kCancelled:
      return "cancelled";
    default:
      return "internal";
  }
}

}  // namespace

// Reads the caller's TLS client certificate chain (leaf first), if it presented one. The TLS
// layer requests a certificate without verifying it; verification happens here, against the
// current trust bundle and deny-list, so root rotation and revocation apply without restarting
// the gRPC server.
std::vector<identity::Certificate> IdentityService::PeerChain(
    const grpc::ServerContextBase& context) const {
  std::vector<identity::Certificate> chain;
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) return chain;
  // The leaf is x509_pem_cert. On a server, x509_pem_cert_chain comes from
  // SSL_get_peer_cert_chain, which leaves the peer's own certificate out: it holds only what
  // followed the leaf (and, with some peers, the leaf again), so it supplies intermediates.
  std::vector<grpc::string_ref> leaf = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (leaf.empty()) return chain;
  absl::StatusOr<identity::Certificate> parsed_leaf = ParseLeaf(leaf[0]);
  if (!parsed_leaf.ok()) return chain;
  chain.push_back(*parsed_leaf);
  std::vector<grpc::string_ref> rest =
      auth->FindPropertyValues(GRPC_X509_PEM_CERT_CHAIN_PROPERTY_NAME);
  if (!rest.empty()) {
    for (identity::Certificate& cert : ParseIntermediates(rest[0])) {
      if (cert != chain.front()) chain.push_back(std::move(cert));
    }
  }
  return chain;
}

// What a renewing client sends after its leaf is, in practice, this CA's own chain: the same text
// on every call. Parsing one certificate costs ~130 us under OpenSSL 3 (mostly its public-key
// decoder), so the last text and its parse are kept. Only the parse is reused, never a decision:
// every call still verifies the whole chain. A text that does not parse yields no certificates.
std::vector<identity::Certificate> IdentityService::ParseIntermediates(grpc::string_ref pem) const {
  const absl::string_view text(pem.data(), pem.size());
  {
    absl::MutexLock lock(&intermediates_mu_);
    if (intermediates_pem_ == text) return intermediates_;
  }
  absl::StatusOr<std::vector<identity::Certificate>> parsed = identity::ParsePemChain(text);
  if (!parsed.ok()) return {};
  absl::MutexLock lock(&intermediates_mu_);
  intermediates_pem_ = std::string(text);
  intermediates_ = *parsed;
  return *std::move(parsed);
}

// Parsing a client certificate costs ~130 us under OpenSSL 3 (its provider decoder reading the
// public key), as much as an ECDSA verify, and a certificate comes back whenever a renewal is
// retried (after an UNAVAILABLE under a burst) or a client renews again over the same connection.
// So parses are kept by PEM text: the same text always parses to the same certificate. Only the
// parse is reused, never a decision: every call still verifies the chain against the current
// bundle, deny-list and clock. Texts that do not parse are not kept. (trellis-proxy renews over a
// new connection, once per certificate, so its first attempt still pays the parse.)
absl::StatusOr<identity::Certificate> IdentityService::ParseLeaf(grpc::string_ref pem) const {
  const absl::string_view text(pem.data(), pem.size());
  {
    absl::MutexLock lock(&leaves_mu_);
    auto it = leaves_.find(text);
    if (it != leaves_.end()) return it->second;
  }
  absl::StatusOr<identity::Certificate> parsed = identity::Certificate::FromPem(text);
  if (!parsed.ok()) return parsed;
  absl::MutexLock lock(&leaves_mu_);
  // Simplest bound that cannot be gamed into growing: start over when full (the fleet's live
  // certificates come back within one renewal each).
  if (leaves_.size() >= kMaxCachedLeaves) leaves_.clear();
  leaves_.emplace(std::string(text), *parsed);
  return parsed;
}

namespace {

// What an issuance decided, for the metrics and the one log line per refusal.
struct Outcome {
  absl::Status status;
  std::string authenticator = "none";
  std::string spiffe_id;
  absl::Duration retry_after;
};

// Counts, logs (refusals) and turns the outcome into the gRPC answer.
grpc::Status FinishIssuance(ControlPlaneMetrics* metrics_, grpc::ServerContextBase* context,
                            absl::Time start, const Outcome& outcome) {
  metrics_->CountIssuance(ResultLabel(outcome.status.code()), outcome.authenticator);
  if (outcome.status.ok()) {
    metrics_->ObserveIssuanceLatency(absl::Now() - start);
    return grpc::Status::OK;
  }
  nlohmann::json fields = {{"result", std::string(ResultLabel(outcome.status.code()))},
                           {"authenticator", outcome.authenticator},
                           {"reason", std::string(outcome.status.message())},
                           {"peer", context->peer()}};
  if (!outcome.spiffe_id.empty()) fields["spiffe_id"] = outcome.spiffe_id;
  if (outcome.retry_after > absl::ZeroDuration()) {
    const int64_t ms = absl::ToInt64Milliseconds(outcome.retry_after);
    context->AddTrailingMetadata(kRetryAfterMetadataKey, std::to_string(ms));
    fields["retry_after_ms"] = ms;
  }
  log::Warn("issuance refused", fields);
  return grpc::Status(ToGrpcCode(outcome.status.code()), std::string(outcome.status.message()));
}

}  // namespace

void PrepareIssuanceProcess() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

void SetMaxConnectionAge(grpc::ServerBuilder* builder, absl::Duration age, absl::Duration grace) {
  if (age <= absl::ZeroDuration()) return;
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(age)));
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(grace)));
}

// === impl IdentityService ===

IdentityService::IdentityService(IdentityServiceOptions options, CaManager* ca, MeshState* mesh,
                                 IssuanceAdmission* admission, ControlPlaneMetrics* metrics)
    : options_(std::move(options)), ca_(ca), mesh_(mesh), admission_(admission), metrics_(metrics) {
  // A renewal must come from this trust domain. Parsed once, not per renewal; a domain that does
  // not parse leaves the list empty, which allows nobody.
  absl::StatusOr<identity::SpiffeIdPattern> own_domain =
      identity::SpiffeIdPattern::Parse(absl::StrCat("spiffe://", options_.trust_domain));
  if (own_domain.ok()) own_domain_.push_back(*std::move(own_domain));
}

IdentityService::~IdentityService() = default;

grpc::ServerUnaryReactor* IdentityService::IssueCertificate(grpc::CallbackServerContext* context,
                                                            const IssueCertificateRequest* request,
                                                            IssueCertificateResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Time start = absl::Now();
  Outcome outcome;
  const bool renewal = request->credential_case() == IssueCertificateRequest::CREDENTIAL_NOT_SET;

  // The requested lifetime is checked first: a request that cannot succeed must not spend a
  // single-use join token or a rate-limit token.
  absl::Duration ttl = absl::ZeroDuration();
  if (request->has_requested_ttl()) {
    ttl = ::trellis::proto::FromProto(request->requested_ttl());
    const ca::LocalSignerOptions& limits = ca_->signer()->options();
    if (ttl != absl::ZeroDuration() && (ttl < limits.min_ttl || ttl > limits.max_ttl)) {
      outcome.status = absl::InvalidArgumentError(absl::StrCat(
          "requested TTL ", absl::FormatDuration(ttl), " is outside the allowed range [",
          absl::FormatDuration(limits.min_ttl), ", ", absl::FormatDuration(limits.max_ttl),
          "]; ask for a lifetime in range, or leave it unset for the default"));
      reactor->Finish(FinishIssuance(metrics_, context, start, outcome));
      return reactor;
    }
  }

  // 0. May it run now? Bounded concurrency (first issuances before renewals) decided before any
  // expensive work, so refusing under overload is cheap. The work runs on the admission's worker
  // threads, never on gRPC's, and this call returns at once.
  auto refuse = [this, context, reactor, start, renewal](IssuanceAdmission::Decision refusal) {
    Outcome refused;
    refused.status = refusal.status;
    refused.retry_after = refusal.retry_after;
    refused.authenticator = renewal ? "renewal" : "none";
    reactor->Finish(FinishIssuance(metrics_, context, start, refused));
  };
  admission_->Submit(
      renewal,
      [this, context, request, response, reactor, start, ttl, refuse] {
        if (context->IsCancelled()) {
          admission_->Release();
          refuse({absl::CancelledError(
                      "the caller gave up while waiting for a signing slot; nothing was issued"),
                  absl::ZeroDuration()});
          return;
        }
        const grpc::Status status = IssueAdmitted(context, request, response, start, ttl);
        admission_->Release();
        reactor->Finish(status);
      },
      refuse);
  return reactor;
}

grpc::Status IdentityService::IssueAdmitted(grpc::ServerContextBase* context,
                                            const IssueCertificateRequest* request,
                                            IssueCertificateResponse* response, absl::Time start,
                                            absl::Duration ttl) {
  Outcome outcome;
  // 1. Who is the caller? Only the credential says; never the CSR.
  absl::StatusOr<AuthenticatedIdentity> who = absl::UnauthenticatedError("unset");
  switch (request->credential_case()) {
    case IssueCertificateRequest::kKubernetesToken:
      outcome.authenticator = options_.kubernetes_authenticator != nullptr
                                  ? std::string(options_.kubernetes_authenticator->name())
                                  : "none";
      who = options_.kubernetes_authenticator != nullptr
                ? options_.kubernetes_authenticator->Authenticate(request->kubernetes_token())
                : absl::UnauthenticatedError(
                      "this control plane does not accept Kubernetes tokens: start it with "
                      "--jwks_file or --tokenreview");
      break;
    case IssueCertificateRequest::kJoinToken:
      outcome.authenticator = "join_token";
      who = options_.join_token_authenticator != nullptr
                ? options_.join_token_authenticator->Authenticate(request->join_token())
                : absl::UnauthenticatedError(
                      "this control plane does not accept join tokens: start it with "
                      "--join_tokens_file");
      break;
    case IssueCertificateRequest::CREDENTIAL_NOT_SET: {
      outcome.authenticator = "renewal";
      const std::vector<identity::Certificate> chain = PeerChain(*context);
      if (chain.empty()) {
        who = absl::UnauthenticatedError(
            "no credential: send kubernetes_token or join_token, or present your current "
            "workload certificate as the TLS client certificate to renew");
        break;
      }
      std::shared_ptr<const MeshSnapshot> snapshot = mesh_->Current();
      absl::StatusOr<std::unique_ptr<tls::PeerVerifier>> verifier =
          tls::PeerVerifier::Create(snapshot->bundle, snapshot->deny_list);
      if (!verifier.ok()) {
        who = verifier.status();
        break;
      }
      crypto::X509Stack intermediates(sk_X509_new_null());
      for (size_t i = 1; i < chain.size(); ++i) {
        X509_up_ref(chain[i].get());
        sk_X509_push(intermediates.get(), chain[i].get());
      }
      const tls::PeerVerification check = (*verifier)->Verify(
          chain[0].get(), intermediates.get(), tls::PeerRole::kClient, Now(), own_domain_);
      if (check.ok()) {
        who = AuthenticatedIdentity{*check.peer_id, "renewal", "serial " + check.peer_serial_hex};
      } else if (*check.reason == tls::FailureReason::kRevoked) {
        who = absl::PermissionDeniedError(absl::StrCat("renewal refused: ", check.detail));
      } else {
        who = absl::UnauthenticatedError(
            absl::StrCat("renewal certificate refused (", tls::FailureReasonLabel(*check.reason),
                         "): ", check.detail, "; authenticate with a token instead"));
      }
      break;
    }
  }

  std::shared_ptr<ca::LocalSigner> signer;
  absl::StatusOr<identity::ParsedCsr> csr = absl::UnknownError("unset");
  if (!who.ok()) {
    outcome.status = who.status();
  } else {
    outcome.spiffe_id = who->spiffe_id.ToString();
    std::shared_ptr<const MeshSnapshot> snapshot = mesh_->Current();
    if (who->spiffe_id.trust_domain() != options_.trust_domain) {
      outcome.status = absl::PermissionDeniedError(
          absl::StrCat(outcome.spiffe_id, " is not in this mesh's trust domain \"",
                       options_.trust_domain, "\""));
    } else if (snapshot->deny_list.IsIdentityDenied(who->spiffe_id)) {
      outcome.status = absl::PermissionDeniedError(
          absl::StrCat(outcome.spiffe_id, " is on the revocation deny-list"));
    } else if (csr = identity::ParseCsrDer(request->csr_der()); !csr.ok()) {
      outcome.status = csr.status();
    } else if (!csr->requested_uri_sans.empty() &&
               (csr->requested_uri_sans.size() != 1 ||
                csr->requested_uri_sans[0] != outcome.spiffe_id)) {
      outcome.status = absl::PermissionDeniedError(absl::StrCat(
          "the CSR asks for \"", csr->requested_uri_sans[0], "\" but the credential proves \"",
          outcome.spiffe_id,
          "\": leave the SAN out of the CSR or ask for the identity you authenticated as"));
    }
  }

  // 2. The per-identity rate limit, now that the identity is known.
  if (outcome.status.ok()) {
    IssuanceAdmission::Decision decision = admission_->CheckRate(outcome.spiffe_id);
    if (!decision.status.ok()) {
      outcome.status = decision.status;
      outcome.retry_after = decision.retry_after;
    }
  }

  // 3. Sign and answer.
  if (outcome.status.ok()) {
    signer = ca_->signer();
    const absl::Time now = Now();
    absl::StatusOr<std::vector<identity::Certificate>> chain =
        signer->SignLeaf(csr->public_key.get(), who->spiffe_id, ttl, {});
    if (!chain.ok()) {
      outcome.status = chain.status();
    } else {
      // Only the leaf is encoded per call; the CA's part of the chain and the roots were encoded
      // once by the signer.
      response->add_cert_chain_der(chain->front().ToDer());
      for (const std::string& der : signer->chain_tail_der()) response->add_cert_chain_der(der);
      for (const std::string& der : signer->trust_bundle_der()) response->add_trust_bundle_der(der);
      const absl::Time not_after = chain->front().not_after();
      const absl::Duration lifetime = not_after - now;
      thread_local std::minstd_rand rng(std::random_device{}());
      std::uniform_real_distribution<double> jitter(-options_.refresh_jitter,
                                                    options_.refresh_jitter);
      const double fraction = std::clamp(options_.refresh_fraction + jitter(rng), 0.1, 0.9);
      *response->mutable_not_after() = ::trellis::proto::TimeToProto(not_after);
      *response->mutable_refresh_after() = ::trellis::proto::TimeToProto(now + lifetime * fraction);
      *response->mutable_refresh_in() = ::trellis::proto::DurationToProto(lifetime * fraction);
      *response->mutable_valid_for() = ::trellis::proto::DurationToProto(lifetime);
      response->set_spiffe_id(outcome.spiffe_id);
      if (log::Enabled(log::Level::kDebug)) {  // the fields cost a few us to build
        log::Debug("certificate issued", {{"spiffe_id", outcome.spiffe_id},
                                          {"authenticator", outcome.authenticator},
                                          {"serial", chain->front().serial_hex()},
                                          {"not_after", absl::FormatTime(not_after)},
                                          {"peer", context->peer()}});
      }
    }
  }

  return FinishIssuance(metrics_, context, start, outcome);
}

// === impl WatchReactor ===

// One open Watch stream. Sends the current snapshot at once, then every newer one. If snapshots
// arrive faster than the client reads, only the newest is kept (snapshots are complete, so
// skipping one loses nothing). Deletes itself in OnDone.
class IdentityService::WatchReactor : public grpc::ServerWriteReactor<WatchResponse> {
 public:
  WatchReactor(IdentityService* service, std::string peer)
      : service_(service), peer_(std::move(peer)) {
    std::shared_ptr<const MeshSnapshot> current;
    subscription_ = service_->mesh_->Subscribe(
        [this](std::shared_ptr<const MeshSnapshot> snapshot) { Push(std::move(snapshot)); },
        &current);
    service_->metrics_->watchers.fetch_add(1);
    Push(std::move(current));
  }

  // Ends the stream (shutdown). Safe to call from any thread, more than once.
  void Close(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      if (!finished_) {
        finished_ = true;
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream broken"));
      }
      return;
    }
    if (pending_ != nullptr) StartNext();
  }

  void OnCancel() override { Close(grpc::Status::CANCELLED); }

  void OnDone() override {
    service_->mesh_->Unsubscribe(subscription_);
    service_->metrics_->watchers.fetch_sub(1);
    {
      absl::MutexLock lock(&service_->watches_mu_);
      service_->watches_.erase(this);
    }
    delete this;
  }

 private:
  void Push(std::shared_ptr<const MeshSnapshot> snapshot) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    pending_ = std::move(snapshot);
    if (!writing_) StartNext();
  }

  void StartNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_.Clear();
    response_.set_version(pending_->version);
    for (const std::string& der : pending_->bundle.ToDer()) response_.add_trust_bundle_der(der);
    for (const std::string& serial : pending_->deny_list.serials()) {
      response_.add_denied()->set_serial_hex(serial);
    }
    for (const std::string& id : pending_->deny_list.spiffe_ids()) {
      response_.add_denied()->set_spiffe_id(id);
    }
    if (pending_->renew_before.has_value()) {
      *response_.mutable_renew_before() = ::trellis::proto::TimeToProto(*pending_->renew_before);
    }
    pending_.reset();
    writing_ = true;
    StartWrite(&response_);
  }

  IdentityService* const service_;
  const std::string peer_;
  int subscription_ = 0;
  absl::Mutex mu_;
  std::shared_ptr<const MeshSnapshot> pending_ ABSL_GUARDED_BY(mu_);
  WatchResponse response_ ABSL_GUARDED_BY(mu_);  // must stay alive until OnWriteDone
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerWriteReactor<WatchResponse>* IdentityService::Watch(
    grpc::CallbackServerContext* context, const WatchRequest* /*request*/) {
  {
    absl::MutexLock lock(&watches_mu_);
    if (closing_) {
      // Not registered: a plain reactor that finishes at once.
      class Refuse : public grpc::ServerWriteReactor<WatchResponse> {
       public:
        Refuse() {
          Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "control plane shutting down; reconnect to another replica"));
        }
        void OnDone() override { delete this; }
      };
      return new Refuse();
    }
  }
  auto* reactor = new WatchReactor(this, context->peer());
  absl::MutexLock lock(&watches_mu_);
  watches_.insert(reactor);
  return reactor;
}

void IdentityService::CloseWatches() {
  // Held across the loop: OnDone takes the same lock before deleting a reactor, so no reactor
  // can go away under us. gRPC never runs OnDone inline from Finish, so this cannot deadlock.
  absl::MutexLock lock(&watches_mu_);
  closing_ = true;
  for (WatchReactor* reactor : watches_) {
    reactor->Close(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "control plane shutting down; reconnect to another replica"));
  }
}

}  // namespace trellis::control_plane
