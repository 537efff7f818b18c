#include "control-plane/kube/server_version.h"

#include <cctype>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace trellis::control_plane::kube {
namespace {

// "1" -> 1, "29+" -> 29; digits first, then at most a "+".
absl::StatusOr<int> VersionNumber(const nlohmann::json& version, const char* field) {
  const nlohmann::json value = version.value(field, nlohmann::json());
  if (!value.is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the API server's /version has no string \"", field, "\""));
  }
  std::string text = value.get<std::string>();
  if (!text.empty() && text.back() == '+') text.pop_back();
  int number = 0;
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])) ||
      !absl::SimpleAtoi(text, &number) || number < 0 || number > 10000) {
    return absl::InvalidArgumentError(absl::StrCat("the API server's /version has \"", field,
                                                   "\": \"", value.get<std::string>(),
                                                   "\", not a number"));
  }
  return number;
}

}  // namespace

absl::StatusOr<ServerVersion> ParseServerVersion(absl::string_view body) {
  const nlohmann::json version = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!version.is_object()) {
    return absl::InvalidArgumentError("the API server's /version answer is not a JSON object");
  }
  absl::StatusOr<int> major = VersionNumber(version, "major");
  if (!major.ok()) return major.status();
  absl::StatusOr<int> minor = VersionNumber(version, "minor");
  if (!minor.ok()) return minor.status();
  return ServerVersion{*major, *minor};
}

absl::StatusOr<ServerVersion> FetchServerVersion(KubeApi& api) {
  absl::StatusOr<KubeResponse> response = api.Call("GET", "/version", "");
  if (!response.ok()) return response.status();
  if (response->http_status != 200) {
    return absl::UnavailableError(absl::StrCat("GET /version answered HTTP ", response->http_status,
                                               ": ", StatusMessage(response->body)));
  }
  absl::StatusOr<ServerVersion> version = ParseServerVersion(response->body);
  if (!version.ok()) return absl::UnavailableError(version.status().message());
  return version;
}

}  // namespace trellis::control_plane::kube
