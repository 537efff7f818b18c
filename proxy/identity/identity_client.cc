#include "proxy/identity/identity_client.h"

#include <algorithm>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/handles.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/csr.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "common/log/json_log.h"
#include "common/tls/deny_list.h"
#include "common/tls/peer_verifier.h"

namespace trellis::proxy {
namespace {

// A credential file's content without surrounding whitespace; empty if it cannot be read.
std::string ReadCredential(const std::string& path) {
  if (path.empty()) return "";
  absl::StatusOr<std::string> text = identity::ReadFileToString(path);
  if (!text.ok()) return "";
  return std::string(absl::StripAsciiWhitespace(*text));
}

}  // namespace

// === impl IdentityClient::Impl ===

class IdentityClient::Impl {
 public:
  Impl(IdentityClientOptions options, ContextStore* store, ProxyStats* stats, std::string roots,
       std::unique_ptr<ControlPlaneTransport> transport)
      : options_(std::move(options)),
        store_(store),
        stats_(stats),
        roots_pem_(std::move(roots)),
        transport_(std::move(transport)) {}

  void Start() {
    renew_thread_ = std::thread([this] { RenewLoop(); });
    watch_thread_ = std::thread([this] { WatchLoop(); });
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      stopping_ = true;
      if (watch_stream_ != nullptr) watch_stream_->Cancel();
    }
    if (renew_thread_.joinable()) renew_thread_.join();
    if (watch_thread_.joinable()) watch_thread_.join();
  }

