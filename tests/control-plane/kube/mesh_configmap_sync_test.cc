// MeshConfigMapSync against an in-memory API server that behaves like kube-apiserver where it
// matters: label selectors on the namespace list, 404 for missing objects, 409 AlreadyExists on
// a second create and 409 Conflict on a PUT with a stale resourceVersion, 403 for RBAC. The real
// API server (and the real RBAC of k8s/rbac.yaml) is exercised by tests/e2e/kube/manifests/.

#include "control-plane/kube/mesh_configmap_sync.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log/json_log.h"
#include "control-plane/kube/kube_api.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane::kube {
namespace {

using nlohmann::json;

constexpr char kSelectorQuery[] = "labelSelector=trellis.io%2Finject%3Denabled";
constexpr char kWebhookPath[] =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/trellis-sidecar-injector";

struct RecordedCall {
  std::string method, path;
};

class FakeApi : public KubeApi {
 public:
  void AddNamespace(const std::string& name, bool labelled, bool terminating = false) {
    absl::MutexLock lock(&mu_);
    namespaces_[name] = {labelled, terminating};
  }
  void PutConfigMap(const std::string& ns, json object) {
    absl::MutexLock lock(&mu_);
    object["metadata"]["resourceVersion"] = std::to_string(++version_);
    configmaps_[ns] = std::move(object);
  }
  void DeleteConfigMap(const std::string& ns) {
    absl::MutexLock lock(&mu_);
    configmaps_.erase(ns);
  }
  bool HasConfigMap(const std::string& ns) {
    absl::MutexLock lock(&mu_);
    return configmaps_.count(ns) > 0;
  }
  json ConfigMap(const std::string& ns) {
    absl::MutexLock lock(&mu_);
    return configmaps_.count(ns) ? configmaps_[ns] : json();
  }
  std::vector<RecordedCall> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  int Count(const std::string& method) {
    int n = 0;
    for (const RecordedCall& c : calls()) n += c.method == method;
    return n;
  }
  void ClearCalls() {
    absl::MutexLock lock(&mu_);
    calls_.clear();
  }
  // Runs once before the next write (PUT or POST) is applied: another writer racing us.
  void BeforeNextWrite(std::function<void()> f) {
    absl::MutexLock lock(&mu_);
    before_write_ = std::move(f);
  }
  void Forbid(const std::string& method_and_prefix) {
    absl::MutexLock lock(&mu_);
    forbidden_.push_back(method_and_prefix);
  }
  void Unreachable(bool on) {
    absl::MutexLock lock(&mu_);
    unreachable_ = on;
  }
  // The injector's MutatingWebhookConfiguration, stored like any object (resourceVersion).
  void PutWebhookConfiguration(json object) {
    absl::MutexLock lock(&mu_);
    object["metadata"]["resourceVersion"] = std::to_string(++version_);
    webhook_ = std::move(object);
  }
  json WebhookConfiguration() {
    absl::MutexLock lock(&mu_);
    return webhook_;
  }

