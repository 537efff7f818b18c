// The admission webhook front end: AdmissionReview v1 in, AdmissionReview v1 + JSONPatch out.
#include "control-plane/inject/webhook.h"

#include <string>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane::inject {
namespace {

using ::testing::HasSubstr;

Json PodObject() {
  return Json::parse(R"({"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "annotations": {"a/b~c": "d"}},
    "spec": {"containers": [{"name": "web", "image": "nginx",
      "readinessProbe": {"httpGet": {"path": "/r", "port": 8080}}}]}})");
}

std::string Review(const Json& pod, const std::string& operation = "CREATE") {
  return Json{{"apiVersion", "admission.k8s.io/v1"},
              {"kind", "AdmissionReview"},
              {"request",
               {{"uid", "705ab4f5-6393-11e8-b7cc-42010a800002"},
                {"kind", {{"group", ""}, {"version", "v1"}, {"kind", "Pod"}}},
                {"resource", {{"group", ""}, {"version", "v1"}, {"resource", "pods"}}},
                {"namespace", "shop"},
                {"operation", operation},
                {"object", pod}}}}
      .dump();
}

// Applies an RFC 6902 patch with nlohmann's own implementation; the result is compared
// ignoring key order (as Kubernetes does).
nlohmann::json Apply(const Json& doc, const Json& patch) {
  return nlohmann::json::parse(doc.dump()).patch(nlohmann::json::parse(patch.dump()));
}
nlohmann::json Plain(const Json& j) { return nlohmann::json::parse(j.dump()); }

