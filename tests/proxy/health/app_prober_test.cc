// App health probes through the proxy's admin endpoint, with real sockets: a real HTTP and a real
// HTTPS app on 127.0.0.1:0, the real AdminEndpoint on a real HttpAdmin, and an HTTP client doing
// what the kubelet does (GET /app-health/<container>/<kind>).

#include "proxy/health/app_prober.h"

#include <httplib.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/admin/http_admin.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proxy/admin/admin_endpoint.h"
#include "proxy/identity/context_store.h"
#include "proxy/stats/proxy_stats.h"
#include "tests/proxy/health/test_app.h"

namespace trellis::proxy::health {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// --- TRELLIS_APP_PROBES parsing ---------------------------------------------------------------

TEST(ParseAppProbesTest, ReadsWhatTheInjectorWrites) {
  absl::StatusOr<std::vector<AppProbe>> probes = ParseAppProbes(R"({
    "/app-health/web/livez": {"path": "/healthz?full=1", "port": 8080, "scheme": "HTTPS",
                              "httpHeaders": [{"name": "X-Probe", "value": "yes"}],
                              "host": "10.1.2.3", "timeoutSeconds": 3},
    "/app-health/web/readyz": {"port": 9090}})");
  ASSERT_TRUE(probes.ok()) << probes.status();
  ASSERT_EQ(probes->size(), 2u);
  const AppProbe& live = (*probes)[0];
  EXPECT_EQ(live.route, "/app-health/web/livez");
  EXPECT_EQ(live.port, 8080);
  EXPECT_EQ(live.path, "/healthz?full=1");
  EXPECT_TRUE(live.https);
  EXPECT_EQ(live.host, "10.1.2.3");
  ASSERT_EQ(live.headers.size(), 1u);
  EXPECT_EQ(live.headers[0].first, "X-Probe");
  EXPECT_EQ(live.headers[0].second, "yes");
  EXPECT_EQ(live.timeout, absl::Seconds(3));
  const AppProbe& ready = (*probes)[1];
  EXPECT_EQ(ready.path, "/");
  EXPECT_FALSE(ready.https);
  EXPECT_EQ(ready.timeout, absl::Seconds(1));  // the kubelet's default
}

TEST(ParseAppProbesTest, EmptyMeansNoProbes) {
  for (const char* text : {"", "  \n", "{}"}) {
    absl::StatusOr<std::vector<AppProbe>> probes = ParseAppProbes(text);
    ASSERT_TRUE(probes.ok()) << text << ": " << probes.status();
    EXPECT_TRUE(probes->empty());
  }
}

TEST(ParseAppProbesTest, BadInputSaysWhichEntryAndWhatToFix) {
  struct Case {
    const char* json;
    std::vector<std::string> want;
  };
  const Case cases[] = {
      {R"({"/app-health/web/livez": {"port": 8080)", {"not valid JSON", "expected an object"}},
      {R"(["/app-health/web/livez"])", {"must be a JSON object", "array"}},
      {R"({"/app-health/web/livez": {"path": "/healthz"}})",
       {"entry \"/app-health/web/livez\"", "port is required"}},
      {R"({"/app-health/web/livez": {"port": "http"}})",
       {"/app-health/web/livez", "port must be a number 1-65535", "\"http\""}},
      {R"({"/app-health/web/livez": {"port": 70000}})", {"port must be a number 1-65535"}},
      {R"({"/healthz": {"port": 8080}})", {"entry \"/healthz\"", "must start with /app-health/"}},
      {R"({"/app-health/web/livez": 8080})", {"must be an object"}},
      {R"({"/app-health/web/readyz": {"port": 1, "scheme": "ftp"}})",
       {"/app-health/web/readyz", "scheme must be \"HTTP\" or \"HTTPS\""}},
      {R"({"/app-health/web/livez": {"port": 1, "timeoutSeconds": 0}})",
       {"timeoutSeconds must be a whole number of seconds >= 1"}},
      {R"({"/app-health/web/livez": {"port": 1, "path": "/a b"}})", {"percent-encode"}},
      {R"({"/app-health/web/livez": {"port": 1, "httpHeaders": [{"name": "X-A", "value": "a\r\nEvil: 1"}]}})",
       {"httpHeaders[0].value holds control characters"}},
      {R"({"/app-health/web/livez": {"port": 1, "httpHeaders": [{"name": "Bad Name", "value": "x"}]}})",
       {"httpHeaders[0].name \"Bad Name\" is not a valid HTTP header name"}},
      {R"({"/app-health/web/livez": {"port": 1, "httpHeaders": {"X-A": "1"}}})",
       {"httpHeaders must be a list"}},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<AppProbe>> probes = ParseAppProbes(c.json);
    ASSERT_FALSE(probes.ok()) << "accepted: " << c.json;
    EXPECT_EQ(probes.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& want : c.want) {
      EXPECT_THAT(std::string(probes.status().message()), HasSubstr(want)) << c.json;
    }
  }
}

