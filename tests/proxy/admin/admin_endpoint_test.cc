#include "proxy/admin/admin_endpoint.h"

#include <httplib.h>

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/time/clock.h"
#include "common/admin/http_admin.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::proxy {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kId[] = "spiffe://cluster.local/ns/default/sa/web";

struct Reply {
  int status = 0;
  std::string body;
  std::string content_type;
};

// Real HTTP over loopback to the admin port, as kubelet and curl would do it.
class AdminEndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AdminEndpoint::Options options;
    options.store = &store_;
    options.stats = &stats_;
    options.workers = [this] { return std::vector<const WorkerStats*>{&worker_a_, &worker_b_}; };
    options.listeners_up = [this] { return listeners_up_.load(); };
    options.drain = [this] { drains_.fetch_add(1); };
    options.config_dump = [] {
      return nlohmann::json{
          {"listeners", {{{"name", "inbound"}, {"port", 15006}}}},
          {"workers", 2},
          {"files", {{"cert_file", "/etc/trellis/tls.crt"}, {"key_file", "/etc/trellis/tls.key"}}},
          {"oops", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}};
    };
    options.clock = [this] { return absl::Now() + absl::Seconds(clock_offset_seconds_.load()); };
    absl::StatusOr<std::unique_ptr<AdminEndpoint>> endpoint = AdminEndpoint::Create(options);
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = *std::move(endpoint);
    endpoint_->Register(&http_);
    absl::StatusOr<int> port = http_.Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", *port);
    client_->set_connection_timeout(5);
    client_->set_read_timeout(5);
  }

  void TearDown() override { http_.Stop(); }

  void LoadCertificate() {
    Credentials creds{leaf_.chain, leaf_.key, testing::BundleOf({&root_}), tls::DenyList()};
    absl::StatusOr<tls::DenyList> deny =
        tls::DenyList::Create({"abcdef", "123"}, {"spiffe://cluster.local/ns/evil/sa/x"});
    ASSERT_TRUE(deny.ok());
    creds.deny_list = *deny;
    ASSERT_TRUE(store_.Update(std::move(creds)).ok());
  }

  static Reply ToReply(const httplib::Result& result) {
    Reply reply;
    if (result) {
      reply.status = result->status;
      reply.body = result->body;
      reply.content_type = result->get_header_value("Content-Type");
    }
    return reply;
  }
  Reply Get(const std::string& path) { return ToReply(client_->Get(path.c_str())); }
  Reply Post(const std::string& path) {
    return ToReply(client_->Post(path.c_str(), "", "text/plain"));
  }

  testing::TestCa root_ = testing::MakeRoot("Mesh Root");
  testing::TestLeaf leaf_ = testing::MakeLeaf(root_, kId);
  ContextStore store_;
  ProxyStats stats_;
  WorkerStats worker_a_;
  WorkerStats worker_b_;
  std::atomic<bool> listeners_up_{true};
  std::atomic<int> drains_{0};
  std::atomic<int64_t> clock_offset_seconds_{0};
  admin::HttpAdmin http_;
  std::unique_ptr<AdminEndpoint> endpoint_;
  std::unique_ptr<httplib::Client> client_;
};

TEST(AdminEndpointCreateTest, RequiresStoreStatsAndCallbacks) {
  ContextStore store;
  ProxyStats stats;
  AdminEndpoint::Options options;
  EXPECT_EQ(AdminEndpoint::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.store = &store;
  options.stats = &stats;
  EXPECT_FALSE(AdminEndpoint::Create(options).ok());
  options.listeners_up = [] { return true; };
  options.drain = [] {};
  EXPECT_TRUE(AdminEndpoint::Create(options).ok());
}

TEST_F(AdminEndpointTest, LiveIsAlwaysOk) {
  const Reply reply = Get("/live");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(Get("/no/such/route").status, 404);
}

TEST_F(AdminEndpointTest, NotReadyBeforeTheFirstCertificate) {
  const Reply reply = Get("/ready");
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, HasSubstr("no certificate yet"));
}

TEST_F(AdminEndpointTest, ReadyWithCertificateAndListeners) {
  LoadCertificate();
  Reply reply = Get("/ready");
  EXPECT_EQ(reply.status, 200);
  EXPECT_THAT(reply.body, HasSubstr("ready"));

  listeners_up_ = false;
  reply = Get("/ready");
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, HasSubstr("listeners not up"));
}

