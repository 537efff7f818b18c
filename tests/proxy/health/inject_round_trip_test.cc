// The two sides of the probe rewrite cannot drift apart: the injector's real output for a pod
// with HTTP probes (control-plane/inject, the pure function the webhook and `trellisctl inject`
// share) is fed to the proxy's parser and admin endpoint, and the rewritten probes, sent where the
// kubelet would send them, reach the real app and come back with its answers.

#include <httplib.h>

#include <memory>
#include <string>
#include <vector>

#include "common/admin/http_admin.h"
#include "control-plane/inject/inject.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proxy/admin/admin_endpoint.h"
#include "proxy/health/app_prober.h"
#include "proxy/identity/context_store.h"
#include "proxy/stats/proxy_stats.h"
#include "tests/proxy/health/test_app.h"

namespace trellis::proxy::health {
namespace {

using control_plane::inject::Json;
using ::testing::HasSubstr;

// The container `name` in the injected pod (app containers and the sidecar alike).
const Json* FindContainer(const Json& pod, const std::string& name) {
  for (const char* list : {"initContainers", "containers"}) {
    if (!pod["spec"].contains(list)) continue;
    for (const Json& c : pod["spec"][list]) {
      if (c["name"] == name) return &c;
    }
  }
  return nullptr;
}

TEST(InjectRoundTripTest, RewrittenProbesReachTheAppThroughTheProxy) {
  testing::TestApp http;
  testing::TestApp https(/*https=*/true);
  // An app pod as a user writes it: a named port, HTTPS with a header, a failing readiness.
  Json pod = Json::parse(R"({
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"containers": [
      {"name": "web", "image": "web:1",
       "ports": [{"name": "http", "containerPort": 0}],
       "livenessProbe": {"httpGet": {"path": "/ok", "port": "http"}, "timeoutSeconds": 2},
       "readinessProbe": {"httpGet": {"path": "/fail", "port": "http"}}},
      {"name": "api", "image": "api:1",
       "startupProbe": {"httpGet": {"path": "/ok", "port": 0, "scheme": "HTTPS",
                                    "httpHeaders": [{"name": "X-Probe", "value": "startup"}]}},
       "livenessProbe": {"tcpSocket": {"port": 5432}}}]}})");
  pod["spec"]["containers"][0]["ports"][0]["containerPort"] = http.port();
  pod["spec"]["containers"][1]["startupProbe"]["httpGet"]["port"] = https.port();

  absl::StatusOr<control_plane::inject::InjectResult> injected =
      control_plane::inject::InjectPod(pod, control_plane::inject::InjectOptions());
  ASSERT_TRUE(injected.ok()) << injected.status();
  const Json& out = injected->object;

  const Json* proxy = FindContainer(out, control_plane::inject::kProxyContainerName);
  ASSERT_NE(proxy, nullptr);
  std::string env;
  for (const Json& e : (*proxy)["env"]) {
    if (e["name"] == "TRELLIS_APP_PROBES") env = e["value"].get<std::string>();
  }
  ASSERT_FALSE(env.empty()) << "the injector passed no TRELLIS_APP_PROBES";

  // The proxy side: exactly what trellis-proxy does at start with that env var.
  absl::StatusOr<std::vector<AppProbe>> probes = ParseAppProbes(env);
  ASSERT_TRUE(probes.ok()) << probes.status() << "\n" << env;
  EXPECT_EQ(probes->size(), 3u);  // the tcpSocket probe is left alone
  absl::StatusOr<std::unique_ptr<AppProber>> prober = AppProber::Create(*std::move(probes));
  ASSERT_TRUE(prober.ok()) << prober.status();
  ContextStore store;
  ProxyStats stats;
  AdminEndpoint::Options options;
  options.store = &store;
  options.stats = &stats;
  options.listeners_up = [] { return true; };
  options.drain = [] {};
  options.app_prober = prober->get();
  absl::StatusOr<std::unique_ptr<AdminEndpoint>> endpoint = AdminEndpoint::Create(options);
  ASSERT_TRUE(endpoint.ok());
  admin::HttpAdmin admin;
  (*endpoint)->Register(&admin);
  absl::StatusOr<int> admin_port = admin.Start("127.0.0.1", 0);
  ASSERT_TRUE(admin_port.ok());

  // The kubelet side: every rewritten httpGet probe of the app containers, sent as it would be.
  struct Want {
    const char* container;
    const char* probe;
    int status;
  };
  const Want wants[] = {
      {"web", "livenessProbe", 200}, {"web", "readinessProbe", 500}, {"api", "startupProbe", 200}};
  httplib::Client client("127.0.0.1", *admin_port);
  client.set_read_timeout(10);
  for (const Want& want : wants) {
    const Json* container = FindContainer(out, want.container);
    ASSERT_NE(container, nullptr);
    const Json& get = (*container)[want.probe]["httpGet"];
    EXPECT_EQ(get["port"], control_plane::inject::kAdminPort) << want.probe;
    const std::string path = get["path"].get<std::string>();
    httplib::Result result = client.Get(path.c_str());
    ASSERT_TRUE(result) << path;
    EXPECT_EQ(result->status, want.status)
        << want.container << " " << want.probe << " " << path << ": " << result->body;
    EXPECT_THAT(result->body, HasSubstr("app answered")) << path;
  }
  EXPECT_EQ(https.LastHeader("X-Probe"), "startup");
  EXPECT_EQ(http.requests(), 2);
  EXPECT_EQ(https.requests(), 1);
  // The original probe timeout travelled too.
  EXPECT_EQ((*prober)->probes().front().route.rfind("/app-health/", 0), 0u);
  bool saw_two_seconds = false;
  for (const AppProbe& p : (*prober)->probes()) {
    saw_two_seconds = saw_two_seconds || p.timeout == absl::Seconds(2);
  }
  EXPECT_TRUE(saw_two_seconds);
  admin.Stop();
}

}  // namespace
}  // namespace trellis::proxy::health