// --- Through the admin endpoint ---------------------------------------------------------------

struct Reply {
  int status = 0;
  std::string body;
};

class AppProbesEndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    nlohmann::json probes = {
        {"/app-health/web/livez",
         {{"path", "/ok"},
          {"port", http_.port()},
          {"httpHeaders",
           {{{"name", "X-Probe"}, {"value", "trellis"}},
            {{"name", "Host"}, {"value", "web.internal"}}}}}},
        {"/app-health/web/readyz", {{"path", "/fail"}, {"port", http_.port()}}},
        {"/app-health/web/startupz",
         {{"path", "/slow"}, {"port", http_.port()}, {"timeoutSeconds", 1}}},
        {"/app-health/moved/livez", {{"path", "/redirect"}, {"port", http_.port()}}},
        {"/app-health/tls/livez", {{"path", "/ok"}, {"port", https_.port()}, {"scheme", "HTTPS"}}},
        {"/app-health/tls/readyz",
         {{"path", "/fail"}, {"port", https_.port()}, {"scheme", "HTTPS"}}},
        {"/app-health/gone/livez", {{"path", "/ok"}, {"port", refusing_.port()}}},
        {"/app-health/plain-to-tls/livez", {{"path", "/ok"}, {"port", https_.port()}}},
        {"/app-health/tls-to-plain/livez",
         {{"path", "/ok"}, {"port", http_.port()}, {"scheme", "HTTPS"}}},
        {"/app-health/hung/livez",
         {{"path", "/slow"}, {"port", hung_.port()}, {"timeoutSeconds", 15}}},
        {"/app-health/hung/readyz",
         {{"path", "/slow"}, {"port", hung_.port()}, {"timeoutSeconds", 15}}},
    };
    absl::StatusOr<std::vector<AppProbe>> parsed = ParseAppProbes(probes.dump());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    AppProber::Options prober_options;
    prober_options.max_in_flight = 3;
    prober_options.max_in_flight_per_route = 2;
    absl::StatusOr<std::unique_ptr<AppProber>> prober =
        AppProber::Create(*std::move(parsed), prober_options);
    ASSERT_TRUE(prober.ok()) << prober.status();
    prober_ = *std::move(prober);

    AdminEndpoint::Options options;
    options.store = &store_;
    options.stats = &stats_;
    options.listeners_up = [] { return true; };
    options.drain = [] {};
    options.app_prober = prober_.get();
    absl::StatusOr<std::unique_ptr<AdminEndpoint>> endpoint = AdminEndpoint::Create(options);
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = *std::move(endpoint);
    endpoint_->Register(&http_admin_);
    absl::StatusOr<int> port = http_admin_.Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status();
    admin_port_ = *port;
  }

  void TearDown() override {
    http_.Release();
    hung_.Release();
    http_admin_.Stop();
  }

  // A GET on the admin port, as the kubelet sends it: a new connection per probe.
  Reply Get(const std::string& path) const {
    httplib::Client client("127.0.0.1", admin_port_);
    client.set_connection_timeout(5);
    client.set_read_timeout(30);
    httplib::Result result = client.Get(path.c_str());
    Reply reply;
    if (result) {
      reply.status = result->status;
      reply.body = result->body;
    }
    return reply;
  }

  double Count(const std::string& route, const char* result) const {
    const std::string line =
        "trellis_proxy_app_probes_total{path=\"" + route + "\",result=\"" + result + "\"} ";
    const Reply metrics = Get("/stats/prometheus");
    const size_t at = metrics.body.find(line);
    if (at == std::string::npos) return -1;
    return std::stod(metrics.body.substr(at + line.size()));
  }

  testing::TestApp http_;
  testing::TestApp https_{/*https=*/true};
  testing::TestApp hung_;  // only /slow is used: every request parks until released
  testing::RefusingPort refusing_;
  ContextStore store_;
  ProxyStats stats_;
  std::unique_ptr<AppProber> prober_;
  std::unique_ptr<AdminEndpoint> endpoint_;
  admin::HttpAdmin http_admin_;
  int admin_port_ = 0;
};

