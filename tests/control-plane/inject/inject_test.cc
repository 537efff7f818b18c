// Every rule of the pure injection function (control-plane/inject/inject.h).
#include "control-plane/inject/inject.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane::inject {
namespace {

using ::testing::HasSubstr;

Json AppPod() {
  return Json::parse(R"({
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
      "serviceAccountName": "web",
      "initContainers": [{"name": "migrate", "image": "migrate"}],
      "containers": [{
        "name": "web", "image": "nginx",
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "timeoutSeconds": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8081, "scheme": "HTTP"}},
        "startupProbe": {"tcpSocket": {"port": 8080}}
      }]
    }
  })");
}

const Json* Find(const Json& list, const std::string& name) {
  for (const Json& c : list) {
    if (c.value("name", "") == name) return &c;
  }
  return nullptr;
}

Json Annotated(Json pod, const std::string& key, const std::string& value) {
  pod["metadata"]["annotations"][key] = value;
  return pod;
}

Json MustInject(const Json& pod, const InjectOptions& options = {}) {
  absl::StatusOr<InjectResult> r = InjectPod(pod, options);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->object : Json();
}

TEST(InjectPod, AddsInitContainerFirstAndNativeSidecar) {
  InjectOptions options;
  options.init_image = "example/init:1";
  options.proxy_image = "example/proxy:1";
  absl::StatusOr<InjectResult> r = InjectPod(AppPod(), options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcome, Outcome::kInjected);
  const Json& spec = r->object["spec"];
  ASSERT_EQ(spec["initContainers"].size(), 3u);
  EXPECT_EQ(spec["initContainers"][0]["name"], "trellis-init");
  EXPECT_EQ(spec["initContainers"][1]["name"], "trellis-proxy");
  EXPECT_EQ(spec["initContainers"][2]["name"], "migrate");  // user's, after the mesh is up
  EXPECT_EQ(spec["containers"].size(), 1u);

  const Json& init = spec["initContainers"][0];
  EXPECT_EQ(init["image"], "example/init:1");
  EXPECT_EQ(init["securityContext"]["runAsUser"], 0);
  EXPECT_EQ(init["securityContext"]["capabilities"]["add"], Json::array({"NET_ADMIN"}));
  EXPECT_EQ(init["securityContext"]["capabilities"]["drop"], Json::array({"ALL"}));
  EXPECT_EQ(init["securityContext"]["privileged"], false);

  const Json& proxy = spec["initContainers"][1];
  EXPECT_EQ(proxy["image"], "example/proxy:1");
  EXPECT_EQ(proxy["restartPolicy"], "Always");
  EXPECT_EQ(proxy["startupProbe"]["httpGet"]["path"], "/ready");
  EXPECT_EQ(proxy["startupProbe"]["httpGet"]["port"], 15000);
  const Json& sc = proxy["securityContext"];
  EXPECT_EQ(sc["runAsUser"], 1337);
  EXPECT_EQ(sc["runAsNonRoot"], true);
  EXPECT_EQ(sc["readOnlyRootFilesystem"], true);
  EXPECT_EQ(sc["allowPrivilegeEscalation"], false);
  EXPECT_EQ(sc["capabilities"], Json({{"drop", Json::array({"ALL"})}}));
  EXPECT_TRUE(proxy["resources"]["requests"].contains("cpu"));
  EXPECT_TRUE(proxy["resources"]["requests"].contains("memory"));
  EXPECT_EQ(r->object["metadata"]["annotations"]["trellis.io/injected"], "native");
}

