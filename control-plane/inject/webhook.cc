#include "control-plane/inject/webhook.h"

#include <exception>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace trellis::control_plane::inject {
namespace {

WebhookResponse BadRequest(const std::string& message) {
  WebhookResponse r;
  r.http_status = 400;
  r.result = WebhookResult::kBadRequest;
  r.reason = message;
  r.content_type = "text/plain; charset=utf-8";
  r.body = absl::StrCat("trellis injection webhook: ", message, "\n");
  return r;
}

Json Review(const Json& api_version, const std::string& uid, Json response) {
  response["uid"] = uid;
  return Json{{"apiVersion", api_version.is_string() ? api_version : Json("admission.k8s.io/v1")},
              {"kind", "AdmissionReview"},
              {"response", std::move(response)}};
}

std::string EscapePointer(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

void Diff(const Json& from, const Json& to, const std::string& path, Json& ops) {
  if (from == to) return;
  if (from.type() != to.type()) {
    ops.push_back({{"op", "replace"}, {"path", path}, {"value", to}});
    return;
  }
  if (from.is_object()) {
    for (auto it = from.begin(); it != from.end(); ++it) {
      const std::string p = absl::StrCat(path, "/", EscapePointer(it.key()));
      if (!to.contains(it.key())) {
        ops.push_back({{"op", "remove"}, {"path", p}});
      } else {
        Diff(it.value(), to[it.key()], p, ops);
      }
    }
    for (auto it = to.begin(); it != to.end(); ++it) {
      if (!from.contains(it.key())) {
        ops.push_back({{"op", "add"},
                       {"path", absl::StrCat(path, "/", EscapePointer(it.key()))},
                       {"value", it.value()}});
      }
    }
    return;
  }
  if (from.is_array()) {
    // Whole-array replace when elements moved (injection prepends init containers): simple,
    // and exact whatever the API server's defaulting did to the originals.
    const size_t common = std::min(from.size(), to.size());
    bool prefix_equal = true;
    for (size_t i = 0; i < common; ++i) {
      if (from[i] != to[i]) prefix_equal = false;
    }
    if (!prefix_equal || to.size() < from.size()) {
      ops.push_back({{"op", "replace"}, {"path", path}, {"value", to}});
      return;
    }
    for (size_t i = from.size(); i < to.size(); ++i) {
      ops.push_back({{"op", "add"}, {"path", absl::StrCat(path, "/-")}, {"value", to[i]}});
    }
    return;
  }
  ops.push_back({{"op", "replace"}, {"path", path}, {"value", to}});
}

// Nesting depth of a JSON text (brackets outside strings). Copying, comparing and printing
// nested values recurse, so absurd depths are refused before parsing: a Pod is < 20 deep.
constexpr int kMaxDepth = 200;
bool TooDeep(const std::string& text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxDepth) return true;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return false;
}

// "namespace/name" of the pod under review; generateName + "*" before the API server names it.
std::string PodRef(const Json& request, const Json& pod) {
  auto text = [](const Json& object, const char* key) -> std::string {
    if (!object.is_object()) return "";
    const Json value = object.value(key, Json());
    return value.is_string() ? value.get<std::string>() : "";
  };
  const Json metadata = pod.is_object() ? pod.value("metadata", Json::object()) : Json::object();
  std::string ns = text(request, "namespace");
  if (ns.empty()) ns = text(metadata, "namespace");
  std::string name = text(metadata, "name");
  if (name.empty()) name = text(request, "name");
  if (name.empty() && !text(metadata, "generateName").empty()) {
    name = text(metadata, "generateName") + "*";
  }
  return absl::StrCat(ns, "/", name);
}

}  // namespace

const char* WebhookResultName(WebhookResult result) {
  switch (result) {
    case WebhookResult::kInjected:
      return "injected";
    case WebhookResult::kUnchanged:
      return "unchanged";
    case WebhookResult::kSkipped:
      return "skipped";
    case WebhookResult::kNotAPod:
      return "not_a_pod";
    case WebhookResult::kRefused:
      return "refused";
    case WebhookResult::kAdmittedUnmeshed:
      return "admitted_unmeshed";
    case WebhookResult::kBadRequest:
      return "bad_request";
  }
  return "unknown";
}

Json JsonPatch(const Json& from, const Json& to) {
  Json ops = Json::array();
  Diff(from, to, "", ops);
  return ops;
}