TEST_F(AppProbesEndpointTest, PassingAppProbeAnswersTheAppsStatusWithTheOriginalHeaders) {
  const Reply reply = Get("/app-health/web/livez");
  EXPECT_EQ(reply.status, 200) << reply.body;
  EXPECT_THAT(reply.body, HasSubstr("app answered 200"));
  EXPECT_EQ(http_.LastHeader("X-Probe"), "trellis");
  EXPECT_EQ(http_.LastHeader("Host"), "web.internal");  // httpHeaders' Host wins, as in kubelet
  EXPECT_THAT(http_.LastHeader("User-Agent"), StartsWith("kube-probe/"));
  EXPECT_EQ(Count("/app-health/web/livez", "pass"), 1);
  EXPECT_EQ(Count("/app-health/web/livez", "fail"), 0);
}

TEST_F(AppProbesEndpointTest, HostHeaderDefaultsToTheAddressProbed) {
  const Reply reply = Get("/app-health/moved/livez");
  // A redirect is not followed; 3xx is success for the kubelet, so it is passed on as it is.
  EXPECT_EQ(reply.status, 302) << reply.body;
  EXPECT_EQ(http_.LastHeader("Host"), "127.0.0.1:" + std::to_string(http_.port()));
  EXPECT_EQ(http_.LastHeader("X-Probe"), "");
  EXPECT_EQ(Count("/app-health/moved/livez", "pass"), 1);
}

TEST_F(AppProbesEndpointTest, FailingAppProbeAnswersTheAppsErrorStatus) {
  const Reply reply = Get("/app-health/web/readyz");
  EXPECT_EQ(reply.status, 500) << reply.body;
  EXPECT_THAT(reply.body, AllOf(HasSubstr("app answered 500"), HasSubstr("/fail")));
  EXPECT_EQ(Count("/app-health/web/readyz", "fail"), 1);
  EXPECT_EQ(Count("/app-health/web/readyz", "pass"), 0);
}

TEST_F(AppProbesEndpointTest, HttpsProbesSkipCertificateVerificationLikeTheKubelet) {
  // The app's certificate is self-signed and names no host: accepted, as the kubelet does.
  Reply reply = Get("/app-health/tls/livez");
  EXPECT_EQ(reply.status, 200) << reply.body;
  EXPECT_THAT(reply.body, HasSubstr("https://127.0.0.1:"));
  reply = Get("/app-health/tls/readyz");
  EXPECT_EQ(reply.status, 500) << reply.body;
  EXPECT_EQ(https_.requests(), 2);
}

TEST_F(AppProbesEndpointTest, UnreachableAppIs503WithTheReason) {
  const Reply reply = Get("/app-health/gone/livez");
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, AllOf(HasSubstr("cannot reach the app at 127.0.0.1:" +
                                          std::to_string(refusing_.port())),
                                HasSubstr("Connection refused")));
  EXPECT_EQ(Count("/app-health/gone/livez", "unreachable"), 1);
}

TEST_F(AppProbesEndpointTest, SlowAppTimesOutAfterTimeoutSeconds) {
  const absl::Time start = absl::Now();
  const Reply reply = Get("/app-health/web/startupz");
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, AllOf(HasSubstr("timeout"), HasSubstr("within 1s")));
  EXPECT_EQ(http_.waiting(), 1);  // the app really was still busy with it
  // Bounded by timeoutSeconds, not by the app: it would hold the request for 20 s.
  EXPECT_LT(took, absl::Seconds(15));
  EXPECT_EQ(Count("/app-health/web/startupz", "timeout"), 1);
}

TEST_F(AppProbesEndpointTest, WrongSchemeIsAnErrorNotAPass) {
  Reply reply = Get("/app-health/tls-to-plain/livez");
  EXPECT_EQ(reply.status, 503);
  EXPECT_THAT(reply.body, HasSubstr("TLS handshake with the app failed"));
  reply = Get("/app-health/plain-to-tls/livez");
  EXPECT_EQ(reply.status, 503) << reply.body;
  EXPECT_EQ(Count("/app-health/tls-to-plain/livez", "error"), 1);
  EXPECT_EQ(Count("/app-health/plain-to-tls/livez", "error"), 1);
}

