#include "control-plane/auth/tokenreview_authenticator.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
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
constexpr size_t kMaxResponseBytes = 1024 * 1024;
// How much of a string from the API server goes into a status message.
constexpr size_t kMaxQuotedBytes = 512;

void CurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Overwrites a string that held a token before it is freed.
void Wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

std::string Sha256(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) {
    return "";
  }
  return std::string(reinterpret_cast<const char*>(digest), len);
}

// Text from the API server made safe for a status message: the token scrubbed (defence in
// depth: the API server does not echo it), truncated.
std::string Quote(absl::string_view text, absl::string_view token) {
  std::string out(text);
  if (!token.empty()) out = absl::StrReplaceAll(out, {{token, "<token>"}});
  if (out.size() > kMaxQuotedBytes) out = absl::StrCat(out.substr(0, kMaxQuotedBytes), "...");
  return out;
}

size_t AppendBody(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* body = static_cast<std::string*>(userdata);
  const size_t n = size * nmemb;
  if (body->size() + n > kMaxResponseBytes) return 0;  // aborts with CURLE_WRITE_ERROR
  body->append(data, n);
  return n;
}

// Reads the control plane's own token: the whole file, surrounding whitespace stripped.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::UnavailableError(absl::StrCat(
        "cannot read the control plane's own token file ", path, ": ", std::strerror(errno),
        " (in a pod it is the service account token mounted at "
        "/var/run/secrets/kubernetes.io/serviceaccount/token)"));
  }
  std::string content;
  content.resize(kMaxTokenBytes + 1);
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  content.resize(static_cast<size_t>(in.gcount()));
  if (content.size() > kMaxTokenBytes) {
    Wipe(content);
    return absl::UnavailableError(absl::StrCat("the control plane's own token file ", path,
                                               " is larger than ", kMaxTokenBytes, " bytes"));
  }
  const absl::string_view stripped = absl::StripAsciiWhitespace(content);
  std::string token(stripped);
  Wipe(content);
  if (token.empty()) {
    return absl::UnavailableError(
        absl::StrCat("the control plane's own token file ", path, " is empty"));
  }
  return token;
}

// The message of a Kubernetes Status object in an error answer, if there is one.
std::string StatusMessage(const std::string& body, absl::string_view token) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    auto it = j.find("message");
    if (it != j.end() && it->is_string()) return Quote(it->get<std::string>(), token);
  }
  return "";
}

}  // namespace

TokenReviewAuthenticator::TokenReviewAuthenticator(TokenReviewOptions options)
    : options_(std::move(options)),
      review_url_(absl::StrCat(options_.api_server_url, kReviewPath)) {}

absl::StatusOr<std::unique_ptr<TokenReviewAuthenticator>> TokenReviewAuthenticator::Create(
    TokenReviewOptions options) {
  while (absl::EndsWith(options.api_server_url, "/")) options.api_server_url.pop_back();
  const absl::string_view url = options.api_server_url;
  if (!absl::StartsWith(url, "https://") || url.size() == 8 ||
      url.find('/', 8) != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TokenReview: the API server URL must be https://HOST[:PORT] without a path, got \"",
        Quote(url, ""), "\""));
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
  CurlGlobalInit();
  return std::unique_ptr<TokenReviewAuthenticator>(
      new TokenReviewAuthenticator(std::move(options)));
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
  absl::StatusOr<std::string> own_token = ReadTokenFile(options_.token_file);
  if (!own_token.ok()) return own_token.status();
  std::string authorization = absl::StrCat("Authorization: Bearer ", *own_token);
  Wipe(*own_token);

  nlohmann::json review = {
      {"apiVersion", "authentication.k8s.io/v1"},
      {"kind", "TokenReview"},
      {"spec", {{"token", std::string(token)}, {"audiences", {options_.audience}}}},
  };
  std::string request_body = review.dump();
  Wipe(review["spec"]["token"].get_ref<std::string&>());

  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    Wipe(authorization);
    Wipe(request_body);
    return absl::UnavailableError("TokenReview: curl_easy_init failed (out of memory?)");
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, authorization.c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Accept: application/json");
  Wipe(authorization);
  std::string response_body;
  char error_buffer[CURL_ERROR_SIZE] = {0};
  absl::Cleanup cleanup = [&] {
    curl_easy_cleanup(curl);
    // curl_slist keeps its own copy of the Authorization header: wipe it too.
    for (curl_slist* h = headers; h != nullptr; h = h->next) {
      OPENSSL_cleanse(h->data, std::strlen(h->data));
    }
    curl_slist_free_all(headers);
    Wipe(request_body);
  };
  const long timeout_ms = static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout));
  curl_easy_setopt(curl, CURLOPT_URL, review_url_.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  // Only the given CA: not the system store, not a proxy from the environment.
  curl_easy_setopt(curl, CURLOPT_CAINFO, options_.ca_file.c_str());
  curl_easy_setopt(curl, CURLOPT_CAPATH, nullptr);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(curl, CURLOPT_PROXY, "");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, std::max(timeout_ms, 1L));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, std::max(timeout_ms, 1L));
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POST, 1L);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request_body.data());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request_body.size()));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response_body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);

  {
    absl::MutexLock lock(&mu_);
    ++requests_sent_;
  }
  const CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) {
    const std::string why = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(rc);
    if (rc == CURLE_OPERATION_TIMEDOUT) {
      return absl::UnavailableError(absl::StrCat(
          "TokenReview: the API server at ", options_.api_server_url, " did not answer within ",
          absl::FormatDuration(options_.request_timeout), " (", why, ")"));
    }
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE) {
      return absl::UnavailableError(
          absl::StrCat("TokenReview: the API server's certificate at ", options_.api_server_url,
                       " does not verify against the CA file ", options_.ca_file, " (", why, ")"));
    }
    if (rc == CURLE_WRITE_ERROR) {
      return absl::UnavailableError(absl::StrCat(
          "TokenReview: the API server's answer is larger than ", kMaxResponseBytes, " bytes"));
    }
    return absl::UnavailableError(absl::StrCat("TokenReview: cannot reach the API server at ",
                                               options_.api_server_url, ": ", why));
  }
  long http_status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http_status);

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
                     error.empty() ? "no reason given" : Quote(error, token)));
  }

  std::vector<std::string> audiences;
  if (auto it = status.find("audiences"); it != status.end() && it->is_array()) {
    for (const auto& a : *it) {
      if (a.is_string()) audiences.push_back(a.get<std::string>());
    }
  }
  if (std::find(audiences.begin(), audiences.end(), options_.audience) == audiences.end()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "TokenReview: the API server did not confirm audience \"", options_.audience,
        "\" for the token (status.audiences: [", Quote(absl::StrJoin(audiences, ", "), token),
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
        "TokenReview: the token is valid but belongs to user \"", Quote(username, token),
        "\", not a service account (system:serviceaccount:NAMESPACE:NAME); only service-account "
        "tokens prove a workload identity"));
  }
  absl::StatusOr<identity::SpiffeId> id =
      identity::SpiffeId::ForKubernetesServiceAccount(options_.trust_domain, parts[0], parts[1]);
  if (!id.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("TokenReview: service account \"", Quote(username, token),
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