TEST(InjectPod, DownwardApiEnv) {
  const Json pod = MustInject(AppPod());
  const Json* proxy = Find(pod["spec"]["initContainers"], "trellis-proxy");
  ASSERT_NE(proxy, nullptr);
  const Json& env = (*proxy)["env"];
  EXPECT_EQ((*Find(env, "POD_NAME"))["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
  EXPECT_EQ((*Find(env, "POD_NAMESPACE"))["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace");
  EXPECT_EQ((*Find(env, "SERVICE_ACCOUNT"))["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.serviceAccountName");
}

TEST(InjectPod, ProjectedTokenAndMeshVolumesMountedIntoProxy) {
  InjectOptions options;
  options.mesh_configmap = "my-mesh";
  const Json pod = MustInject(AppPod(), options);
  const Json* token = Find(pod["spec"]["volumes"], "trellis-token");
  ASSERT_NE(token, nullptr);
  const Json& sat = (*token)["projected"]["sources"][0]["serviceAccountToken"];
  EXPECT_EQ(sat["audience"], "trellis");
  EXPECT_EQ(sat["expirationSeconds"], 3600);
  EXPECT_EQ(sat["path"], "token");
  const Json* mesh = Find(pod["spec"]["volumes"], "trellis-mesh");
  ASSERT_NE(mesh, nullptr);
  EXPECT_EQ((*mesh)["configMap"]["name"], "my-mesh");
  const Json* proxy = Find(pod["spec"]["initContainers"], "trellis-proxy");
  const Json& mounts = (*proxy)["volumeMounts"];
  EXPECT_EQ((*Find(mounts, "trellis-token"))["mountPath"], "/var/run/secrets/trellis/tokens");
  EXPECT_EQ((*Find(mounts, "trellis-mesh"))["readOnly"], true);
  EXPECT_THAT((*proxy)["args"].dump(), HasSubstr("--token_file=/var/run/secrets/trellis/tokens/token"));
  EXPECT_THAT((*proxy)["args"].dump(), HasSubstr("--root_file=/etc/trellis/mesh/roots.crt"));
}

TEST(InjectPod, ClassicByAnnotationAndByOption) {
  for (bool by_option : {false, true}) {
    InjectOptions options;
    options.classic = by_option;
    Json in = by_option ? AppPod() : Annotated(AppPod(), "trellis.io/sidecar-mode", "classic");
    const Json pod = MustInject(in, options);
    EXPECT_EQ(pod["spec"]["containers"][0]["name"], "trellis-proxy");
    EXPECT_FALSE(pod["spec"]["containers"][0].contains("restartPolicy"));
    EXPECT_EQ(Find(pod["spec"]["initContainers"], "trellis-proxy"), nullptr);
    EXPECT_EQ(pod["spec"]["initContainers"][0]["name"], "trellis-init");
    EXPECT_EQ(pod["metadata"]["annotations"]["trellis.io/injected"], "classic");
  }
  // The annotation "native" wins over the option.
  InjectOptions classic;
  classic.classic = true;
  const Json pod = MustInject(Annotated(AppPod(), "trellis.io/sidecar-mode", "native"), classic);
  EXPECT_NE(Find(pod["spec"]["initContainers"], "trellis-proxy"), nullptr);
}

TEST(InjectPod, ExcludeAnnotationsBecomeInitArgs) {
  Json in = Annotated(AppPod(), "trellis.io/exclude-inbound-ports", "9090, 9091");
  in = Annotated(in, "trellis.io/exclude-outbound-ports", "5432");
  in = Annotated(in, "trellis.io/exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8");
  const Json pod = MustInject(in);
  const std::string args = pod["spec"]["initContainers"][0]["args"].dump();
  EXPECT_THAT(args, HasSubstr("\"--exclude-inbound-ports=9090,9091\""));
  EXPECT_THAT(args, HasSubstr("\"--exclude-outbound-ports=5432\""));
  EXPECT_THAT(args, HasSubstr("\"--exclude-outbound-cidrs=10.0.0.0/8,fd00::/8\""));
  EXPECT_THAT(args, HasSubstr("\"--proxy-uid=1337\""));
  // Without the annotations, no exclusion flags.
  EXPECT_THAT(MustInject(AppPod())["spec"]["initContainers"][0]["args"].dump(),
              ::testing::Not(HasSubstr("exclude")));
}

TEST(InjectPod, BadAnnotationsAreErrorsNamingTheAnnotation) {
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"trellis.io/exclude-inbound-ports", "80,http"},
           {"trellis.io/exclude-outbound-ports", "70000"},
           {"trellis.io/exclude-outbound-cidrs", "10.0.0.0"},
           {"trellis.io/exclude-outbound-cidrs", "10.0.0.0/33"},
           {"trellis.io/sidecar-mode", "sideways"},
           {"trellis.io/inject", "maybe"}}) {
    absl::StatusOr<InjectResult> r = InjectPod(Annotated(AppPod(), key, value), {});
    ASSERT_FALSE(r.ok()) << key << "=" << value;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(key));
  }
}