TEST_F(AppProbesEndpointTest, UnknownAppHealthPathsAre404) {
  for (const char* path : {"/app-health/nope/livez", "/app-health/web/livez/extra",
                           "/app-health/web/healthz", "/app-health/"}) {
    const Reply reply = Get(path);
    EXPECT_EQ(reply.status, 404) << path;
    EXPECT_THAT(reply.body, HasSubstr("this proxy serves: ")) << path;
    EXPECT_THAT(reply.body, HasSubstr("/app-health/web/livez")) << path;
  }
  EXPECT_EQ(http_.requests(), 0);  // nothing reached the app
}

TEST_F(AppProbesEndpointTest, HungAppHoldsBoundedThreadsAndOtherRoutesStillAnswer) {
  // Two probes of one route park in the hung app (max_in_flight_per_route is 2) ...
  std::vector<Reply> parked(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] { parked[i] = Get("/app-health/hung/livez"); });
  }
  ASSERT_TRUE(hung_.WaitForWaiting(2));
  // ... so the next probe of that route is refused at once, without touching the app ...
  Reply busy = Get("/app-health/hung/livez");
  EXPECT_EQ(busy.status, 503);
  EXPECT_THAT(busy.body, HasSubstr("busy: 2 earlier probes of /app-health/hung/livez"));
  EXPECT_EQ(hung_.requests(), 2);
  // ... while the other containers' probes and the rest of the admin endpoint keep answering.
  EXPECT_EQ(Get("/app-health/web/livez").status, 200);
  EXPECT_EQ(Get("/live").status, 200);
  EXPECT_EQ(Get("/ready").status, 503);  // no certificate: answered, not stalled
  // A third parked probe (another route) reaches max_in_flight (3): now every probe is refused
  // at once, and the routes that never call the app still answer.
  threads.emplace_back([&] { parked[2] = Get("/app-health/hung/readyz"); });
  ASSERT_TRUE(hung_.WaitForWaiting(3));
  busy = Get("/app-health/web/livez");
  EXPECT_EQ(busy.status, 503);
  EXPECT_THAT(busy.body, HasSubstr("busy: 3 app probes are already waiting"));
  EXPECT_EQ(Get("/live").status, 200);
  EXPECT_EQ(Get("/stats/prometheus").status, 200);
  EXPECT_EQ(Count("/app-health/hung/livez", "busy"), 1);
  EXPECT_EQ(Count("/app-health/web/livez", "busy"), 1);
  EXPECT_EQ(hung_.waiting(), 3);  // all of that happened while the three were still parked
  hung_.Release();
  for (std::thread& t : threads) t.join();
  for (const Reply& r : parked) EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Count("/app-health/hung/livez", "pass"), 2);
  EXPECT_EQ(Get("/app-health/web/livez").status, 200);  // slots are given back
}

TEST(AppProberTest, NoProbesStillAnswers404WithAHint) {
  absl::StatusOr<std::unique_ptr<AppProber>> prober = AppProber::Create({});
  ASSERT_TRUE(prober.ok());
  admin::HttpAdmin http;
  (*prober)->Register(&http);
  absl::StatusOr<int> port = http.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  httplib::Client client("127.0.0.1", *port);
  client.set_read_timeout(10);
  httplib::Result result = client.Get("/app-health/web/livez");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 404);
  EXPECT_THAT(result->body, HasSubstr("TRELLIS_APP_PROBES is empty"));
  http.Stop();
}

TEST(AppProberTest, RejectsDuplicateRoutesAndBadLimits) {
  AppProbe probe;
  probe.route = "/app-health/web/livez";
  probe.port = 8080;
  EXPECT_FALSE(AppProber::Create({probe, probe}).ok());
  AppProber::Options options;
  options.max_in_flight = 0;
  EXPECT_FALSE(AppProber::Create({probe}, options).ok());
  probe.route = "/livez";
  EXPECT_FALSE(AppProber::Create({probe}).ok());
}

}  // namespace
}  // namespace trellis::proxy::health