  absl::StatusOr<KubeResponse> Call(absl::string_view method, absl::string_view path,
                                    absl::string_view body) override {
    std::function<void()> race;
    {
      absl::MutexLock lock(&mu_);
      calls_.push_back({std::string(method), std::string(path)});
      if (unreachable_)
        return absl::UnavailableError("Kubernetes API: cannot reach the API server");
      for (const std::string& f : forbidden_) {
        if (absl::StartsWith(absl::StrCat(method, " ", path), f)) {
          return KubeResponse{
              403, json{{"kind", "Status"}, {"message", "forbidden: User cannot do that"}}.dump()};
        }
      }
      if (method != "GET") race = std::exchange(before_write_, nullptr);
    }
    if (race) race();
    absl::MutexLock lock(&mu_);
    if (method == "GET" && absl::StartsWith(path, "/api/v1/namespaces?")) {
      EXPECT_TRUE(absl::StrContains(path, kSelectorQuery)) << path;
      json items = json::array();
      for (const auto& [name, ns] : namespaces_) {
        if (!ns.labelled) continue;
        json item = {{"metadata", {{"name", name}}},
                     {"status", {{"phase", ns.terminating ? "Terminating" : "Active"}}}};
        items.push_back(item);
      }
      return KubeResponse{200, json{{"kind", "NamespaceList"}, {"items", items}}.dump()};
    }
    if (path == kWebhookPath) {
      if (webhook_.is_null()) return KubeResponse{404, R"({"kind":"Status","reason":"NotFound"})"};
      if (method == "GET") return KubeResponse{200, webhook_.dump()};
      EXPECT_EQ(method, "PUT");
      json object = json::parse(body);
      if (object["metadata"]["resourceVersion"] != webhook_["metadata"]["resourceVersion"]) {
        return KubeResponse{409, R"({"reason":"Conflict"})"};
      }
      object["metadata"]["resourceVersion"] = std::to_string(++version_);
      webhook_ = object;
      return KubeResponse{200, object.dump()};
    }
    // /api/v1/namespaces/NS/configmaps[/NAME]
    std::vector<std::string> parts = absl::StrSplit(path, '/');
    if (parts.size() < 6 || parts[3] != "namespaces" || parts[5] != "configmaps") {
      return KubeResponse{404, "{}"};
    }
    const std::string ns = parts[4];
    if (method == "GET") {
      EXPECT_EQ(parts.size(), 7u);
      if (!configmaps_.count(ns))
        return KubeResponse{404, R"({"kind":"Status","reason":"NotFound"})"};
      return KubeResponse{200, configmaps_[ns].dump()};
    }
    json object = json::parse(body);
    if (method == "POST") {
      if (configmaps_.count(ns)) return KubeResponse{409, R"({"reason":"AlreadyExists"})"};
      object["metadata"]["resourceVersion"] = std::to_string(++version_);
      configmaps_[ns] = object;
      return KubeResponse{201, object.dump()};
    }
    if (method == "PUT") {
      if (!configmaps_.count(ns)) return KubeResponse{404, "{}"};
      if (object["metadata"]["resourceVersion"] != configmaps_[ns]["metadata"]["resourceVersion"]) {
        return KubeResponse{409,
                            R"({"reason":"Conflict","message":"the object has been modified"})"};
      }
      object["metadata"]["resourceVersion"] = std::to_string(++version_);
      configmaps_[ns] = object;
      return KubeResponse{200, object.dump()};
    }
    return KubeResponse{405, "{}"};
  }

 private:
  struct Ns {
    bool labelled;
    bool terminating;
  };
  absl::Mutex mu_;
  std::map<std::string, Ns> namespaces_;
  std::map<std::string, json> configmaps_;
  std::vector<RecordedCall> calls_;
  std::function<void()> before_write_;
  std::vector<std::string> forbidden_;
  bool unreachable_ = false;
  json webhook_;
  int version_ = 100;
};

constexpr char kRootA[] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
constexpr char kRootB[] = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";

class MeshConfigMapSyncTest : public ::testing::Test {
 protected:
  MeshConfigMapSyncTest() {
    api_.AddNamespace("shop", true);
    api_.AddNamespace("billing", true);
    api_.AddNamespace("plain", false);
  }

  std::unique_ptr<MeshConfigMapSync> Make(const std::string& webhook_configuration = "") {
    MeshConfigMapSyncOptions options;
    options.webhook_configuration = webhook_configuration;
    options.trust_domain = "example.org";
    options.control_plane_address = "cp.trellis-system.svc:15012";
    options.resync = absl::Minutes(1);
    options.interval = absl::Milliseconds(50);
    options.clock = [this] {
      absl::MutexLock lock(&mu_);
      return now_;
    };
    return std::make_unique<MeshConfigMapSync>(options, &api_, [this] {
      absl::MutexLock lock(&mu_);
      return roots_;
    });
  }
  void SetRoots(std::string pem) {
    absl::MutexLock lock(&mu_);
    roots_ = std::move(pem);
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

  FakeApi api_;
  absl::Mutex mu_;
  std::string roots_ = kRootA;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
};

json Managed(json data) {
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata",
           {{"name", "trellis-mesh"},
            {"labels", {{"app.kubernetes.io/managed-by", "trellis-control-plane"}}}}},
          {"data", data}};
}

