#include "control-plane/auth/kubernetes_jwt_authenticator.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/identity/spiffe_id.h"
#include "control-plane/auth/jwt.h"

namespace trellis::control_plane {
namespace {

using json = nlohmann::json;

constexpr absl::string_view kRefusalPrefix = "kubernetes service-account token rejected: ";
constexpr absl::string_view kServiceAccountSubPrefix = "system:serviceaccount:";
constexpr absl::Duration kMaxClockSkew = absl::Minutes(10);
// 9999-12-31T23:59:59Z: NumericDates beyond it are refused rather than overflowing.
constexpr int64_t kMaxNumericDate = 253402300799;
constexpr size_t kMaxListedAudiences = 5;
constexpr size_t kMaxPodNameBytes = 253;

absl::Status Refuse(absl::string_view what) {
  return absl::UnauthenticatedError(absl::StrCat(kRefusalPrefix, what));
}

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

// "\"a\"" for a string form, "[\"a\", \"b\"]" for an array (at most a few entries).
std::string DescribeAudience(const json& aud) {
  if (aud.is_string()) return QuoteUntrusted(aud.get_ref<const std::string&>());
  std::vector<std::string> quoted;
  for (const json& a : aud) {
    if (quoted.size() == kMaxListedAudiences) {
      quoted.push_back(absl::StrCat("... (", aud.size(), " in all)"));
      break;
    }
    quoted.push_back(QuoteUntrusted(a.get_ref<const std::string&>()));
  }
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

// A NumericDate claim (RFC 7519 section 2): seconds since the epoch, integer or not.
// std::nullopt when absent; a refusal when present but not a plausible date.
absl::StatusOr<std::optional<absl::Time>> NumericDate(const json& claims, const char* name) {
  auto it = claims.find(name);
  if (it == claims.end()) return std::nullopt;
  const json& v = *it;
  bool in_range = false;
  absl::Time t;
  if (v.is_number_unsigned()) {
    const uint64_t s = v.get<uint64_t>();
    in_range = s <= static_cast<uint64_t>(kMaxNumericDate);
    if (in_range) t = absl::FromUnixSeconds(static_cast<int64_t>(s));
  } else if (v.is_number_integer()) {
    const int64_t s = v.get<int64_t>();
    in_range = s >= 0 && s <= kMaxNumericDate;
    if (in_range) t = absl::FromUnixSeconds(s);
  } else if (v.is_number_float()) {
    const double s = v.get<double>();
    in_range = std::isfinite(s) && s >= 0 && s <= static_cast<double>(kMaxNumericDate);
    if (in_range) t = absl::FromUnixMicros(static_cast<int64_t>(s * 1e6));
  } else {
    return Refuse(absl::StrCat("token claim \"", name,
                               "\" is not a number (a NumericDate: seconds since 1970)"));
  }
  if (!in_range) {
    return Refuse(absl::StrCat("token claim \"", name, "\" is out of range for a date"));
  }
  return t;
}

// A string member of the object `parent`, or nullptr if absent or not a string.
const std::string* StringMember(const json& parent, const char* name) {
  if (!parent.is_object()) return nullptr;
  auto it = parent.find(name);
  if (it == parent.end() || !it->is_string()) return nullptr;
  return &it->get_ref<const std::string&>();
}

const json* ObjectMember(const json& parent, const char* name) {
  if (!parent.is_object()) return nullptr;
  auto it = parent.find(name);
  if (it == parent.end() || !it->is_object()) return nullptr;
  return &*it;
}

struct ServiceAccountClaims {
  std::string ns;
  std::string service_account;
  std::string pod;  // "" if the token is not bound to a pod
};

absl::StatusOr<ServiceAccountClaims> IdentityClaims(const json& claims) {
  ServiceAccountClaims result;
  // "sub" as system:serviceaccount:<ns>:<sa>, if it has that form.
  std::optional<std::pair<std::string, std::string>> from_sub;
  if (const std::string* sub = StringMember(claims, "sub");
      sub != nullptr && absl::StartsWith(*sub, kServiceAccountSubPrefix)) {
    std::vector<std::string> parts =
        absl::StrSplit(absl::string_view(*sub).substr(kServiceAccountSubPrefix.size()), ':');
    if (parts.size() == 2) from_sub.emplace(parts[0], parts[1]);
  }

  auto k8s = claims.find("kubernetes.io");
  if (k8s == claims.end()) {
    if (!from_sub.has_value()) {
      return Refuse(
          "token has neither a \"kubernetes.io\" claim nor a \"sub\" of the form "
          "system:serviceaccount:<namespace>:<name>: only Kubernetes service-account tokens are "
          "accepted here");
    }
    result.ns = from_sub->first;
    result.service_account = from_sub->second;
    return result;
  }
  if (!k8s->is_object()) return Refuse("token claim \"kubernetes.io\" is not a JSON object");
  const std::string* ns = StringMember(*k8s, "namespace");
  if (ns == nullptr) {
    return Refuse(
        "token claim \"kubernetes.io\" has no string \"namespace\": only Kubernetes "
        "service-account tokens are accepted here");
  }
  const json* sa = ObjectMember(*k8s, "serviceaccount");
  const std::string* sa_name = sa == nullptr ? nullptr : StringMember(*sa, "name");
  if (sa_name == nullptr) {
    return Refuse(
        "token claim \"kubernetes.io\" has no string \"serviceaccount.name\": only Kubernetes "
        "service-account tokens are accepted here");
  }
  if (from_sub.has_value() && (from_sub->first != *ns || from_sub->second != *sa_name)) {
    return Refuse(
        "token \"sub\" and \"kubernetes.io\" claims name different service accounts; the "
        "issuer is not a Kubernetes API server");
  }
  result.ns = *ns;
  result.service_account = *sa_name;
  if (const json* pod = ObjectMember(*k8s, "pod"); pod != nullptr) {
    if (const std::string* pod_name = StringMember(*pod, "name"); pod_name != nullptr) {
      result.pod = absl::CHexEscape(absl::string_view(*pod_name).substr(0, kMaxPodNameBytes));
    }
  }
  return result;
}

// Reads at most kMaxJwksSize + 1 bytes of `path` and the stamp of what was read.
absl::Status ReadJwksFile(const std::string& path, std::string* content, struct stat* st) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(
        err == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kFailedPrecondition,
        absl::StrCat("cannot open JWKS file ", path, ": ", std::strerror(err)));
  }
  absl::Status status;
  if (fstat(fd, st) != 0) {
    status = absl::FailedPreconditionError(
        absl::StrCat("cannot stat JWKS file ", path, ": ", std::strerror(errno)));
  }
  content->clear();
  char buf[16384];
  while (status.ok() && content->size() <= kMaxJwksSize) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = absl::FailedPreconditionError(
          absl::StrCat("cannot read JWKS file ", path, ": ", std::strerror(errno)));
    }
    if (n <= 0) break;
    content->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return status;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KubernetesJwtAuthenticator>> KubernetesJwtAuthenticator::Create(
    KubernetesJwtAuthenticatorOptions options) {
  if (absl::Status s = identity::ValidateTrustDomain(options.trust_domain); !s.ok()) return s;
  if (options.issuers.empty()) {
    return absl::InvalidArgumentError(
        "kubernetes_jwt: no expected issuer: set it to the cluster's service-account issuer "
        "(kube-apiserver --service-account-issuer)");
  }
  for (const std::string& issuer : options.issuers) {
    if (issuer.empty()) return absl::InvalidArgumentError("kubernetes_jwt: an issuer is empty");
  }
  if (options.audience.empty()) {
    return absl::InvalidArgumentError("kubernetes_jwt: the audience is empty");
  }
  if (options.clock_skew < absl::ZeroDuration() || options.clock_skew > kMaxClockSkew) {
    return absl::InvalidArgumentError(absl::StrCat("kubernetes_jwt: clock skew ",
                                                   absl::FormatDuration(options.clock_skew),
                                                   " is outside 0s..10m"));
  }
  if (options.reload_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("kubernetes_jwt: the JWKS reload interval is negative");
  }
  if (options.jwks_path.empty()) {
    return absl::InvalidArgumentError(
        "kubernetes_jwt: no JWKS file: save `kubectl get --raw /openid/v1/jwks` to a file and "
        "name it");
  }
  std::unique_ptr<KubernetesJwtAuthenticator> auth(
      new KubernetesJwtAuthenticator(std::move(options)));
  {
    absl::MutexLock lock(&auth->reload_mu_);
    if (absl::Status s = auth->ReloadLocked(); !s.ok()) return s;
  }
  absl::MutexLock lock(&auth->mu_);
  auth->next_check_ = auth->Now() + auth->options_.reload_interval;
  return auth;
}

KubernetesJwtAuthenticator::KubernetesJwtAuthenticator(KubernetesJwtAuthenticatorOptions options)
    : options_(std::move(options)) {}

absl::Time KubernetesJwtAuthenticator::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

absl::Status KubernetesJwtAuthenticator::ReloadLocked() {
  FileStamp stamp;
  struct stat st;
  if (stat(options_.jwks_path.c_str(), &st) == 0) {
    stamp.exists = true;
    stamp.device = st.st_dev;
    stamp.inode = st.st_ino;
    stamp.size = st.st_size;
    stamp.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  }
  {
    absl::MutexLock lock(&mu_);
    if (keys_ != nullptr && stamp == stamp_) return absl::OkStatus();  // unchanged
  }
  stamp_ = stamp;

  std::string content;
  absl::Status status = ReadJwksFile(options_.jwks_path, &content, &st);
  std::shared_ptr<const JwksKeySet> keys;
  if (status.ok()) {
    absl::StatusOr<JwksKeySet> parsed = JwksKeySet::Parse(content);
    if (parsed.ok()) {
      keys = std::make_shared<const JwksKeySet>(*std::move(parsed));
    } else {
      status = absl::Status(parsed.status().code(), absl::StrCat("JWKS file ", options_.jwks_path,
                                                                 ": ", parsed.status().message()));
    }
  }
  bool had_keys;
  {
    absl::MutexLock lock(&mu_);
    had_keys = keys_ != nullptr;
    if (keys != nullptr) keys_ = std::move(keys);
    last_reload_status_ =
        status.ok() || !had_keys
            ? status
            : absl::Status(status.code(),
                           absl::StrCat(status.message(), " (keeping the last good key set)"));
    status = last_reload_status_;
  }
  if (had_keys && options_.on_reload) options_.on_reload(status);
  return status;
}

void KubernetesJwtAuthenticator::MaybeReload() {
  const absl::Time now = Now();
  {
    absl::MutexLock lock(&mu_);
    // The second test catches a clock that went backwards.
    if (now < next_check_ && now >= next_check_ - options_.reload_interval) return;
    next_check_ = now + options_.reload_interval;
  }
  if (!reload_mu_.TryLock()) return;  // another thread is reloading; use the current keys
  ReloadLocked().IgnoreError();       // reported through on_reload and last_reload_status()
  reload_mu_.Unlock();
}

absl::Status KubernetesJwtAuthenticator::CheckJwksFile() {
  absl::MutexLock lock(&reload_mu_);
  return ReloadLocked();
}

absl::Status KubernetesJwtAuthenticator::last_reload_status() const {
  absl::MutexLock lock(&mu_);
  return last_reload_status_;
}

std::shared_ptr<const JwksKeySet> KubernetesJwtAuthenticator::key_set() const {
  absl::MutexLock lock(&mu_);
  return keys_;
}

absl::StatusOr<AuthenticatedIdentity> KubernetesJwtAuthenticator::Authenticate(
    absl::string_view credential) {
  MaybeReload();
  const std::shared_ptr<const JwksKeySet> keys = key_set();
  absl::StatusOr<VerifiedJwt> jwt = VerifyJwt(credential, *keys);
  if (!jwt.ok()) return Refuse(jwt.status().message());
  const json& claims = jwt->claims;

  // Issuer.
  const std::string* iss = StringMember(claims, "iss");
  if (iss == nullptr) return Refuse("token has no string \"iss\" (issuer) claim");
  if (std::find(options_.issuers.begin(), options_.issuers.end(), *iss) == options_.issuers.end()) {
    std::vector<std::string> expected;
    for (const std::string& i : options_.issuers) expected.push_back(QuoteUntrusted(i));
    return Refuse(absl::StrCat(
        "token issuer ", QuoteUntrusted(*iss), " is not trusted (expected ",
        absl::StrJoin(expected, " or "),
        "): the token comes from another cluster, or the expected issuer is misconfigured (it must "
        "equal kube-apiserver --service-account-issuer)"));
  }

  // Audience.
  const std::string projected_hint = absl::StrCat(
      "mount a projected service-account token with audience ", QuoteUntrusted(options_.audience));
  auto aud = claims.find("aud");
  if (aud == claims.end()) {
    return Refuse(absl::StrCat("token has no \"aud\" (audience) claim: ", projected_hint));
  }
  bool aud_ok = aud->is_string();
  bool aud_match = aud_ok && aud->get_ref<const std::string&>() == options_.audience;
  if (aud->is_array()) {
    aud_ok = true;
    for (const json& a : *aud) {
      if (!a.is_string()) {
        aud_ok = false;
        break;
      }
      if (a.get_ref<const std::string&>() == options_.audience) aud_match = true;
    }
  }
  if (!aud_ok) {
    return Refuse("token \"aud\" claim is neither a string nor an array of strings");
  }
  if (!aud_match) {
    return Refuse(absl::StrCat("token audience ", DescribeAudience(*aud), " does not include ",
                               QuoteUntrusted(options_.audience), ": ", projected_hint));
  }

  // Lifetime.
  const absl::Time now = Now();
  const absl::Duration skew = options_.clock_skew;
  absl::StatusOr<std::optional<absl::Time>> exp = NumericDate(claims, "exp");
  if (!exp.ok()) return exp.status();
  if (!exp->has_value()) {
    return Refuse(absl::StrCat(
        "token has no \"exp\" (expiry) claim; tokens that never expire (legacy Secret-based "
        "service-account tokens) are not accepted: ",
        projected_hint));
  }
  if (now > **exp + skew) {
    return Refuse(absl::StrCat("token expired at ", Rfc3339(**exp), " (now ", Rfc3339(now),
                               ", clock skew allowed ", absl::FormatDuration(skew),
                               "): use a fresh projected token (the kubelet rotates it; re-read "
                               "the token file for every request), and check the clocks"));
  }
  absl::StatusOr<std::optional<absl::Time>> nbf = NumericDate(claims, "nbf");
  if (!nbf.ok()) return nbf.status();
  if (nbf->has_value() && now + skew < **nbf) {
    return Refuse(absl::StrCat("token is not valid before ", Rfc3339(**nbf), " (now ", Rfc3339(now),
                               ", clock skew allowed ", absl::FormatDuration(skew),
                               "): check the clocks of the node and the control plane"));
  }
  absl::StatusOr<std::optional<absl::Time>> iat = NumericDate(claims, "iat");
  if (!iat.ok()) return iat.status();
  if (iat->has_value() && now + skew < **iat) {
    return Refuse(absl::StrCat("token was issued in the future, at ", Rfc3339(**iat), " (now ",
                               Rfc3339(now), ", clock skew allowed ", absl::FormatDuration(skew),
                               "): check the clocks of the node and the control plane"));
  }

  // Identity.
  absl::StatusOr<ServiceAccountClaims> sa = IdentityClaims(claims);
  if (!sa.ok()) return sa.status();
  absl::StatusOr<identity::SpiffeId> id = identity::SpiffeId::ForKubernetesServiceAccount(
      options_.trust_domain, sa->ns, sa->service_account);
  if (!id.ok()) {
    return Refuse(absl::StrCat("token names namespace ", QuoteUntrusted(sa->ns),
                               " and service account ", QuoteUntrusted(sa->service_account),
                               ", which are not valid Kubernetes names: ", id.status().message()));
  }
  AuthenticatedIdentity result{*std::move(id), std::string(name()), ""};
  if (!sa->pod.empty()) result.detail = absl::StrCat(sa->ns, "/", sa->pod);
  return result;
}

}  // namespace trellis::control_plane