TEST_F(AdminEndpointTest, NotReadyOnceTheCertificateExpired) {
  LoadCertificate();
  clock_offset_seconds_ = 2 * 3600;  // the leaf lives for one hour
  const Reply reply = Get("/ready");
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, HasSubstr("certificate expired at"));
  EXPECT_THAT(reply.body, HasSubstr(leaf_.chain.front().serial_hex()));
}

TEST_F(AdminEndpointTest, PostDrainStartsDrainingOnce) {
  LoadCertificate();
  ASSERT_EQ(Get("/ready").status, 200);
  Reply reply = Post("/drain");
  EXPECT_EQ(reply.status, 200);
  EXPECT_THAT(reply.body, HasSubstr("draining"));
  EXPECT_EQ(drains_.load(), 1);
  EXPECT_TRUE(endpoint_->draining());

  reply = Get("/ready");
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, HasSubstr("draining"));

  // Again, and from SIGTERM handling: the drain callback still ran once.
  EXPECT_EQ(Post("/drain").status, 200);
  endpoint_->Drain();
  EXPECT_EQ(drains_.load(), 1);
}

TEST_F(AdminEndpointTest, GetDrainIsRefused) {
  LoadCertificate();
  const Reply reply = Get("/drain");
  EXPECT_EQ(reply.status, 405);
  EXPECT_THAT(reply.body, HasSubstr("POST"));
  EXPECT_EQ(drains_.load(), 0);
  EXPECT_FALSE(endpoint_->draining());
  EXPECT_EQ(Get("/ready").status, 200);
}

TEST_F(AdminEndpointTest, DrainFromSigtermMakesReadyFail) {
  LoadCertificate();
  endpoint_->Drain();
  EXPECT_EQ(drains_.load(), 1);
  EXPECT_EQ(Get("/ready").status, 503);
}

TEST_F(AdminEndpointTest, PrometheusSumsWorkersAndGlobals) {
  worker_a_.connections_total[0] = 3;
  worker_b_.connections_total[0] = 4;
  worker_a_.CountHandshakeFailure(Direction::kInbound, tls::FailureReason::kUnknownCa);
  worker_b_.CountHandshakeFailure(Direction::kInbound, tls::FailureReason::kUnknownCa);
  worker_b_.CountHandshakeFailure(Direction::kOutbound, tls::FailureReason::kRevoked);
  stats_.credential_reloads_ok = 5;
  stats_.rotations = 2;
  worker_a_.relay_buffer_bytes = 65536;
  worker_b_.relay_buffer_bytes = 131072;
  worker_b_.tls_record_buffer_bytes = 65624;
  const Reply reply = Get("/stats/prometheus");
  EXPECT_EQ(reply.status, 200);
  EXPECT_THAT(reply.content_type, HasSubstr("text/plain"));
  EXPECT_THAT(reply.body, HasSubstr("trellis_proxy_connections_total{direction=\"inbound\"} 7"));
  EXPECT_THAT(reply.body, HasSubstr("trellis_proxy_handshake_failures_total{direction=\"inbound\","
                                    "reason=\"unknown_ca\"} 2"));
  EXPECT_THAT(reply.body, HasSubstr("trellis_proxy_handshake_failures_total{direction="
                                    "\"outbound\",reason=\"revoked\"} 1"));
  for (tls::FailureReason reason : tls::kAllFailureReasons) {
    EXPECT_THAT(reply.body,
                HasSubstr(std::string("reason=\"") + std::string(tls::FailureReasonLabel(reason))));
  }
  EXPECT_THAT(reply.body, HasSubstr("trellis_proxy_credential_reloads_total{result=\"ok\"} 5"));
  EXPECT_THAT(reply.body, HasSubstr("trellis_proxy_rotations_total 2"));
  // The two buffer pools are shown apart; their sum is the proxy's buffer memory.
  EXPECT_THAT(reply.body, HasSubstr("trellis_proxy_relay_buffer_bytes{pool=\"relay\"} 196608\n"));
  EXPECT_THAT(reply.body,
              HasSubstr("trellis_proxy_relay_buffer_bytes{pool=\"tls_records\"} 65624\n"));
}

TEST_F(AdminEndpointTest, CertsBeforeTheFirstCertificate) {
  const Reply reply = Get("/certs");
  EXPECT_EQ(reply.status, 200);
  const nlohmann::json certs = nlohmann::json::parse(reply.body, nullptr, false);
  ASSERT_FALSE(certs.is_discarded()) << reply.body;
  EXPECT_TRUE(certs["spiffe_id"].is_null());
  EXPECT_TRUE(certs["serial"].is_null());
  EXPECT_TRUE(certs["chain"].empty());
  EXPECT_TRUE(certs["rotation"]["next_rotation"].is_null());
}