TEST(InjectPod, HttpProbesRewrittenThroughAdminPort) {
  const Json pod = MustInject(AppPod());
  const Json& app = *Find(pod["spec"]["containers"], "web");
  EXPECT_EQ(app["livenessProbe"]["httpGet"],
            Json({{"path", "/app-health/web/livez"}, {"port", 15000}, {"scheme", "HTTP"}}));
  EXPECT_EQ(app["livenessProbe"]["timeoutSeconds"], 3);  // the rest of the probe is kept
  EXPECT_EQ(app["readinessProbe"]["httpGet"]["path"], "/app-health/web/readyz");
  EXPECT_EQ(app["startupProbe"], Json::parse(R"({"tcpSocket": {"port": 8080}})"));  // not HTTP

  const Json original = Json::parse(
      pod["metadata"]["annotations"]["trellis.io/original-probes"].get<std::string>());
  // Named port resolved to its number.
  EXPECT_EQ(original["/app-health/web/livez"]["port"], 8080);
  EXPECT_EQ(original["/app-health/web/livez"]["path"], "/healthz");
  EXPECT_EQ(original["/app-health/web/readyz"]["port"], 8081);
  const Json* proxy = Find(pod["spec"]["initContainers"], "trellis-proxy");
  const Json* env = Find((*proxy)["env"], "TRELLIS_APP_PROBES");
  ASSERT_NE(env, nullptr);
  EXPECT_EQ(Json::parse((*env)["value"].get<std::string>()), original);
}

TEST(InjectPod, ProbeRewriteCanBeTurnedOffAndBadPortsAreErrors) {
  const Json off = MustInject(Annotated(AppPod(), "trellis.io/rewrite-app-probes", "false"));
  EXPECT_EQ(off["spec"]["containers"][0]["livenessProbe"], AppPod()["spec"]["containers"][0]["livenessProbe"]);
  EXPECT_FALSE(off["metadata"]["annotations"].contains("trellis.io/original-probes"));

  Json bad = AppPod();
  bad["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "nope";
  absl::StatusOr<InjectResult> r = InjectPod(bad, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("spec.containers[0].livenessProbe.httpGet.port"));
}

TEST(InjectPod, OptOutLeavesThePodUnchanged) {
  for (const char* value : {"false", "False"}) {
    const Json in = Annotated(AppPod(), "trellis.io/inject", value);
    absl::StatusOr<InjectResult> r = InjectPod(in, {});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->outcome, Outcome::kOptedOut);
    EXPECT_EQ(r->object, in);
  }
  EXPECT_EQ(InjectPod(Annotated(AppPod(), "trellis.io/inject", "true"), {})->outcome,
            Outcome::kInjected);
}

TEST(InjectPod, InjectingTwiceChangesNothing) {
  for (bool classic : {false, true}) {
    InjectOptions options;
    options.classic = classic;
    const Json once = MustInject(AppPod(), options);
    absl::StatusOr<InjectResult> twice = InjectPod(once, options);
    ASSERT_TRUE(twice.ok());
    EXPECT_EQ(twice->outcome, Outcome::kAlreadyInjected);
    EXPECT_EQ(twice->object, once);
  }
}

TEST(InjectPod, HostNetworkSkippedWithReason) {
  Json in = AppPod();
  in["spec"]["hostNetwork"] = true;
  absl::StatusOr<InjectResult> r = InjectPod(in, {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcome, Outcome::kSkipped);
  EXPECT_THAT(r->object["metadata"]["annotations"]["trellis.io/inject-skipped"].get<std::string>(),
              HasSubstr("hostNetwork"));
  EXPECT_EQ(r->object["spec"], in["spec"]);
  ASSERT_EQ(r->warnings.size(), 1u);
  // Skipping again gives the same object.
  EXPECT_EQ(InjectPod(r->object, {})->object, r->object);
}

TEST(InjectPod, MalformedPodsAreErrorsNamingTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"metadata": {}})", "spec"},
      {R"({"spec": {}})", "spec.containers"},
      {R"({"spec": {"containers": {}}})", "spec.containers"},
      {R"({"spec": {"containers": []}})", "spec.containers"},
      {R"({"spec": {"containers": [{"image": "x"}]}})", "spec.containers[0].name"},
      {R"({"spec": {"containers": [{"name": "a"}], "initContainers": "x"}})", "spec.initContainers"},
      {R"({"spec": {"containers": [{"name": "a"}], "volumes": [{}]}})", "spec.volumes[0].name"},
      {R"({"spec": {"containers": [{"name": "a"}], "hostNetwork": "yes"}})", "spec.hostNetwork"},
      {R"({"metadata": {"annotations": []}, "spec": {"containers": [{"name": "a"}]}})",
       "metadata.annotations"},
      {R"({"metadata": {"annotations": {"trellis.io/inject": 1}}, "spec": {"containers": [{"name": "a"}]}})",
       "trellis.io/inject"},
      {R"({"spec": {"containers": [{"name": "trellis-proxy"}]}})", "spec.containers[0]"},
      {R"({"spec": {"containers": [{"name": "a"}], "volumes": [{"name": "trellis-token"}]}})",
       "spec.volumes[0]"},
      {R"("a string")", "(pod)"},
  };
  for (const auto& [input, field] : cases) {
    absl::StatusOr<InjectResult> r = InjectPod(Json::parse(input), {});
    ASSERT_FALSE(r.ok()) << input;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(field)) << input;
  }
}

