#include "control-plane/auth/tokenreview_authenticator.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/identity/spiffe_id.h"

namespace trellis::control_plane {
namespace {

constexpr absl::string_view kReviewPath = "/apis/authentication.k8s.io/v1/tokenreviews";
constexpr absl::string_view kServiceAccountPrefix = "system:serviceaccount:";
constexpr absl::string_view kPodNameExtra = "authentication.kubernetes.io/pod-name";
// Kubernetes tokens are about 1 KiB; anything much larger is not one.
constexpr size_t kMaxTokenBytes = 64 * 1024;

std::string Sha256(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) {
    return "";
  }
  return std::string(reinterpret_cast<const char*>(digest), len);
}

// The message of a Kubernetes Status object in an error answer, if there is one.
std::string StatusMessage(const std::string& body, absl::string_view token) {
  return kube::QuoteForMessage(kube::StatusMessage(body), token);
}

}  // namespace

TokenReviewAuthenticator::TokenReviewAuthenticator(TokenReviewOptions options,
                                                   std::unique_ptr<kube::KubeApiClient> api)
    : options_(std::move(options)), api_(std::move(api)) {}

absl::StatusOr<std::unique_ptr<TokenReviewAuthenticator>> TokenReviewAuthenticator::Create(
    TokenReviewOptions options) {
  while (absl::EndsWith(options.api_server_url, "/")) options.api_server_url.pop_back();
  const absl::string_view url = options.api_server_url;
  if (!absl::StartsWith(url, "https://") || url.size() == 8 ||
      url.find('/', 8) != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TokenReview: the API server URL must be https://HOST[:PORT] without a path, got \"",
        kube::QuoteForMessage(url, ""), "\""));
  }
  if (options.ca_file.empty()) {
    return absl::InvalidArgumentError("TokenReview: no CA file for the API server was given");
  }
  if (std::FILE* f = std::fopen(options.ca_file.c_str(), "rb")) {
    std::fclose(f);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("TokenReview: cannot read the API server's CA file ", options.ca_file, ": ",
                     std::strerror(errno)));
  }
  if (options.token_file.empty()) {
    return absl::InvalidArgumentError(
        "TokenReview: no token file for the control plane's own credentials was given");
  }
  if (options.audience.empty()) {
    return absl::InvalidArgumentError("TokenReview: the audience must not be empty");
  }
  if (absl::Status s = identity::ValidateTrustDomain(options.trust_domain); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("TokenReview: ", s.message()));
  }
  if (options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TokenReview: the request timeout must be positive");
  }
  if (!options.clock) options.clock = [] { return absl::Now(); };
  kube::KubeApiConfig config;
  config.server_url = options.api_server_url;
  config.ca_file = options.ca_file;
  config.token_file = options.token_file;
  config.request_timeout = options.request_timeout;
  absl::StatusOr<std::unique_ptr<kube::KubeApiClient>> api =
      kube::KubeApiClient::Create(std::move(config));
  if (!api.ok())
    return absl::InvalidArgumentError(absl::StrCat("TokenReview: ", api.status().message()));
  return std::unique_ptr<TokenReviewAuthenticator>(
      new TokenReviewAuthenticator(std::move(options), *std::move(api)));
}

absl::StatusOr<TokenReviewOptions> TokenReviewAuthenticator::InClusterOptions(
    TokenReviewOptions base, absl::string_view service_account_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    return absl::FailedPreconditionError(
        "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
        "are not set; give the API server URL, CA file and token file explicitly");
  }
  const absl::string_view h = host;
  const bool ipv6 = absl::StrContains(h, ':') && !absl::StartsWith(h, "[");
  base.api_server_url = absl::StrCat("https://", ipv6 ? "[" : "", h, ipv6 ? "]" : "", ":", port);
  base.ca_file = absl::StrCat(service_account_dir, "/ca.crt");
  base.token_file = absl::StrCat(service_account_dir, "/token");
  return base;
}

absl::StatusOr<std::unique_ptr<TokenReviewAuthenticator>> TokenReviewAuthenticator::FromInCluster(
    TokenReviewOptions base) {
  absl::StatusOr<TokenReviewOptions> options = InClusterOptions(std::move(base));
  if (!options.ok()) return options.status();
  return Create(*std::move(options));
}

uint64_t TokenReviewAuthenticator::requests_sent() const {
  absl::MutexLock lock(&mu_);
  return requests_sent_;
}

absl::StatusOr<AuthenticatedIdentity> TokenReviewAuthenticator::Authenticate(
    absl::string_view credential) {
  if (credential.empty()) {
    return absl::UnauthenticatedError("TokenReview: no Kubernetes service-account token was given");
  }
  if (credential.size() > kMaxTokenBytes) {
    return absl::UnauthenticatedError(absl::StrCat("TokenReview: the token is ", credential.size(),
                                                   " bytes, more than any Kubernetes token"));
  }
  const bool caching = options_.cache_ttl > absl::ZeroDuration() && options_.cache_max_entries > 0;
  std::string key;
  if (caching) {
    key = Sha256(credential);
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      if (options_.clock() < it->second.expires) return it->second.identity;
      cache_.erase(it);
    }
  }
  absl::StatusOr<AuthenticatedIdentity> result = Review(credential);
  if (caching && result.ok() && !key.empty()) CachePut(key, *result);
  return result;
}