WebhookResponse HandleAdmissionReview(const std::string& request_body,
                                      const WebhookOptions& options) {
  try {
    if (TooDeep(request_body)) return BadRequest("the body nests deeper than any Pod");
    Json review = Json::parse(request_body, nullptr, /*allow_exceptions=*/false);
    if (review.is_discarded()) return BadRequest("the body is not JSON");
    if (!review.is_object() || review.value("kind", Json()) != "AdmissionReview") {
      return BadRequest("the body is not an AdmissionReview");
    }
    if (review.value("apiVersion", Json()) != "admission.k8s.io/v1") {
      return BadRequest(
          "only admission.k8s.io/v1 AdmissionReview is supported "
          "(set admissionReviewVersions: [v1])");
    }
    if (!review.contains("request") || !review["request"].is_object()) {
      return BadRequest("the AdmissionReview has no request");
    }
    const Json& request = review["request"];
    if (!request.contains("uid") || !request["uid"].is_string() ||
        request["uid"].get<std::string>().empty()) {
      return BadRequest("the AdmissionReview request has no uid");
    }
    const std::string uid = request["uid"].get<std::string>();
    const Json api_version = review["apiVersion"];
    WebhookResponse out;
    out.uid = uid;

    auto allow = [&](Json extra = Json::object()) {
      Json response = {{"allowed", true}};
      for (auto it = extra.begin(); it != extra.end(); ++it) response[it.key()] = it.value();
      out.body = Review(api_version, uid, std::move(response)).dump();
      return out;
    };
    auto refuse_or_warn = [&](const std::string& message) {
      const std::string text = absl::StrCat("trellis sidecar injection failed: ", message);
      out.reason = message;
      if (options.failure_policy == FailurePolicy::kIgnore) {
        out.result = WebhookResult::kAdmittedUnmeshed;
        return allow(Json{{"warnings", Json::array({text + " (the pod runs without the mesh)"})}});
      }
      out.result = WebhookResult::kRefused;
      out.body =
          Review(api_version, uid,
                 Json{{"allowed", false},
                      {"status", {{"code", 400}, {"reason", "BadRequest"}, {"message", text}}}})
              .dump();
      return out;
    };

    // Only Pod CREATE is injected; everything else is let through untouched.
    const Json kind = request.value("kind", Json::object());
    const bool is_pod = kind.is_object() && kind.value("group", Json("")) == "" &&
                        kind.value("kind", Json()) == "Pod";
    const std::string sub = request.value("subResource", Json("")).is_string()
                                ? request.value("subResource", Json("")).get<std::string>()
                                : "";
    if (!is_pod || !sub.empty() || request.value("operation", Json()) != "CREATE") return allow();
    if (!request.contains("object") || !request["object"].is_object()) {
      out.pod = PodRef(request, Json::object());
      return refuse_or_warn("request.object is not a Pod object");
    }
    const Json& pod = request["object"];
    out.pod = PodRef(request, pod);
    absl::StatusOr<InjectResult> result = InjectPod(pod, options.inject);
    if (!result.ok()) return refuse_or_warn(std::string(result.status().message()));
    switch (result->outcome) {
      case Outcome::kInjected:
        out.result = WebhookResult::kInjected;
        break;
      case Outcome::kSkipped:
        out.result = WebhookResult::kSkipped;
        break;
      case Outcome::kNotAPod:
        out.result = WebhookResult::kNotAPod;
        break;
      case Outcome::kOptedOut:
      case Outcome::kAlreadyInjected:
        out.result = WebhookResult::kUnchanged;
        break;
    }
    if (!result->warnings.empty()) out.reason = absl::StrJoin(result->warnings, "; ");
    Json extra = Json::object();
    if (!result->warnings.empty() && result->outcome == Outcome::kSkipped) {
      extra["warnings"] = result->warnings;
    }
    if (result->object != pod) {
      const Json patch = JsonPatch(pod, result->object);
      extra["patchType"] = "JSONPatch";
      extra["patch"] = absl::Base64Escape(patch.dump());
    }
    return allow(std::move(extra));
  } catch (const std::exception& e) {
    // Unreachable by design (no throwing accessors are used on unchecked input); belt and braces.
    return BadRequest(absl::StrCat("internal error: ", e.what()));
  }
}

}  // namespace trellis::control_plane::inject
