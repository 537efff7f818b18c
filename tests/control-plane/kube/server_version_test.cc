// The API server version decides native vs classic sidecars for --inject_sidecar_mode=auto.
// The real API server (1.20) answering /version: //tests/e2e/kube/manifests.
#include "control-plane/kube/server_version.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane::kube {
namespace {

using ::testing::HasSubstr;

TEST(ServerVersion, NativeSidecarsFrom129) {
  struct Case {
    const char* body;
    bool native;
  };
  for (const Case& c : {
           Case{R"({"major": "1", "minor": "20", "gitVersion": "v1.20.2"})", false},
           Case{R"({"major": "1", "minor": "28"})", false},
           Case{R"({"major": "1", "minor": "28+", "gitVersion": "v1.28.3-eks-1"})", false},
           Case{R"({"major": "1", "minor": "29"})", true},
           Case{R"({"major": "1", "minor": "30+"})", true},
           Case{R"({"major": "2", "minor": "0"})", true},
       }) {
    absl::StatusOr<ServerVersion> version = ParseServerVersion(c.body);
    ASSERT_TRUE(version.ok()) << c.body << ": " << version.status();
    EXPECT_EQ(version->SupportsNativeSidecars(), c.native) << c.body;
  }
}

TEST(ServerVersion, MalformedAnswersSayWhichField) {
  for (const char* body :
       {"", "[]", "not json", R"({"minor": "29"})", R"({"major": 1, "minor": "29"})",
        R"({"major": "1", "minor": "x"})", R"({"major": "1", "minor": "+"})",
        R"({"major": "1", "minor": "-3"})", R"({"major": "1", "minor": "29++"})"}) {
    absl::StatusOr<ServerVersion> version = ParseServerVersion(body);
    EXPECT_FALSE(version.ok()) << body;
  }
  EXPECT_THAT(ParseServerVersion(R"({"major": "1", "minor": "x"})").status().message(),
              HasSubstr("\"minor\": \"x\""));
  EXPECT_THAT(ParseServerVersion(R"({"minor": "29"})").status().message(), HasSubstr("major"));
}

class CannedApi : public KubeApi {
 public:
  CannedApi(long status, std::string body) : status_(status), body_(std::move(body)) {}
  absl::StatusOr<KubeResponse> Call(absl::string_view method, absl::string_view path,
                                    absl::string_view) override {
    last_ = std::string(method) + " " + std::string(path);
    if (status_ == 0) return absl::UnavailableError("connection refused");
    return KubeResponse{status_, body_};
  }
  std::string last_;

 private:
  long status_;
  std::string body_;
};

TEST(ServerVersion, FetchAsksGetVersionAndReportsFailures) {
  CannedApi ok(200, R"({"major": "1", "minor": "29"})");
  absl::StatusOr<ServerVersion> version = FetchServerVersion(ok);
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(ok.last_, "GET /version");
  EXPECT_EQ(version->minor, 29);

  CannedApi forbidden(403, R"({"kind": "Status", "message": "forbidden: no /version for you"})");
  EXPECT_THAT(FetchServerVersion(forbidden).status().message(), HasSubstr("HTTP 403"));
  EXPECT_EQ(FetchServerVersion(forbidden).status().code(), absl::StatusCode::kUnavailable);
  CannedApi down(0, "");
  EXPECT_THAT(FetchServerVersion(down).status().message(), HasSubstr("connection refused"));
  CannedApi garbage(200, "<html>");
  EXPECT_EQ(FetchServerVersion(garbage).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace trellis::control_plane::kube
