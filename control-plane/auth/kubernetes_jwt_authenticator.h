#pragma once

// Offline checking of Kubernetes projected service-account tokens: the token's signature is
// verified against the cluster issuer's public keys (a JWKS file, e.g. from
// `kubectl get --raw /openid/v1/jwks`), and its claims against the configured issuer, audience and
// the clock. No call to the API server is made, so a token of a deleted pod stays valid until it
// expires (use short token lifetimes, or the TokenReview authenticator where that matters).

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "control-plane/auth/authenticator.h"
#include "control-plane/auth/jwks.h"

namespace trellis::control_plane {

struct KubernetesJwtAuthenticatorOptions {
  // The trust domain of the SPIFFE IDs issued: spiffe://<trust_domain>/ns/<ns>/sa/<sa>.
  std::string trust_domain = "cluster.local";
  // The token's "iss" must equal one of these: the cluster's service-account issuer
  // (kube-apiserver --service-account-issuer; `kubectl get --raw /.well-known/openid-configuration`
  // shows it).
  std::vector<std::string> issuers = {"https://kubernetes.default.svc.cluster.local"};
  // The token's "aud" (a string or an array of strings) must contain this.
  std::string audience = "trellis";
  // How far exp, nbf and iat may be off: a token is still accepted this long after exp, and this
  // long before nbf/iat. At most 10 minutes.
  absl::Duration clock_skew = absl::Seconds(60);
  // The current time; absl::Now when empty.
  std::function<absl::Time()> clock;
  // The issuer's JWKS file. Re-read when its size, mtime or inode changes, checked at most once
  // per `reload_interval` (measured with `clock`).
  std::string jwks_path;
  absl::Duration reload_interval = absl::Seconds(1);
  // Called (from the thread that noticed) after every reload attempt of a changed file: OK with a
  // new key set, or the error while the last good key set stays in use. May be empty.
  std::function<void(const absl::Status&)> on_reload;
};

// Thread-safe.
class KubernetesJwtAuthenticator : public Authenticator {
 public:
  // Validates the options and reads the JWKS file. InvalidArgument for bad options, or the error
  // of the first read (NotFound, InvalidArgument, ...): the authenticator cannot start without a
  // usable key.
  static absl::StatusOr<std::unique_ptr<KubernetesJwtAuthenticator>> Create(
      KubernetesJwtAuthenticatorOptions options);

  // Verifies a projected service-account token and returns
  // spiffe://<trust_domain>/ns/<namespace>/sa/<service account>, with the pod name as detail.
  // Every refusal is UNAUTHENTICATED, saying what was wrong and what to fix, never quoting the
  // token. Checks, in this order: the signature (JwksKeySet / VerifyJwt), "iss", "aud", "exp"
  // (required), "nbf" and "iat" (if present), then the identity: the "kubernetes.io" claim's
  // namespace and serviceaccount.name, or, when "kubernetes.io" is absent, "sub" of the form
  // system:serviceaccount:<namespace>:<name>.
  absl::StatusOr<AuthenticatedIdentity> Authenticate(absl::string_view credential) override;

  absl::string_view name() const override { return "kubernetes_jwt"; }

  // Checks the JWKS file now, whatever the interval, and reloads it if it changed. Returns the
  // result of that reload (OK if nothing changed).
  absl::Status CheckJwksFile();

  // OK if the key set in use is the file's current content, else the error of the last reload.
  absl::Status last_reload_status() const;

  // The key set in use.
  std::shared_ptr<const JwksKeySet> key_set() const;

 private:
  // What identifies one version of the JWKS file.
  struct FileStamp {
    bool exists = false;
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const FileStamp& o) const {
      return exists == o.exists && device == o.device && inode == o.inode && size == o.size &&
             mtime_ns == o.mtime_ns;
    }
  };

  explicit KubernetesJwtAuthenticator(KubernetesJwtAuthenticatorOptions options);

  absl::Time Now() const;
  // Re-reads the file if the interval has passed; never blocks on another thread's reload.
  void MaybeReload();
  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);

  const KubernetesJwtAuthenticatorOptions options_;

  // Held while checking and reading the file (one thread at a time; others go on with the
  // current key set).
  absl::Mutex reload_mu_;
  FileStamp stamp_ ABSL_GUARDED_BY(reload_mu_);

  mutable absl::Mutex mu_;
  std::shared_ptr<const JwksKeySet> keys_ ABSL_GUARDED_BY(mu_);
  absl::Status last_reload_status_ ABSL_GUARDED_BY(mu_);
  absl::Time next_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace trellis::control_plane