TEST_F(MeshConfigMapSyncTest, CreatesTheConfigMapInLabelledNamespacesOnly) {
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  for (const char* ns : {"shop", "billing"}) {
    const json cm = api_.ConfigMap(ns);
    ASSERT_FALSE(cm.is_null()) << ns;
    EXPECT_EQ(cm["metadata"]["name"], "trellis-mesh");
    EXPECT_EQ(cm["metadata"]["namespace"], ns);
    EXPECT_EQ(cm["metadata"]["labels"]["app.kubernetes.io/managed-by"], "trellis-control-plane");
    EXPECT_EQ(cm["data"]["roots.crt"], kRootA);
    EXPECT_EQ(cm["data"]["trust-domain"], "example.org");
    EXPECT_EQ(cm["data"]["control-plane-address"], "cp.trellis-system.svc:15012");
  }
  EXPECT_FALSE(api_.HasConfigMap("plain"));
  const MeshConfigMapSyncStats s = sync->stats();
  EXPECT_EQ(s.created, 2u);
  EXPECT_EQ(s.namespaces, 2);
  EXPECT_EQ(s.passes_ok, 1u);
  EXPECT_EQ(s.last_success_unix, 1800000000);
}

TEST_F(MeshConfigMapSyncTest, InSyncNamespacesCostOneListUntilResync) {
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  api_.ClearCalls();
  Advance(absl::Seconds(30));
  ASSERT_TRUE(sync->SyncOnce().ok());
  ASSERT_EQ(api_.calls().size(), 1u);  // the namespace list only
  // A copy deleted by hand comes back on the next resync.
  api_.DeleteConfigMap("shop");
  Advance(absl::Seconds(31));
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(api_.ConfigMap("shop")["data"]["roots.crt"], kRootA);
  EXPECT_EQ(api_.Count("PUT"), 0);
  EXPECT_EQ(sync->stats().created, 3u);
}

TEST_F(MeshConfigMapSyncTest, ABundleChangeUpdatesOurKeysAndKeepsTheRest) {
  json data = {{"roots.crt", kRootA},
               {"trust-domain", "example.org"},
               {"control-plane-address", "cp.trellis-system.svc:15012"},
               {"operator-note", "keep me"}};
  json cm = Managed(data);
  cm["metadata"]["labels"]["team"] = "payments";
  api_.PutConfigMap("shop", cm);
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(api_.Count("PUT"), 0) << "an up-to-date copy must not be rewritten";

  // `trellisctl ca rotate prepare`: the live bundle now holds two roots. No resync wait.
  SetRoots(absl::StrCat(kRootA, kRootB));
  ASSERT_TRUE(sync->SyncOnce().ok());
  for (const char* ns : {"shop", "billing"}) {
    EXPECT_EQ(api_.ConfigMap(ns)["data"]["roots.crt"], absl::StrCat(kRootA, kRootB)) << ns;
  }
  const json shop = api_.ConfigMap("shop");
  EXPECT_EQ(shop["data"]["operator-note"], "keep me");
  EXPECT_EQ(shop["metadata"]["labels"]["team"], "payments");
  EXPECT_EQ(sync->stats().updated, 2u);
}

