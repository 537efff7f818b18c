// The webhook server over real HTTPS: every admission review is counted by result in the
// Prometheus text and logged as one JSON line; a refusal's line names the pod and the reason
// the user saw, so an operator can tell from the control plane's log why a pod was refused.
#include "control-plane/inject/webhook_server.h"

#include <fcntl.h>
#include <httplib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/log/json_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::control_plane::inject {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Review(const std::string& uid, const std::string& annotations_json) {
  return absl::StrCat(R"({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {"uid": ")",
                      uid, R"(", "kind": {"group": "", "version": "v1", "kind": "Pod"},
      "namespace": "shop", "operation": "CREATE",
      "object": {"metadata": {"name": "web", "annotations": )",
                      annotations_json, R"(},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(WebhookServer, CountsAndLogsEveryResultOverHttps) {
  const std::string dir = ::testing::TempDir();
  const trellis::testing::TestCa root = trellis::testing::MakeRoot();
  const trellis::testing::TestLeaf leaf =
      trellis::testing::MakeLeaf(root, "spiffe://cluster.local/ns/trellis-system/sa/cp");
  const std::string cert_path = dir + "/webhook.crt";
  const std::string key_path = dir + "/webhook.key";
  std::ofstream(cert_path) << identity::ToPemChain(leaf.chain);
  std::ofstream(key_path) << *leaf.key->ToPem();

  const std::string log_path = dir + "/webhook.log";
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(log_fd, 0);
  log::SetOutputFd(log_fd);

  WebhookServer server(WebhookOptions{}, cert_path, key_path);
  absl::StatusOr<int> port = server.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();

  httplib::SSLClient client("127.0.0.1", *port);
  client.enable_server_certificate_verification(
      false);  // the API server checks caBundle; not the point here
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(5, 0);
  auto post = [&](const std::string& body) {
    httplib::Result res = client.Post("/inject", body, "application/json");
    return res ? res->status : -1;
  };
  EXPECT_EQ(post(Review("uid-injected", "{}")), 200);
  EXPECT_EQ(post(Review("uid-opted-out", R"({"trellis.io/inject": "false"})")), 200);
  EXPECT_EQ(post(Review("uid-refused", R"({"trellis.io/exclude-outbound-ports": "postgres"})")),
            200);
  EXPECT_EQ(post("not json"), 400);

  EXPECT_EQ(server.CountOf(WebhookResult::kInjected), 1);
  EXPECT_EQ(server.CountOf(WebhookResult::kUnchanged), 1);
  EXPECT_EQ(server.CountOf(WebhookResult::kRefused), 1);
  EXPECT_EQ(server.CountOf(WebhookResult::kBadRequest), 1);
  const std::string metrics = server.RenderMetrics();
  EXPECT_THAT(metrics, HasSubstr("# TYPE trellis_webhook_requests_total counter"));
  EXPECT_THAT(metrics, HasSubstr(R"(trellis_webhook_requests_total{result="injected"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(trellis_webhook_requests_total{result="refused"} 1)"));
  EXPECT_THAT(metrics,
              HasSubstr(R"(trellis_webhook_requests_total{result="admitted_unmeshed"} 0)"));
  server.Stop();
  log::SetOutputFd(2);
  close(log_fd);

  // One JSON line per noteworthy call: the refusal names the pod, the uid and the bad annotation.
  std::string refusal;
  std::string injected;
  std::istringstream lines(ReadFile(log_path));
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    if (j.value("result", "") == "refused") refusal = line;
    if (j.value("result", "") == "injected") injected = line;
  }
  ASSERT_FALSE(refusal.empty()) << ReadFile(log_path);
  EXPECT_THAT(refusal, HasSubstr(R"("level":"warn")"));
  EXPECT_THAT(refusal, HasSubstr(R"("pod":"shop/web")"));
  EXPECT_THAT(refusal, HasSubstr(R"("uid":"uid-refused")"));
  EXPECT_THAT(refusal, HasSubstr("trellis.io/exclude-outbound-ports"));
  EXPECT_THAT(refusal, HasSubstr(R"("peer":"127.0.0.1:)"));
  ASSERT_FALSE(injected.empty());
  EXPECT_THAT(injected, Not(HasSubstr("reason")));
  // The opted-out pod is routine: debug level, not written at the default level.
  EXPECT_THAT(ReadFile(log_path), Not(HasSubstr("uid-opted-out")));
}

}  // namespace
}  // namespace trellis::control_plane::inject