  bool WaitForFirstCertificate(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto have = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return status_.rotation_count > 0; };
    mu_.AwaitWithTimeout(absl::Condition(&have), timeout);
    return have();
  }

  IdentityClientStatus status() const {
    absl::MutexLock lock(&mu_);
    return status_;
  }

  std::function<void(const tls::DenyList&)> on_trust_update;

 private:
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  double Sample() {
    absl::MutexLock lock(&rng_mu_);
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }

  ChannelCredentials ChannelWith(std::string key_pem, std::string chain_pem) {
    return ChannelCredentials{TrustedRootsPem(), std::move(key_pem), std::move(chain_pem)};
  }

  // The roots to trust for the control plane: the pinned file (re-read: the ConfigMap may have
  // been updated) plus the bundle the control plane pushed. After a root rotation the control
  // plane's own serving certificate chains to the new root, which only the pushed bundle has.
  std::string TrustedRootsPem() {
    std::string pem = roots_pem_;
    if (absl::StatusOr<std::string> file = identity::ReadFileToString(options_.root_file);
        file.ok() && identity::TrustBundle::FromPem(*file).ok()) {
      pem = *std::move(file);
    }
    // Only the pushed roots the file lacks are added: the same roots give the same text, so
    // calls keep sharing one connection (see ControlPlaneTransport) until trust really changes.
    if (std::optional<Credentials> current = store_->credentials(); current.has_value()) {
      absl::StatusOr<identity::TrustBundle> pinned = identity::TrustBundle::FromPem(pem);
      for (const identity::Certificate& root : current->bundle.roots()) {
        const bool known = pinned.ok() && std::find(pinned->roots().begin(), pinned->roots().end(),
                                                    root) != pinned->roots().end();
        if (!known) pem += root.ToPem();
      }
    }
    return pem;
  }

  // One issuance attempt. On success the new certificate is in use. `retry_after` receives the
  // control plane's hint on refusals that carry one.
  // Defence in depth: what the control plane returned is installed only if it is for our key,
  // names the identity the response states (and, on a renewal, the identity we already had: a
  // proxy never changes identity while it runs), and chains to a trust bundle we hold (the one
  // that comes with it or the newer one from Watch). The chain is checked at the middle of the
  // leaf's validity, not at our clock's now: the control plane's clock decides validity, and a
  // proxy whose clock is off must still take its certificates.
  static absl::Status CheckIssued(const std::vector<identity::Certificate>& chain,
                                  const identity::PrivateKey& key,
                                  const std::optional<Credentials>& current,
                                  std::vector<const identity::TrustBundle*> bundles,
                                  const std::string& stated_id) {
    const identity::Certificate& leaf = chain.front();
    const std::string refused = absl::StrCat(
        "refused the certificate from the control plane (serial ", leaf.serial_hex(), "): ");
    if (!identity::KeyMatchesCertificate(key, leaf)) {
      return absl::InternalError(absl::StrCat(refused, "it is not for the key this proxy sent"));
    }
    absl::StatusOr<identity::SpiffeId> id = leaf.GetSpiffeId();
    if (!id.ok()) {
      return absl::InternalError(
          absl::StrCat(refused, "it is not an X.509-SVID: ", id.status().message()));
    }
    if (!stated_id.empty() && id->ToString() != stated_id) {
      return absl::InternalError(
          absl::StrCat(refused, "it names ", id->ToString(), " but the response says ", stated_id));
    }
    if (current.has_value() && !current->chain.empty()) {
      absl::StatusOr<identity::SpiffeId> had = current->chain.front().GetSpiffeId();
      if (had.ok() && had->ToString() != id->ToString()) {
        return absl::PermissionDeniedError(absl::StrCat(
            refused, "it names ", id->ToString(), " but this proxy is ", had->ToString(),
            "; a proxy keeps one identity for life (did the token file change? restart the pod "
            "to take a new identity)"));
      }
    }
    std::unique_ptr<STACK_OF(X509), crypto::X509StackDeleter> intermediates(sk_X509_new_null());
    if (intermediates == nullptr) return absl::ResourceExhaustedError("out of memory");
    for (size_t i = 1; i < chain.size(); ++i) {
      X509_up_ref(chain[i].get());
      sk_X509_push(intermediates.get(), chain[i].get());
    }
    absl::StatusOr<identity::SpiffeIdPattern> any = identity::SpiffeIdPattern::Parse("*");
    if (!any.ok()) return any.status();
    const absl::Time at = leaf.not_before() + (leaf.not_after() - leaf.not_before()) / 2;
    std::string why;
    for (const identity::TrustBundle* bundle : bundles) {
      absl::StatusOr<std::unique_ptr<tls::PeerVerifier>> verifier =
          tls::PeerVerifier::Create(*bundle, tls::DenyList());
      if (!verifier.ok()) return verifier.status();
      // The leaf serves both ends of mutual TLS.
      bool ok = true;
      for (tls::PeerRole role : {tls::PeerRole::kServer, tls::PeerRole::kClient}) {
        const tls::PeerVerification result =
            (*verifier)->Verify(leaf.get(), intermediates.get(), role, at, {*any});
        if (!result.ok()) {
          ok = false;
          why = result.detail;
          break;
        }
      }
      if (ok) return absl::OkStatus();
    }
    return absl::InternalError(
        absl::StrCat(refused, "its chain does not verify against the trust bundle: ", why));
  }

  absl::Status IssueOnce(absl::Duration* retry_after) {
    absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> csr = identity::CreateCsrDer(*key);
    if (!csr.ok()) return csr.status();
    IssueCall call;
    call.csr_der = *std::move(csr);
    call.requested_ttl = options_.requested_ttl;
    call.timeout = options_.call_timeout;
    std::optional<Credentials> current = store_->credentials();
    bool current_valid = false;
    {
      absl::MutexLock lock(&mu_);
      // Judged on our clock from when the certificate arrived, not from its (server-clock)
      // notAfter: a proxy whose clock is off still knows whether its certificate is usable.
      current_valid =
          current.has_value() && cert_times_.has_value() && cert_times_->not_after > Now();
    }
    std::string mode;
    ChannelCredentials channel;
    const std::string token = ReadCredential(options_.token_file);
    if (!token.empty()) {
      call.kubernetes_token = token;
      mode = "kubernetes_token";
    } else if (current_valid) {
      mode = "certificate";  // renewal: the current certificate authenticates us
    } else if (const std::string join = ReadCredential(options_.join_token_file); !join.empty()) {
      call.join_token = join;
      mode = "join_token";
    } else {
      return absl::FailedPreconditionError(
          absl::StrCat("no credential: the token file \"",
                       options_.token_file.empty() ? options_.join_token_file : options_.token_file,
                       "\" is missing or empty, and there is no valid certificate to renew with"));
    }
    if (mode == "certificate") {
      absl::StatusOr<std::string> key_pem = current->key->ToPem();
      if (!key_pem.ok()) return key_pem.status();
      channel = ChannelWith(*std::move(key_pem), identity::ToPemChain(current->chain));
    } else {
      channel = ChannelWith("", "");
    }
    IssueOutcome outcome = transport_->Issue(channel, call);
    if (!outcome.status.ok()) {
      *retry_after = outcome.retry_after;
      {
        absl::MutexLock lock(&mu_);
        status_.control_plane_reachable =
            outcome.status.code() != absl::StatusCode::kUnavailable &&
            outcome.status.code() != absl::StatusCode::kDeadlineExceeded;
      }
      return absl::Status(outcome.status.code(), absl::StrCat("IssueCertificate (", mode,
                                                              "): ", outcome.status.message()));
    }
    const IssueReply& response = outcome.reply;

    std::vector<identity::Certificate> chain;
    for (const std::string& der : response.chain_der) {
      absl::StatusOr<identity::Certificate> cert = identity::Certificate::FromDer(der);
      if (!cert.ok()) return cert.status();
      chain.push_back(*std::move(cert));
    }
    if (chain.empty()) return absl::InternalError("the control plane sent no certificate");
    absl::StatusOr<identity::TrustBundle> bundle =
        identity::TrustBundle::FromDer(response.bundle_der);
    if (!bundle.ok()) return bundle.status();
    Credentials next{std::move(chain), nullptr, *bundle,
                     current.has_value() ? current->deny_list : tls::DenyList()};
    {
      // A Watch snapshot is newer than what came with the certificate.
      absl::MutexLock lock(&mu_);
      if (pending_deny_list_.has_value()) next.deny_list = *pending_deny_list_;
      if (pending_bundle_.has_value()) next.bundle = *pending_bundle_;
    }
    if (absl::Status s =
            CheckIssued(next.chain, *key, current, {&next.bundle, &*bundle}, response.spiffe_id);
        !s.ok()) {
      return s;
    }
    next.key = std::make_shared<const identity::PrivateKey>(*std::move(key));
    const identity::Certificate leaf = next.chain.front();
    if (absl::Status s = store_->Update(next); !s.ok()) return s;

    stats_->certificate_not_after_seconds = absl::ToUnixSeconds(leaf.not_after());
    stats_->trust_bundle_roots = static_cast<int64_t>(next.bundle.roots().size());
    stats_->rotations.fetch_add(1);
    stats_->credential_reloads_ok.fetch_add(1);
    const absl::Time received = Now();
    CertificateTimes times{leaf.not_before(), leaf.not_after(), std::nullopt, received};
    if (response.refresh_in.has_value() && response.valid_for.has_value()) {
      // Relative times: correct whatever our clock says.
      times = CertificateTimes{received, received + *response.valid_for,
                               received + *response.refresh_in, received};
    } else if (response.refresh_after.has_value()) {
      times.refresh_after = *response.refresh_after;
    }
    absl::MutexLock lock(&mu_);
    cert_times_ = times;
    // Set with the count, so that whoever sees the new certificate sees its schedule too.
    status_.next_rotation = NextRefresh(Now(), times, renew_before_, Sample(), options_.policy);
    stats_->next_rotation_seconds = absl::ToUnixSeconds(status_.next_rotation);
    status_.rotation_count++;
    status_.control_plane_reachable = true;
    status_.last_error.clear();
    log::Info("workload certificate installed", {{"spiffe_id", response.spiffe_id},
                                                 {"serial", leaf.serial_hex()},
                                                 {"not_after", absl::FormatTime(leaf.not_after())},
                                                 {"authenticated_with", mode},
                                                 {"rotation", status_.rotation_count}});
    return absl::OkStatus();
  }

  void RenewLoop() {
    int attempt = 0;
    while (true) {
      absl::Duration hint = absl::ZeroDuration();
      const absl::Status status = IssueOnce(&hint);
      absl::Time wake;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        const absl::Time now = Now();
        if (status.ok()) {
          attempt = 0;
          wake = status_.next_rotation;
        } else {
          const absl::Time not_after =
              cert_times_.has_value() ? cert_times_->not_after : absl::InfiniteFuture();
          wake = now +
                 std::max(hint, RetryDelay(attempt++, Sample(), now, not_after, options_.policy));
          status_.last_error = status.ToString();
          status_.last_error_time = now;
          stats_->credential_reloads_error.fetch_add(1);
          stats_->renewal_failures.fetch_add(1);
          stats_->last_renewal_error_seconds = absl::ToUnixSeconds(now);
          log::Warn("certificate renewal failed; keeping the current certificate",
                    {{"error", status_.last_error},
                     {"attempt", attempt},
                     {"retry_in", absl::FormatDuration(wake - now)},
                     {"current_not_after",
                      cert_times_.has_value() ? absl::FormatTime(cert_times_->not_after) : ""}});
        }
        status_.next_rotation = wake;
        stats_->next_rotation_seconds = absl::ToUnixSeconds(wake);
        // Sleep until `wake`, or until told to stop; a Watch hint can only bring it forward.
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || renew_hint_changed_;
        };
        absl::Time target = wake;
        while (true) {
          if (stopping_) return;
          if (renew_hint_changed_) {
            renew_hint_changed_ = false;
            if (status.ok() && cert_times_.has_value()) {
              target = std::min(target, NextRefresh(Now(), *cert_times_, renew_before_, Sample(),
                                                    options_.policy));
              status_.next_rotation = target;
              stats_->next_rotation_seconds = absl::ToUnixSeconds(target);
            }
          }
          const absl::Duration left = target - Now();
          if (left <= absl::ZeroDuration()) break;
          mu_.AwaitWithTimeout(absl::Condition(&woken), std::min(left, absl::Seconds(1)));
        }
      }
    }
  }

  void WatchLoop() {
    int attempt = 0;
    while (true) {
      // A new channel per attempt: it picks up the roots pushed since (after a root rotation the
      // control plane presents a certificate only the new root verifies).
      std::unique_ptr<WatchStream> stream =
          transport_->Watch(ChannelWith("", ""), status().bundle_version);
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        watch_stream_ = stream.get();
      }
      WatchSnapshot snapshot;
      while (stream->Next(&snapshot)) {
        attempt = 0;
        Apply(snapshot);
      }
      const absl::Status status = stream->Finish();
      absl::Duration delay;
      {
        absl::MutexLock lock(&mu_);
        watch_stream_ = nullptr;
        status_.watching = false;
        stats_->control_plane_connected = 0;
        if (stopping_) return;
        // Reconnecting a Watch is cheap; never wait long for trust updates.
        RefreshPolicy watch_policy = options_.policy;
        watch_policy.retry_cap = std::min(watch_policy.retry_cap, absl::Seconds(5));
        delay = RetryDelay(attempt++, Sample(), Now(), absl::InfiniteFuture(), watch_policy);
      }
      log::Warn("control-plane watch stream ended; reconnecting",
                {{"code", static_cast<int>(status.code())},
                 {"error", std::string(status.message())},
                 {"retry_in", absl::FormatDuration(delay)}});
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), delay);
      if (stopping_) return;
    }
  }

  void Apply(const WatchSnapshot& response) {
    absl::StatusOr<identity::TrustBundle> bundle =
        identity::TrustBundle::FromDer(response.bundle_der);
    absl::StatusOr<tls::DenyList> deny =
        tls::DenyList::Create(response.denied_serials, response.denied_spiffe_ids);
    if (!bundle.ok() || !deny.ok()) {
      log::Error("ignoring a malformed Watch update",
                 {{"error", std::string(!bundle.ok() ? bundle.status().message()
                                                     : deny.status().message())}});
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      status_.watching = true;
      stats_->control_plane_connected = 1;
      status_.control_plane_reachable = true;
      status_.bundle_version = response.version;
      pending_bundle_ = *bundle;
      pending_deny_list_ = *deny;
      if (response.renew_before.has_value()) {
        const absl::Time hint = *response.renew_before;
        if (!renew_before_.has_value() || *renew_before_ != hint) {
          renew_before_ = hint;
          renew_hint_changed_ = true;
        }
      }
    }
    if (store_->credentials().has_value()) {
      if (absl::Status s = store_->UpdateTrust(*bundle, *deny); !s.ok()) {
        log::Error("cannot apply the trust update", {{"error", std::string(s.message())}});
        return;
      }
      stats_->trust_bundle_roots = static_cast<int64_t>(bundle->roots().size());
    }
    log::Info("trust update applied", {{"version", std::to_string(response.version)},
                                       {"roots", bundle->roots().size()},
                                       {"denied", deny->size()}});
    if (on_trust_update) on_trust_update(*deny);
  }

  const IdentityClientOptions options_;
  ContextStore* const store_;
  ProxyStats* const stats_;
  const std::string roots_pem_;
  const std::unique_ptr<ControlPlaneTransport> transport_;

  mutable absl::Mutex mu_;
  IdentityClientStatus status_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<CertificateTimes> cert_times_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Time> renew_before_ ABSL_GUARDED_BY(mu_);
  bool renew_hint_changed_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<identity::TrustBundle> pending_bundle_ ABSL_GUARDED_BY(mu_);
  std::optional<tls::DenyList> pending_deny_list_ ABSL_GUARDED_BY(mu_);
  WatchStream* watch_stream_ ABSL_GUARDED_BY(mu_) = nullptr;

  absl::Mutex rng_mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(rng_mu_){std::random_device{}()};

  std::thread renew_thread_;
  std::thread watch_thread_;
};

