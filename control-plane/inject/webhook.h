// The mutating admission webhook front end of injection (inject.h): AdmissionReview v1 request
// JSON in, AdmissionReview v1 response JSON out, with a base64 JSONPatch (RFC 6902) that turns
// the submitted Pod into InjectPod()'s output. Pure; webhook_server.h serves it over HTTPS.
//
// Failure handling. The handler never throws and never crashes on any input. It answers:
//  * a body that is not an AdmissionReview v1 with a request.uid: HTTP 400 and a message. The
//    API server counts that as a failed call and applies the webhook's failurePolicy itself,
//    which is the only party that knows it (we cannot even echo a uid back);
//  * a well-formed review whose Pod cannot be injected (malformed spec, bad trellis.io/*
//    annotation): with FailurePolicy::kFail, allowed=false, code 400, a message naming the
//    field, so the user sees why at `kubectl apply` time instead of getting an unmeshed pod in
//    a namespace that asked for the mesh (zero trust: fail closed); with kIgnore, allowed=true,
//    no patch, and the message as an admission warning (kubectl prints it);
//  * anything that is not a Pod CREATE (other resources, subresources, operations): allowed, no
//    patch;
//  * opted-out or already-injected pods: allowed, no patch; hostNetwork pods: allowed with the
//    skip annotation as the patch and a warning.
// Set the option to the failurePolicy of the MutatingWebhookConfiguration (k8s/ uses Fail).

#pragma once

#include <string>

#include "control-plane/inject/inject.h"

namespace trellis::control_plane::inject {

enum class FailurePolicy { kFail, kIgnore };

struct WebhookOptions {
  InjectOptions inject;
  FailurePolicy failure_policy = FailurePolicy::kFail;
};

// What the webhook did with one call, for metrics and the operator's log line.
enum class WebhookResult {
  kInjected,          // a Pod CREATE got the sidecar
  kUnchanged,         // a pod opted out or already injected
  kSkipped,           // a pod that cannot be injected (hostNetwork): skip annotation and a warning
  kNotAPod,           // another resource, operation or subresource: allowed untouched
  kRefused,           // injection failed and failurePolicy is Fail: the pod is refused
  kAdmittedUnmeshed,  // injection failed and failurePolicy is Ignore: admitted without the mesh
  kBadRequest,        // not an AdmissionReview v1 with a uid: HTTP 400
};
const char* WebhookResultName(WebhookResult result);
inline constexpr int kWebhookResultCount = 7;

struct WebhookResponse {
  int http_status = 200;
  std::string body;  // AdmissionReview JSON (200) or a plain-text error (400)
  std::string content_type = "application/json";
  WebhookResult result = WebhookResult::kNotAPod;
  std::string reason;  // why it was refused, skipped or rejected (empty otherwise)
  std::string pod;     // "namespace/name" (or generateName) of the pod, when there is one
  std::string uid;     // the AdmissionReview request uid, when there is one
};

WebhookResponse HandleAdmissionReview(const std::string& request_body,
                                      const WebhookOptions& options);

// RFC 6902 patch that turns `from` into `to` (adds of whole missing objects/arrays, appends with
// "/-", replaces otherwise).
Json JsonPatch(const Json& from, const Json& to);

}  // namespace trellis::control_plane::inject
