#include "control-plane/kube/kube_api.h"

#include <curl/curl.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace trellis::control_plane::kube {
namespace {

// Kubernetes tokens are about 1 KiB; anything much larger is not one.
constexpr size_t kMaxTokenBytes = 64 * 1024;
// A namespace list of a few thousand namespaces fits; anything larger is refused, not buffered.
constexpr size_t kMaxResponseBytes = 4 * 1024 * 1024;
constexpr size_t kMaxQuotedBytes = 512;

void CurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t AppendBody(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* body = static_cast<std::string*>(userdata);
  const size_t n = size * nmemb;
  if (body->size() + n > kMaxResponseBytes) return 0;  // aborts with CURLE_WRITE_ERROR
  body->append(data, n);
  return n;
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::UnavailableError(
        absl::StrCat("cannot read the control plane's own token file ", path, ": ",
                     std::strerror(errno), " (in a pod it is the service-account token mounted at ",
                     kServiceAccountDir, "/token; is automountServiceAccountToken off?)"));
  }
  std::string content(kMaxTokenBytes + 1, '\0');
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  content.resize(static_cast<size_t>(in.gcount()));
  if (content.size() > kMaxTokenBytes) {
    WipeSecret(content);
    return absl::UnavailableError(absl::StrCat("the control plane's own token file ", path,
                                               " is larger than ", kMaxTokenBytes, " bytes"));
  }
  std::string token(absl::StripAsciiWhitespace(content));
  WipeSecret(content);
  if (token.empty()) {
    return absl::UnavailableError(
        absl::StrCat("the control plane's own token file ", path, " is empty"));
  }
  return token;
}

}  // namespace

absl::StatusOr<KubeApiConfig> InClusterConfig(absl::string_view service_account_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    return absl::FailedPreconditionError(
        "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
        "are not set; give --kube_api_server, --kube_ca_file and --kube_token_file instead");
  }
  const absl::string_view h = host;
  const bool ipv6 = absl::StrContains(h, ':') && !absl::StartsWith(h, "[");
  KubeApiConfig config;
  config.server_url = absl::StrCat("https://", ipv6 ? "[" : "", h, ipv6 ? "]" : "", ":", port);
  config.ca_file = absl::StrCat(service_account_dir, "/ca.crt");
  config.token_file = absl::StrCat(service_account_dir, "/token");
  return config;
}

absl::StatusOr<std::unique_ptr<KubeApiClient>> KubeApiClient::Create(KubeApiConfig config) {
  while (absl::EndsWith(config.server_url, "/")) config.server_url.pop_back();
  const absl::string_view url = config.server_url;
  if (!absl::StartsWith(url, "https://") || url.size() == 8 ||
      url.find('/', 8) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("Kubernetes API: the server URL must be https://HOST[:PORT] without a "
                     "path, got \"",
                     url.substr(0, kMaxQuotedBytes), "\""));
  }
  if (config.ca_file.empty()) {
    return absl::InvalidArgumentError("Kubernetes API: no CA file for the API server was given");
  }
  if (std::FILE* f = std::fopen(config.ca_file.c_str(), "rb")) {
    std::fclose(f);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("Kubernetes API: cannot read the API server's CA file ", config.ca_file, ": ",
                     std::strerror(errno)));
  }
  if (config.token_file.empty()) {
    return absl::InvalidArgumentError(
        "Kubernetes API: no token file for the control plane's own credentials was given");
  }
  if (config.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Kubernetes API: the request timeout must be positive");
  }
  CurlGlobalInit();
  return std::unique_ptr<KubeApiClient>(new KubeApiClient(std::move(config)));
}

absl::StatusOr<KubeResponse> KubeApiClient::Call(absl::string_view method, absl::string_view path,
                                                 absl::string_view body) {
  if (!absl::StartsWith(path, "/")) {
    return absl::InvalidArgumentError(absl::StrCat("Kubernetes API: bad path \"", path, "\""));
  }
  absl::StatusOr<std::string> token = ReadToken(config_.token_file);
  if (!token.ok()) return token.status();
  std::string authorization = absl::StrCat("Authorization: Bearer ", *token);
  WipeSecret(*token);

  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    WipeSecret(authorization);
    return absl::UnavailableError("Kubernetes API: curl_easy_init failed (out of memory?)");
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, authorization.c_str());
  headers = curl_slist_append(headers, "Accept: application/json");
  if (!body.empty()) headers = curl_slist_append(headers, "Content-Type: application/json");
  WipeSecret(authorization);
  absl::Cleanup cleanup = [&] {
    curl_easy_cleanup(curl);
    // curl_slist keeps its own copy of the Authorization header: wipe it too.
    for (curl_slist* h = headers; h != nullptr; h = h->next) {
      OPENSSL_cleanse(h->data, std::strlen(h->data));
    }
    curl_slist_free_all(headers);
  };
  const std::string url = absl::StrCat(config_.server_url, path);
  const std::string verb(method);
  KubeResponse response;
  char error_buffer[CURL_ERROR_SIZE] = {0};
  const long timeout_ms =
      std::max(1L, static_cast<long>(absl::ToInt64Milliseconds(config_.request_timeout)));
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  // Only the given CA: not the system store, not a proxy from the environment.
  curl_easy_setopt(curl, CURLOPT_CAINFO, config_.ca_file.c_str());
  curl_easy_setopt(curl, CURLOPT_CAPATH, nullptr);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(curl, CURLOPT_PROXY, "");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  if (verb == "GET") {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, verb.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response.body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);

  const CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) {
    const std::string why = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(rc);
    if (rc == CURLE_OPERATION_TIMEDOUT) {
      return absl::UnavailableError(
          absl::StrCat("Kubernetes API: ", verb, " ", path, ": the API server at ",
                       config_.server_url, " did not answer within ",
                       absl::FormatDuration(config_.request_timeout), " (", why, ")"));
    }
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE) {
      return absl::UnavailableError(
          absl::StrCat("Kubernetes API: the API server's certificate at ", config_.server_url,
                       " does not verify against the CA file ", config_.ca_file, " (", why, ")"));
    }
    if (rc == CURLE_WRITE_ERROR) {
      return absl::UnavailableError(absl::StrCat("Kubernetes API: ", verb, " ", path,
                                                 ": the answer is larger than ", kMaxResponseBytes,
                                                 " bytes"));
    }
    return absl::UnavailableError(absl::StrCat("Kubernetes API: cannot reach the API server at ",
                                               config_.server_url, ": ", why));
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.http_status);
  return response;
}

std::string StatusMessage(absl::string_view body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return "";
  auto it = j.find("message");
  if (it == j.end() || !it->is_string()) return "";
  std::string message = it->get<std::string>();
  if (message.size() > kMaxQuotedBytes)
    message = absl::StrCat(message.substr(0, kMaxQuotedBytes), "...");
  return message;
}

void WipeSecret(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

std::string QuoteForMessage(absl::string_view text, absl::string_view secret) {
  std::string out(text);
  if (!secret.empty()) out = absl::StrReplaceAll(out, {{secret, "<token>"}});
  if (out.size() > kMaxQuotedBytes) out = absl::StrCat(out.substr(0, kMaxQuotedBytes), "...");
  return out;
}

}  // namespace trellis::control_plane::kube