TEST_F(MeshConfigMapSyncTest, AConfigMapWeDoNotManageIsNeverTouched) {
  json foreign = Managed({{"roots.crt", "hand-copied"}});
  foreign["metadata"]["labels"] = json::object();
  api_.PutConfigMap("shop", foreign);
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok()) << "an unmanaged copy is a warning, not a failure";
  EXPECT_EQ(api_.ConfigMap("shop")["data"]["roots.crt"], "hand-copied");
  for (const RecordedCall& c : api_.calls()) {
    EXPECT_FALSE(c.method != "GET" && absl::StrContains(c.path, "/shop/"))
        << c.method << " " << c.path;
  }
  EXPECT_EQ(sync->stats().unmanaged, 1);
  EXPECT_NE(sync->RenderMetrics().find("trellis_mesh_configmap_unmanaged_namespaces 1\n"),
            std::string::npos);
  // Handed over (label added): managed from the next look on.
  foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "trellis-control-plane";
  api_.PutConfigMap("shop", foreign);
  Advance(absl::Minutes(2));
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(api_.ConfigMap("shop")["data"]["roots.crt"], kRootA);
  EXPECT_EQ(sync->stats().unmanaged, 0);
}

TEST_F(MeshConfigMapSyncTest, AConflictingUpdateIsRetriedFromAFreshRead) {
  api_.PutConfigMap("shop", Managed({{"roots.crt", "old"}}));
  api_.AddNamespace("billing", false);
  // The other replica writes between our GET and our PUT (adding a key of its own).
  api_.BeforeNextWrite([&] {
    api_.PutConfigMap("shop", Managed({{"roots.crt", "old"}, {"other", "kept"}}));
  });
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  const json shop = api_.ConfigMap("shop");
  EXPECT_EQ(shop["data"]["roots.crt"], kRootA);
  EXPECT_EQ(shop["data"]["other"], "kept") << "the retry must start from the other writer's copy";
  EXPECT_EQ(sync->stats().conflicts, 1u);
  EXPECT_EQ(sync->stats().updated, 1u);
}

TEST_F(MeshConfigMapSyncTest, ACreateRaceWithTheOtherReplicaIsNotAnError) {
  api_.AddNamespace("billing", false);
  api_.BeforeNextWrite([&] {
    api_.PutConfigMap("shop", Managed({{"roots.crt", kRootA},
                                       {"trust-domain", "example.org"},
                                       {"control-plane-address", "cp.trellis-system.svc:15012"}}));
  });
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(sync->stats().conflicts, 1u);
  EXPECT_EQ(sync->stats().created, 0u);
  EXPECT_EQ(sync->stats().errors, 0u);
}

TEST_F(MeshConfigMapSyncTest, MissingRbacIsAnErrorNamingThePermission) {
  api_.Forbid("GET /api/v1/namespaces?");
  auto sync = Make();
  const absl::Status s = sync->SyncOnce();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(s.message(), "`list namespaces`")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "k8s/rbac.yaml")) << s;
  EXPECT_EQ(sync->stats().passes_failed, 1u);
  EXPECT_EQ(sync->stats().passes_ok, 0u);
}

TEST_F(MeshConfigMapSyncTest, OneFailingNamespaceDoesNotStopTheOthers) {
  api_.Forbid("POST /api/v1/namespaces/billing/");
  auto sync = Make();
  const absl::Status s = sync->SyncOnce();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "`create configmaps`")) << s;
  EXPECT_TRUE(api_.HasConfigMap("shop"));
  EXPECT_EQ(sync->stats().errors, 1u);
}

TEST_F(MeshConfigMapSyncTest, ARepeatingFailureIsLoggedOncePerMinute) {
  const std::string log_path = ::testing::TempDir() + "/sync.log";
  const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  log::SetOutputFd(fd);
  api_.Forbid("POST /api/v1/namespaces/billing/");
  auto sync = Make();
  const auto lines = [&] {
    std::ifstream in(log_path);
    int n = 0;
    for (std::string line; std::getline(in, line);) {
      n += absl::StrContains(line, "failed for a namespace") && absl::StrContains(line, "billing");
    }
    return n;
  };
  for (int pass = 0; pass < 5; ++pass) {
    EXPECT_FALSE(sync->SyncOnce().ok());
    Advance(absl::Seconds(5));
  }
  EXPECT_EQ(lines(), 1) << "the same failure every pass is logged once";
  EXPECT_EQ(sync->stats().errors, 5u) << "but counted every time";
  Advance(absl::Minutes(1));
  EXPECT_FALSE(sync->SyncOnce().ok());
  EXPECT_EQ(lines(), 2) << "and again a minute later";
  log::SetOutputFd(2);
  close(fd);
}