void TokenReviewAuthenticator::CachePut(const std::string& key,
                                        const AuthenticatedIdentity& identity) {
  const absl::Time now = options_.clock();
  absl::MutexLock lock(&mu_);
  if (!cache_.contains(key) && cache_.size() >= options_.cache_max_entries) {
    absl::erase_if(cache_, [now](const auto& kv) { return kv.second.expires <= now; });
    if (cache_.size() >= options_.cache_max_entries) {
      auto oldest = std::min_element(
          cache_.begin(), cache_.end(),
          [](const auto& a, const auto& b) { return a.second.expires < b.second.expires; });
      cache_.erase(oldest);
    }
  }
  cache_.insert_or_assign(key, CacheEntry{identity, now + options_.cache_ttl});
}

absl::StatusOr<AuthenticatedIdentity> TokenReviewAuthenticator::Review(absl::string_view token) {
  nlohmann::json review = {
      {"apiVersion", "authentication.k8s.io/v1"},
      {"kind", "TokenReview"},
      {"spec", {{"token", std::string(token)}, {"audiences", {options_.audience}}}},
  };
  std::string request_body = review.dump();
  kube::WipeSecret(review["spec"]["token"].get_ref<std::string&>());
  {
    absl::MutexLock lock(&mu_);
    ++requests_sent_;
  }
  absl::StatusOr<kube::KubeResponse> response = api_->Call("POST", kReviewPath, request_body);
  kube::WipeSecret(request_body);
  if (!response.ok()) {
    return absl::UnavailableError(
        absl::StrCat("TokenReview: ", kube::QuoteForMessage(response.status().message(), token)));
  }
  const long http_status = response->http_status;
  const std::string& response_body = response->body;

  if (http_status == 401 || http_status == 403) {
    const std::string message = StatusMessage(response_body, token);
    return absl::UnavailableError(absl::StrCat(
        "TokenReview: the API server refused the control plane's own credentials (HTTP ",
        http_status, message.empty() ? "" : ": ", message,
        "): the control plane's RBAC is missing `create tokenreviews` (a ClusterRole with "
        "apiGroups [authentication.k8s.io], resources [tokenreviews], verbs [create], bound to "
        "its service account)",
        http_status == 401 ? absl::StrCat(", or its token file ", options_.token_file,
                                          " holds an expired or unknown token")
                           : ""));
  }
  if (http_status != 200 && http_status != 201) {
    const std::string message = StatusMessage(response_body, token);
    return absl::UnavailableError(absl::StrCat("TokenReview: the API server answered HTTP ",
                                               http_status, message.empty() ? "" : ": ", message));
  }

  const auto string_field = [](const nlohmann::json& object, const char* key) -> std::string {
    auto it = object.find(key);
    return it != object.end() && it->is_string() ? it->get<std::string>() : "";
  };
  const nlohmann::json answer =
      nlohmann::json::parse(response_body, nullptr, /*allow_exceptions=*/false);
  if (!answer.is_object() || string_field(answer, "kind") != "TokenReview" ||
      !answer.contains("status") || !answer["status"].is_object()) {
    return absl::UnavailableError(absl::StrCat("TokenReview: the API server's answer (HTTP ",
                                               http_status, ", ", response_body.size(),
                                               " bytes) is not a TokenReview with a status"));
  }
  const nlohmann::json& status = answer["status"];
  auto authenticated = status.find("authenticated");
  if (authenticated == status.end() || !authenticated->is_boolean() ||
      !authenticated->get<bool>()) {
    const std::string error = string_field(status, "error");
    return absl::UnauthenticatedError(
        absl::StrCat("TokenReview: the API server did not accept the token: ",
                     error.empty() ? "no reason given" : kube::QuoteForMessage(error, token)));
  }

  std::vector<std::string> audiences;
  if (auto it = status.find("audiences"); it != status.end() && it->is_array()) {
    for (const auto& a : *it) {
      if (a.is_string()) audiences.push_back(a.get<std::string>());
    }
  }
  if (std::find(audiences.begin(), audiences.end(), options_.audience) == audiences.end()) {
    return absl::UnauthenticatedError(
        absl::StrCat("TokenReview: the API server did not confirm audience \"", options_.audience,
                     "\" for the token (status.audiences: [",
                     kube::QuoteForMessage(absl::StrJoin(audiences, ", "), token),
                     "]); mint the token with audience \"", options_.audience, "\""));
  }

  static const nlohmann::json kEmpty = nlohmann::json::object();
  auto user_it = status.find("user");
  const nlohmann::json& user = user_it != status.end() && user_it->is_object() ? *user_it : kEmpty;
  const std::string username = string_field(user, "username");
  std::vector<absl::string_view> parts;
  if (absl::StartsWith(username, kServiceAccountPrefix)) {
    parts = absl::StrSplit(absl::string_view(username).substr(kServiceAccountPrefix.size()), ':');
  }
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "TokenReview: the token is valid but belongs to user \"",
        kube::QuoteForMessage(username, token),
        "\", not a service account (system:serviceaccount:NAMESPACE:NAME); only service-account "
        "tokens prove a workload identity"));
  }
  absl::StatusOr<identity::SpiffeId> id =
      identity::SpiffeId::ForKubernetesServiceAccount(options_.trust_domain, parts[0], parts[1]);
  if (!id.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("TokenReview: service account \"", kube::QuoteForMessage(username, token),
                     "\" does not make a SPIFFE ID: ", id.status().message()));
  }

  AuthenticatedIdentity result{*std::move(id), std::string(name()), ""};
  if (auto extra = user.find("extra"); extra != user.end() && extra->is_object()) {
    if (auto pod = extra->find(std::string(kPodNameExtra));
        pod != extra->end() && pod->is_array() && !pod->empty() && (*pod)[0].is_string()) {
      result.detail = (*pod)[0].get<std::string>();
    }
  }
  return result;
}

}  // namespace trellis::control_plane