TEST(Webhook, InjectsWithABase64JsonPatch) {
  const WebhookResponse r = HandleAdmissionReview(Review(PodObject()), {});
  ASSERT_EQ(r.http_status, 200);
  const Json review = Json::parse(r.body);
  EXPECT_EQ(review["apiVersion"], "admission.k8s.io/v1");
  EXPECT_EQ(review["kind"], "AdmissionReview");
  const Json& response = review["response"];
  EXPECT_EQ(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
  EXPECT_EQ(response["allowed"], true);
  EXPECT_EQ(response["patchType"], "JSONPatch");
  std::string patch_text;
  ASSERT_TRUE(absl::Base64Unescape(response["patch"].get<std::string>(), &patch_text));
  const Json patch = Json::parse(patch_text);
  ASSERT_TRUE(patch.is_array());
  // The patch turns the submitted pod into exactly what InjectPod returns.
  EXPECT_EQ(Apply(PodObject(), patch), Plain(InjectPod(PodObject(), {})->object));
  // What the server counts and logs.
  EXPECT_EQ(r.result, WebhookResult::kInjected);
  EXPECT_EQ(r.pod, "shop/web");
  EXPECT_EQ(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
  EXPECT_TRUE(r.reason.empty());
}

TEST(Webhook, PodWithOnlyGenerateNameIsNamedByItsPrefix) {
  Json pod = PodObject();
  pod["metadata"].erase("name");
  pod["metadata"]["generateName"] = "web-7d9f-";
  EXPECT_EQ(HandleAdmissionReview(Review(pod), {}).pod, "shop/web-7d9f-*");
}

TEST(Webhook, PatchForPodWithoutAnnotationsOrInitContainers) {
  Json pod = PodObject();
  pod["metadata"].erase("annotations");
  pod["spec"]["initContainers"] = Json::array({Json{{"name", "first"}, {"image", "x"}}});
  const Json review = Json::parse(HandleAdmissionReview(Review(pod), {}).body);
  std::string patch_text;
  ASSERT_TRUE(absl::Base64Unescape(review["response"]["patch"].get<std::string>(), &patch_text));
  EXPECT_EQ(Apply(pod, Json::parse(patch_text)), Plain(InjectPod(pod, {})->object));
}

TEST(Webhook, JsonPatchEscapesKeys) {
  Json from = {{"a/b", 1}, {"c~d", Json::array({1})}};
  Json to = {{"a/b", 2}, {"c~d", Json::array({1, 2})}, {"e", Json::object()}};
  const Json patch = JsonPatch(from, to);
  EXPECT_THAT(patch.dump(), HasSubstr("/a~1b"));
  EXPECT_THAT(patch.dump(), HasSubstr("/c~0d/-"));
  EXPECT_EQ(Apply(from, patch), Plain(to));
}

TEST(Webhook, OptedOutAndInjectedPodsAndOtherRequestsGetNoPatch) {
  Json opted = PodObject();
  opted["metadata"]["annotations"]["trellis.io/inject"] = "false";
  const Json injected = InjectPod(PodObject(), {})->object;
  for (const std::string& body :
       {Review(opted), Review(injected), Review(PodObject(), "UPDATE"), Review(PodObject(), "DELETE")}) {
    const WebhookResponse r = HandleAdmissionReview(body, {});
    ASSERT_EQ(r.http_status, 200);
    const Json response = Json::parse(r.body)["response"];
    EXPECT_EQ(response["allowed"], true);
    EXPECT_FALSE(response.contains("patch"));
    EXPECT_TRUE(r.result == WebhookResult::kUnchanged || r.result == WebhookResult::kNotAPod)
        << WebhookResultName(r.result);
  }
  EXPECT_EQ(HandleAdmissionReview(Review(opted), {}).result, WebhookResult::kUnchanged);
  EXPECT_EQ(HandleAdmissionReview(Review(injected), {}).result, WebhookResult::kUnchanged);
  EXPECT_EQ(HandleAdmissionReview(Review(PodObject(), "UPDATE"), {}).result,
            WebhookResult::kNotAPod);
  Json other = Json::parse(Review(PodObject()));
  other["request"]["kind"] = {{"group", "apps"}, {"version", "v1"}, {"kind", "Deployment"}};
  EXPECT_FALSE(Json::parse(HandleAdmissionReview(other.dump(), {}).body)["response"].contains("patch"));
  Json sub = Json::parse(Review(PodObject()));
  sub["request"]["subResource"] = "ephemeralcontainers";
  EXPECT_FALSE(Json::parse(HandleAdmissionReview(sub.dump(), {}).body)["response"].contains("patch"));
}

TEST(Webhook, HostNetworkGetsAWarningAndTheSkipAnnotation) {
  Json pod = PodObject();
  pod["spec"]["hostNetwork"] = true;
  const WebhookResponse r = HandleAdmissionReview(Review(pod), {});
  EXPECT_EQ(r.result, WebhookResult::kSkipped);
  EXPECT_THAT(r.reason, HasSubstr("hostNetwork"));
  const Json response = Json::parse(r.body)["response"];
  EXPECT_EQ(response["allowed"], true);
  EXPECT_THAT(response["warnings"].dump(), HasSubstr("hostNetwork"));
  std::string patch_text;
  ASSERT_TRUE(absl::Base64Unescape(response["patch"].get<std::string>(), &patch_text));
  EXPECT_THAT(patch_text, HasSubstr("trellis.io~1inject-skipped"));
  EXPECT_THAT(patch_text, ::testing::Not(HasSubstr("trellis-proxy")));
}

TEST(Webhook, BadPodFollowsTheFailurePolicy) {
  Json pod = PodObject();
  pod["metadata"]["annotations"]["trellis.io/exclude-inbound-ports"] = "http";
  WebhookOptions fail;
  fail.failure_policy = FailurePolicy::kFail;
  const WebhookResponse refused = HandleAdmissionReview(Review(pod), fail);
  EXPECT_EQ(refused.result, WebhookResult::kRefused);
  EXPECT_THAT(refused.reason, HasSubstr("trellis.io/exclude-inbound-ports"));
  EXPECT_EQ(refused.pod, "shop/web");
  Json response = Json::parse(refused.body)["response"];
  EXPECT_EQ(response["allowed"], false);
  EXPECT_EQ(response["status"]["code"], 400);
  EXPECT_THAT(response["status"]["message"].get<std::string>(),
              HasSubstr("trellis.io/exclude-inbound-ports"));
  EXPECT_EQ(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");

  WebhookOptions ignore;
  ignore.failure_policy = FailurePolicy::kIgnore;
  const WebhookResponse admitted = HandleAdmissionReview(Review(pod), ignore);
  EXPECT_EQ(admitted.result, WebhookResult::kAdmittedUnmeshed);
  EXPECT_THAT(admitted.reason, HasSubstr("trellis.io/exclude-inbound-ports"));
  response = Json::parse(admitted.body)["response"];
  EXPECT_EQ(response["allowed"], true);
  EXPECT_FALSE(response.contains("patch"));
  EXPECT_THAT(response["warnings"].dump(), HasSubstr("trellis.io/exclude-inbound-ports"));

  Json not_object = Json::parse(Review(PodObject()));
  not_object["request"]["object"] = "x";
  EXPECT_EQ(Json::parse(HandleAdmissionReview(not_object.dump(), fail).body)["response"]["allowed"],
            false);
}

TEST(Webhook, MalformedReviewsAre400NeverACrash) {
  for (const std::string& body :
       {std::string(""), std::string("{"), std::string("[]"), std::string("null"),
        std::string(R"({"kind": "AdmissionReview"})"),
        std::string(R"({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "u"}})"),
        std::string(R"({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"})"),
        std::string(R"({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": 5}})"),
        std::string(R"({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": []})"),
        std::string("\xff\xfe garbage"),
        std::string(R"({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": "u", "x": )") +
            std::string(1000000, '[') + std::string(1000000, ']') + "}}"}) {
    const WebhookResponse r = HandleAdmissionReview(body, {});
    EXPECT_EQ(r.http_status, 400) << body;
    EXPECT_FALSE(r.body.empty());
    EXPECT_EQ(r.result, WebhookResult::kBadRequest);
    EXPECT_FALSE(r.reason.empty());
  }
  // Odd but well-formed envelopes never crash either.
  for (const char* request : {R"({"uid": "u"})", R"({"uid": "u", "kind": 5, "operation": 7})",
                              R"({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"})",
                              R"({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "subResource": 3, "object": {"spec": 1}})"}) {
    const std::string body = std::string(R"({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": )") + request + "}";
    const WebhookResponse r = HandleAdmissionReview(body, {});
    EXPECT_EQ(r.http_status, 200) << body;
    EXPECT_EQ(Json::parse(r.body)["response"]["uid"], "u");
  }
}

}  // namespace
}  // namespace trellis::control_plane::inject