// === impl IdentityClient ===

absl::StatusOr<std::unique_ptr<IdentityClient>> IdentityClient::Create(
    IdentityClientOptions options, ContextStore* store, ProxyStats* stats) {
  if (options.control_plane_address.empty()) {
    return absl::InvalidArgumentError("the control plane address is required (host:port)");
  }
  if (options.token_file.empty() && options.join_token_file.empty()) {
    return absl::InvalidArgumentError(
        "a credential is required: a service-account token file or a join token file");
  }
  absl::StatusOr<std::string> roots = identity::ReadFileToString(options.root_file);
  if (!roots.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot read the mesh root file to trust the control plane: ", roots.status().message()));
  }
  if (absl::StatusOr<identity::TrustBundle> parsed = identity::TrustBundle::FromPem(*roots);
      !parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", options.root_file, "\": ", parsed.status().message()));
  }
  if (!options.transport) {
    return absl::InvalidArgumentError("no control-plane transport (a program error)");
  }
  std::unique_ptr<ControlPlaneTransport> transport = options.transport(TransportOptions{
      options.control_plane_address, options.control_plane_name, options.transport_log_sink});
  if (transport == nullptr) return absl::InternalError("cannot create the control-plane transport");
  return std::unique_ptr<IdentityClient>(new IdentityClient(std::make_unique<Impl>(
      std::move(options), store, stats, *std::move(roots), std::move(transport))));
}

IdentityClient::IdentityClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

IdentityClient::~IdentityClient() { Stop(); }

void IdentityClient::Start() { impl_->Start(); }

bool IdentityClient::WaitForFirstCertificate(absl::Duration timeout) {
  return impl_->WaitForFirstCertificate(timeout);
}

void IdentityClient::Stop() { impl_->Stop(); }

IdentityClientStatus IdentityClient::status() const { return impl_->status(); }

void IdentityClient::set_on_trust_update(std::function<void(const tls::DenyList&)> callback) {
  impl_->on_trust_update = std::move(callback);
}

}  // namespace trellis::proxy