TEST_F(MeshConfigMapSyncTest, AnUnreachableApiServerFailsThePassAndWritesNothing) {
  api_.Unreachable(true);
  auto sync = Make();
  EXPECT_EQ(sync->SyncOnce().code(), absl::StatusCode::kUnavailable);
  api_.Unreachable(false);
  EXPECT_TRUE(sync->SyncOnce().ok());
  EXPECT_TRUE(api_.HasConfigMap("shop"));
}

TEST_F(MeshConfigMapSyncTest, AnEmptyBundleIsNeverPublished) {
  SetRoots("");
  auto sync = Make();
  EXPECT_EQ(sync->SyncOnce().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(api_.calls().empty());
}

TEST_F(MeshConfigMapSyncTest, TerminatingNamespacesAreSkipped) {
  api_.AddNamespace("leaving", true, /*terminating=*/true);
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_FALSE(api_.HasConfigMap("leaving"));
  EXPECT_EQ(sync->stats().namespaces, 2);
}

TEST_F(MeshConfigMapSyncTest, TheThreadSyncsAndNotifyWakesIt) {
  auto sync = Make();
  sync->Start();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!api_.HasConfigMap("shop") && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(api_.HasConfigMap("shop"));
  SetRoots(kRootB);
  sync->Notify();
  while (api_.ConfigMap("shop")["data"]["roots.crt"] != kRootB && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(api_.ConfigMap("shop")["data"]["roots.crt"], kRootB);
  sync->Stop();
  sync->Stop();  // idempotent
  const size_t calls = api_.calls().size();
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(api_.calls().size(), calls) << "no call after Stop()";
}

TEST_F(MeshConfigMapSyncTest, MetricsAreExported) {
  auto sync = Make();
  ASSERT_TRUE(sync->SyncOnce().ok());
  const std::string m = sync->RenderMetrics();
  for (const char* want :
       {"trellis_mesh_configmap_sync_passes_total{result=\"ok\"} 1\n",
        "trellis_mesh_configmap_writes_total{operation=\"create\"} 2\n",
        "trellis_mesh_configmap_conflicts_total 0\n", "trellis_mesh_configmap_namespaces 2\n",
        "# TYPE trellis_mesh_configmap_errors_total counter\n"}) {
    EXPECT_NE(m.find(want), std::string::npos) << want << "\n" << m;
  }
}

using ::testing::HasSubstr;

json Injector(const std::string& ca_bundle) {
  json webhook = {
      {"name", "inject.trellis.io"},
      {"clientConfig",
       {{"service", {{"name", "trellis-control-plane"}, {"namespace", "trellis-system"}}},
        {"caBundle", ca_bundle}}},
      {"failurePolicy", "Fail"}};
  return {{"apiVersion", "admissionregistration.k8s.io/v1"},
          {"kind", "MutatingWebhookConfiguration"},
          {"metadata", {{"name", "trellis-sidecar-injector"}}},
          {"webhooks", json::array({webhook})}};
}

TEST_F(MeshConfigMapSyncTest, TheWebhookCaBundleFollowsTheLiveBundle) {
  api_.PutWebhookConfiguration(Injector("UExBQ0VIT0xERVI="));  // the shipped placeholder
  auto sync = Make("trellis-sidecar-injector");
  ASSERT_TRUE(sync->SyncOnce().ok());
  json injector = api_.WebhookConfiguration();
  EXPECT_EQ(injector["webhooks"][0]["clientConfig"]["caBundle"], absl::Base64Escape(kRootA));
  // Everything else is kept.
  EXPECT_EQ(injector["webhooks"][0]["failurePolicy"], "Fail");
  EXPECT_EQ(injector["webhooks"][0]["clientConfig"]["service"]["name"], "trellis-control-plane");
  EXPECT_EQ(sync->stats().webhook_updates, 1u);

  // In sync: read, never rewritten.
  api_.ClearCalls();
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(api_.Count("PUT"), 0);
  // A root rotation reaches the caBundle on the next pass, as it reaches the ConfigMaps.
  SetRoots(absl::StrCat(kRootA, kRootB));
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(api_.WebhookConfiguration()["webhooks"][0]["clientConfig"]["caBundle"],
            absl::Base64Escape(absl::StrCat(kRootA, kRootB)));
  // A re-applied placeholder is repaired on the next pass, racing writers included.
  api_.PutWebhookConfiguration(Injector("UExBQ0VIT0xERVI="));
  api_.BeforeNextWrite([this] { api_.PutWebhookConfiguration(Injector("b3RoZXI=")); });
  ASSERT_TRUE(sync->SyncOnce().ok());
  EXPECT_EQ(api_.WebhookConfiguration()["webhooks"][0]["clientConfig"]["caBundle"],
            absl::Base64Escape(absl::StrCat(kRootA, kRootB)));
  EXPECT_THAT(sync->RenderMetrics(),
              HasSubstr("trellis_webhook_ca_bundle_updates_total{result=\"ok\"} 3"));
}

TEST_F(MeshConfigMapSyncTest, AMissingOrForbiddenWebhookConfigurationFailsThePassClearly) {
  auto sync = Make("trellis-sidecar-injector");
  absl::Status missing = sync->SyncOnce();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("apply k8s/"));
  EXPECT_TRUE(api_.HasConfigMap("shop")) << "the ConfigMaps are still synced";

  api_.PutWebhookConfiguration(Injector("UExBQ0VIT0xERVI="));
  api_.Forbid(absl::StrCat("PUT ", kWebhookPath));
  absl::Status forbidden = sync->SyncOnce();
  EXPECT_EQ(forbidden.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(forbidden.message(), HasSubstr("update mutatingwebhookconfigurations"));
  EXPECT_EQ(sync->stats().webhook_errors, 2u);
  EXPECT_THAT(sync->RenderMetrics(),
              HasSubstr("trellis_webhook_ca_bundle_updates_total{result=\"error\"} 2"));
}

TEST(KubeApiClientTest, RefusesPlainHttpAndPaths) {
  for (const char* url : {"http://10.0.0.1", "https://", "https://10.0.0.1/api"}) {
    KubeApiConfig config{url, "/etc/hostname", "/tmp/token"};
    auto client = KubeApiClient::Create(config);
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << url;
  }
  KubeApiConfig missing_ca{"https://10.0.0.1", "/nonexistent/ca.crt", "/tmp/token"};
  EXPECT_TRUE(absl::StrContains(KubeApiClient::Create(missing_ca).status().message(),
                                "/nonexistent/ca.crt"));
}

TEST(KubeApiClientTest, InClusterConfigNeedsThePodEnvironment) {
  unsetenv("KUBERNETES_SERVICE_HOST");
  EXPECT_EQ(InClusterConfig().status().code(), absl::StatusCode::kFailedPrecondition);
  setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto config = InClusterConfig("/sa");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->server_url, "https://[fd00::1]:443");
  EXPECT_EQ(config->token_file, "/sa/token");
  EXPECT_EQ(config->ca_file, "/sa/ca.crt");
}

TEST(KubeApiClientTest, AnUnreadableTokenFileIsUnavailableWithoutACall) {
  KubeApiConfig config{"https://127.0.0.1:1", "/etc/hostname", "/nonexistent/token"};
  auto client = KubeApiClient::Create(config);
  ASSERT_TRUE(client.ok());
  auto got = (*client)->Call("GET", "/api", "");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(got.status().message(), "/nonexistent/token"));
}

}  // namespace
}  // namespace trellis::control_plane::kube