TEST_F(AdminEndpointTest, CertsDescribesTheLoadedCredentials) {
  LoadCertificate();
  stats_.rotations = 3;
  const Reply reply = Get("/certs");
  EXPECT_EQ(reply.status, 200);
  EXPECT_THAT(reply.content_type, HasSubstr("application/json"));
  EXPECT_THAT(reply.body, Not(HasSubstr("PRIVATE KEY")));
  const nlohmann::json certs = nlohmann::json::parse(reply.body, nullptr, false);
  ASSERT_FALSE(certs.is_discarded()) << reply.body;
  const identity::Certificate& leaf = leaf_.chain.front();
  EXPECT_EQ(certs["spiffe_id"], kId);
  EXPECT_EQ(certs["serial"], leaf.serial_hex());
  EXPECT_TRUE(certs["not_after"].is_string());
  EXPECT_TRUE(certs["not_before"].is_string());
  ASSERT_EQ(certs["chain"].size(), 1u);
  EXPECT_EQ(certs["chain"][0]["serial"], leaf.serial_hex());
  EXPECT_EQ(certs["chain"][0]["sha256"], leaf.sha256_hex());
  EXPECT_EQ(certs["chain"][0]["issuer"], root_.cert.subject());
  EXPECT_TRUE(certs["chain"][0]["subject"].is_string());
  EXPECT_TRUE(certs["chain"][0]["not_after"].is_string());
  ASSERT_EQ(certs["bundle_roots"].size(), 1u);
  EXPECT_EQ(certs["bundle_roots"][0]["sha256"], root_.cert.sha256_hex());
  EXPECT_EQ(certs["bundle_roots"][0]["subject"], root_.cert.subject());
  EXPECT_TRUE(certs["bundle_roots"][0]["not_after"].is_string());
  EXPECT_EQ(certs["deny_list"]["serials"], 2);
  EXPECT_EQ(certs["deny_list"]["spiffe_ids"], 1);
  EXPECT_TRUE(certs["rotation"]["next_rotation"].is_null());
  EXPECT_TRUE(certs["rotation"]["last_error"].is_null());
  EXPECT_EQ(certs["rotation"]["rotation_count"], 3);
  EXPECT_EQ(certs["generation"], 1);
}

TEST(AdminEndpointRotationTest, CertsShowsTheSourcesRotationState) {
  ContextStore store;
  ProxyStats stats;
  AdminEndpoint::Options options;
  options.store = &store;
  options.stats = &stats;
  options.listeners_up = [] { return true; };
  options.drain = [] {};
  options.rotation = [] {
    AdminEndpoint::RotationInfo info;
    info.next_rotation = absl::FromUnixSeconds(1800000000);
    info.last_error = "control plane unavailable";
    return info;
  };
  absl::StatusOr<std::unique_ptr<AdminEndpoint>> endpoint = AdminEndpoint::Create(options);
  ASSERT_TRUE(endpoint.ok());
  const nlohmann::json certs = nlohmann::json::parse((*endpoint)->Certs().body, nullptr, false);
  ASSERT_FALSE(certs.is_discarded());
  EXPECT_EQ(certs["rotation"]["next_rotation"], "2027-01-15T08:00:00Z");
  EXPECT_EQ(certs["rotation"]["last_error"], "control plane unavailable");
}

TEST_F(AdminEndpointTest, ConfigDumpIsJsonWithoutSecrets) {
  const Reply reply = Get("/config_dump");
  EXPECT_EQ(reply.status, 200);
  EXPECT_THAT(reply.content_type, HasSubstr("application/json"));
  const nlohmann::json config = nlohmann::json::parse(reply.body, nullptr, false);
  ASSERT_FALSE(config.is_discarded()) << reply.body;
  EXPECT_EQ(config["workers"], 2);
  EXPECT_EQ(config["listeners"][0]["port"], 15006);
  EXPECT_EQ(config["files"]["key_file"], "/etc/trellis/tls.key");
  EXPECT_EQ(config["oops"], "<redacted>");
  EXPECT_THAT(reply.body, Not(HasSubstr("PRIVATE KEY")));
}

}  // namespace
}  // namespace trellis::proxy