TEST(InjectPod, DoesNotModifyItsInput) {
  const Json in = AppPod();
  const Json copy = in;
  MustInject(in);
  EXPECT_EQ(in, copy);
}

Json Workload(const std::string& kind, const std::vector<std::string>& path) {
  Json object = {{"apiVersion", "apps/v1"}, {"kind", kind}, {"metadata", {{"name", "w"}}}};
  Json tmpl = {{"metadata", {{"labels", {{"app", "w"}}}}},
               {"spec", {{"containers", Json::array({Json{{"name", "app"}, {"image", "x"}}})}}}};
  Json* node = &object;
  for (const std::string& key : path) node = &(*node)[key];
  *node = tmpl;
  return object;
}

TEST(InjectObject, EveryWorkloadKindsPodTemplate) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> kinds = {
      {"Deployment", {"spec", "template"}},  {"StatefulSet", {"spec", "template"}},
      {"DaemonSet", {"spec", "template"}},   {"ReplicaSet", {"spec", "template"}},
      {"ReplicationController", {"spec", "template"}},
      {"Job", {"spec", "template"}},         {"CronJob", {"spec", "jobTemplate", "spec", "template"}},
      {"Pod", {}}};
  for (const auto& [kind, path] : kinds) {
    Json in = Workload(kind, path);
    if (kind == "Pod") in = Json{{"kind", "Pod"}, {"metadata", in["metadata"]}, {"spec", Workload("Deployment", {"spec", "template"})["spec"]["template"]["spec"]}};
    absl::StatusOr<InjectResult> r = InjectObject(in, {});
    ASSERT_TRUE(r.ok()) << kind << ": " << r.status();
    EXPECT_EQ(r->outcome, Outcome::kInjected) << kind;
    const Json* tmpl = &r->object;
    for (const std::string& key : path) tmpl = &(*tmpl)[key];
    EXPECT_EQ((*tmpl)["spec"]["initContainers"][0]["name"], "trellis-init") << kind;
    EXPECT_EQ((*tmpl)["metadata"]["annotations"]["trellis.io/injected"], "native") << kind;
    // The workload's own metadata is not annotated; only its pod template is.
    if (!path.empty()) {
      EXPECT_FALSE(r->object["metadata"].contains("annotations")) << kind;
    }
  }
}

TEST(InjectObject, OtherKindsPassThroughUnchanged) {
  for (const char* text : {R"({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})",
                           R"({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}})",
                           R"({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"template": 1}})"}) {
    const Json in = Json::parse(text);
    absl::StatusOr<InjectResult> r = InjectObject(in, {});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->outcome, Outcome::kNotAPod);
    EXPECT_EQ(r->object, in);
  }
}

TEST(InjectObject, ListItemsAreInjectedAndErrorsNameTheItem) {
  Json list = {{"apiVersion", "v1"}, {"kind", "List"},
               {"items", Json::array({Json::parse(R"({"kind": "Service"})"),
                                      Workload("Deployment", {"spec", "template"})})}};
  absl::StatusOr<InjectResult> r = InjectObject(list, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcome, Outcome::kInjected);
  EXPECT_EQ(r->object["items"][0], list["items"][0]);
  EXPECT_EQ(r->object["items"][1]["spec"]["template"]["spec"]["initContainers"][0]["name"],
            "trellis-init");

  list["items"][1]["spec"]["template"]["spec"]["containers"] = "oops";
  r = InjectObject(list, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("items[1].spec.template.spec.containers"));
}

TEST(InjectObject, MissingTemplateOrKindIsAnError) {
  EXPECT_THAT(std::string(InjectObject(Json::parse(R"({"kind": "Deployment", "spec": {}})"), {})
                              .status()
                              .message()),
              HasSubstr("spec.template"));
  EXPECT_FALSE(InjectObject(Json::parse(R"({"spec": {}})"), {}).ok());
  EXPECT_FALSE(InjectObject(Json::parse("[1, 2]"), {}).ok());
}

}  // namespace
}  // namespace trellis::control_plane::inject
