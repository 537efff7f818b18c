#include "proxy/config/listener_spec.h"

#include "gtest/gtest.h"

namespace trellis::proxy {
namespace {

TEST(ListenerSpecTest, OutboundWithExpectedIdentity) {
  absl::StatusOr<ListenerSpec> spec =
      ParseListenerSpec("out:127.0.0.1:9000=>10.0.0.7:9443@spiffe://cluster.local/ns/shop/sa/checkout");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind, ListenerSpec::Kind::kOutbound);
  EXPECT_EQ(spec->name, "out-9000");
  EXPECT_EQ(spec->bind_host, "127.0.0.1");
  EXPECT_EQ(spec->bind_port, 9000);
  EXPECT_EQ(spec->upstream_host, "10.0.0.7");
  EXPECT_EQ(spec->upstream_port, 9443);
  ASSERT_EQ(spec->peers.size(), 1u);
  EXPECT_EQ(spec->peers[0].ToString(), "spiffe://cluster.local/ns/shop/sa/checkout");
}

TEST(ListenerSpecTest, InboundWithSeveralPatternsNameAndIpv6) {
  absl::StatusOr<ListenerSpec> spec = ParseListenerSpec(
      "api=in:[::]:9443=>[::1]:8080@spiffe://cluster.local/ns/shop/*|spiffe://cluster.local/ns/ops/sa/probe");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind, ListenerSpec::Kind::kInbound);
  EXPECT_EQ(spec->name, "api");
  EXPECT_EQ(spec->bind_host, "::");
  EXPECT_EQ(spec->upstream_host, "::1");
  ASSERT_EQ(spec->peers.size(), 2u);
  EXPECT_EQ(spec->peers[1].ToString(), "spiffe://cluster.local/ns/ops/sa/probe");
}

TEST(ListenerSpecTest, PortZeroPicksAndNoPatternsMeansOwnTrustDomain) {
  absl::StatusOr<ListenerSpec> spec = ParseListenerSpec("in:127.0.0.1:0=>127.0.0.1:8080");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->bind_port, 0);
  EXPECT_TRUE(spec->peers.empty());
  EXPECT_EQ(spec->name, "in-auto");
}

TEST(ListenerSpecTest, RefusalsSayWhatIsWrong) {
  struct Case {
    const char* spec;
    const char* error;
  } cases[] = {
      {"tcp:1.2.3.4:1=>1.2.3.4:2", "must start with out:"},
      {"out:127.0.0.1:9000", "missing \"=>\""},
      {"out:127.0.0.1=>1.2.3.4:2", "listen address"},
      {"out:127.0.0.1:9000=>1.2.3.4:0", "destination"},
      {"out:127.0.0.1:9000=>1.2.3.4:70000", "destination"},
      {"out:::1:9000=>1.2.3.4:1", "listen address"},
      {"out:127.0.0.1:9000=>1.2.3.4:1@", "nothing after '@'"},
      {"out:127.0.0.1:9000=>1.2.3.4:1@spiffe://Bad/x", "lowercase"},
      {"=out:127.0.0.1:9000=>1.2.3.4:1", "empty listener name"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ListenerSpec> spec = ParseListenerSpec(c.spec);
    ASSERT_FALSE(spec.ok()) << c.spec;
    EXPECT_NE(spec.status().message().find(c.error), std::string::npos)
        << c.spec << " -> " << spec.status();
    EXPECT_NE(spec.status().message().find("expected e.g."), std::string::npos);
  }
}

TEST(ListenerSpecTest, ListRejectsDuplicateNames) {
  absl::StatusOr<std::vector<ListenerSpec>> specs = ParseListenerSpecs(
      "out:127.0.0.1:9000=>1.2.3.4:1, in:127.0.0.1:9443=>127.0.0.1:80");
  ASSERT_TRUE(specs.ok()) << specs.status();
  EXPECT_EQ(specs->size(), 2u);
  specs = ParseListenerSpecs("a=out:127.0.0.1:1=>1.2.3.4:1,a=out:127.0.0.1:2=>1.2.3.4:1");
  ASSERT_FALSE(specs.ok());
  EXPECT_NE(specs.status().message().find("two listeners are named \"a\""), std::string::npos);
}

}  // namespace
}  // namespace trellis::proxy
