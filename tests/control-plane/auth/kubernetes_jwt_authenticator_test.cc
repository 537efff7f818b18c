#include "control-plane/auth/kubernetes_jwt_authenticator.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/control-plane/auth/jwt_test_util.h"

namespace trellis::control_plane {
namespace {

using testing::Base64Url;
using ::testing::HasSubstr;
using testing::JwksDocument;
using testing::MintRawToken;
using testing::MintToken;
using ::testing::Not;
using testing::ServiceAccountClaims;
using testing::SignaturePart;
using testing::TestSigningKey;
using json = nlohmann::json;

void WriteFile(const std::string& path, const std::string& content) {
  // Write a new file and rename it over the old one, as kubectl/ConfigMap updates do.
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp, std::ios::binary | std::ios::trunc) << content;
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0);
}

// Moves the file's mtime by `seconds`, so a rewrite within one timestamp tick is still noticed.
void BumpMtime(const std::string& path, int seconds) {
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  struct timespec times[2] = {st.st_atim, st.st_mtim};
  times[1].tv_sec += seconds;
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

class KubernetesJwtAuthenticatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = new TestSigningKey(TestSigningKey::NewRsa("rsa-1"));
    ec_ = new TestSigningKey(TestSigningKey::NewEc("ec-1"));
    other_ = new TestSigningKey(TestSigningKey::NewRsa("other-issuer"));
  }
  static void TearDownTestSuite() {
    delete rsa_;
    delete ec_;
    delete other_;
  }

  void SetUp() override {
    jwks_path_ =
        absl::StrCat(::testing::TempDir(), "/",
                     ::testing::UnitTest::GetInstance()->current_test_info()->name(), ".jwks.json");
    WriteFile(jwks_path_, JwksDocument({rsa_, ec_}));
    options_.jwks_path = jwks_path_;
    options_.clock = [this] { return now_; };
    options_.on_reload = [this](const absl::Status& s) { reloads_.push_back(s); };
  }

  std::unique_ptr<KubernetesJwtAuthenticator> Make() {
    absl::StatusOr<std::unique_ptr<KubernetesJwtAuthenticator>> auth =
        KubernetesJwtAuthenticator::Create(options_);
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }

  json Claims(absl::string_view ns = "shop", absl::string_view sa = "web") {
    return ServiceAccountClaims(now_, ns, sa);
  }

  // Expects `token` to be refused with UNAUTHENTICATED and a message containing each of `what`,
  // never the token's signature part.
  void ExpectRefused(const std::string& token, std::vector<std::string> what) {
    if (auth_ == nullptr) auth_ = Make();
    absl::StatusOr<AuthenticatedIdentity> id = auth_->Authenticate(token);
    ASSERT_FALSE(id.ok()) << id->spiffe_id.ToString();
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr("kubernetes service-account token rejected: "));
    for (const std::string& w : what) EXPECT_THAT(id.status().message(), HasSubstr(w));
    const std::string sig = SignaturePart(token);
    if (sig.size() >= 8) {
      EXPECT_THAT(id.status().message(), Not(HasSubstr(sig)));
    }
    if (token.size() >= 8) {
      EXPECT_THAT(id.status().message(), Not(HasSubstr(token)));
    }
  }

  static TestSigningKey* rsa_;
  static TestSigningKey* ec_;
  static TestSigningKey* other_;
  absl::Time now_ = absl::FromUnixSeconds(1750000000);
  std::string jwks_path_;
  KubernetesJwtAuthenticatorOptions options_;
  std::vector<absl::Status> reloads_;
  std::unique_ptr<KubernetesJwtAuthenticator> auth_;
};

TestSigningKey* KubernetesJwtAuthenticatorTest::rsa_ = nullptr;
TestSigningKey* KubernetesJwtAuthenticatorTest::ec_ = nullptr;
TestSigningKey* KubernetesJwtAuthenticatorTest::other_ = nullptr;

TEST_F(KubernetesJwtAuthenticatorTest, AcceptsRs256Token) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(auth->name(), "kubernetes_jwt");
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(MintToken(*rsa_, Claims()));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://cluster.local/ns/shop/sa/web");
  EXPECT_EQ(id->authenticator, "kubernetes_jwt");
}

TEST_F(KubernetesJwtAuthenticatorTest, AcceptsEs256Token) {
  auto auth = Make();
  absl::StatusOr<AuthenticatedIdentity> id =
      auth->Authenticate(MintToken(*ec_, Claims("payments", "api.v2")));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://cluster.local/ns/payments/sa/api.v2");
}

TEST_F(KubernetesJwtAuthenticatorTest, ExtractsIdentityAndPodInTheConfiguredTrustDomain) {
  options_.trust_domain = "prod.example.org";
  auto auth = Make();
  absl::StatusOr<AuthenticatedIdentity> id =
      auth->Authenticate(MintToken(*rsa_, ServiceAccountClaims(now_, "shop", "cart", "cart-0")));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://prod.example.org/ns/shop/sa/cart");
  EXPECT_EQ(id->spiffe_id.kubernetes_namespace(), "shop");
  EXPECT_EQ(id->spiffe_id.service_account(), "cart");
  EXPECT_EQ(id->detail, "shop/cart-0");
  // A token not bound to a pod (kubectl create token) has no detail.
  id = auth->Authenticate(MintToken(*rsa_, ServiceAccountClaims(now_, "shop", "cart", "")));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->detail, "");
}

TEST_F(KubernetesJwtAuthenticatorTest, FallsBackToSubWithoutKubernetesIoClaim) {
  auto auth = Make();
  json claims = Claims();
  claims.erase("kubernetes.io");
  claims["sub"] = "system:serviceaccount:batch:cron-runner";
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(MintToken(*ec_, claims));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://cluster.local/ns/batch/sa/cron-runner");
  EXPECT_EQ(id->detail, "");

  claims["sub"] = "system:node:worker-1";
  ExpectRefused(MintToken(*ec_, claims), {"neither a \"kubernetes.io\" claim nor a \"sub\""});
  claims["sub"] = "system:serviceaccount:a:b:c";
  ExpectRefused(MintToken(*ec_, claims), {"system:serviceaccount:<namespace>:<name>"});
}

TEST_F(KubernetesJwtAuthenticatorTest, AcceptsAudienceAsStringOrArrayAndOtherIssuers) {
  options_.issuers = {"https://oidc.eks.example.com/id/ABC", std::string(testing::kTestIssuer)};
  auto auth = Make();
  json claims = Claims();
  claims["aud"] = "trellis";
  EXPECT_TRUE(auth->Authenticate(MintToken(*rsa_, claims)).ok());
  claims["aud"] = {"api", "trellis"};
  EXPECT_TRUE(auth->Authenticate(MintToken(*rsa_, claims)).ok());
  claims["iss"] = "https://oidc.eks.example.com/id/ABC";
  EXPECT_TRUE(auth->Authenticate(MintToken(*rsa_, claims)).ok());
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesBadSignature) {
  const std::string token = MintToken(*rsa_, Claims());
  std::vector<std::string> parts = absl::StrSplit(token, '.');
  parts[1] = Base64Url(Claims("kube-system", "admin").dump());
  ExpectRefused(absl::StrJoin(parts, "."), {"signature does not verify", "altered"});
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesKeyNotInJwks) {
  ExpectRefused(MintToken(*other_, Claims()),
                {"(kid) \"other-issuer\" is not in the issuer's key set", "JWKS"});
  TestSigningKey impostor = TestSigningKey::NewRsa("rsa-1");
  ExpectRefused(MintToken(impostor, Claims()), {"signature does not verify"});
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesWrongIssuer) {
  json claims = Claims();
  claims["iss"] = "https://accounts.google.com";
  ExpectRefused(
      MintToken(*rsa_, claims),
      {"token issuer \"https://accounts.google.com\" is not trusted",
       "expected \"https://kubernetes.default.svc.cluster.local\"", "--service-account-issuer"});
  claims.erase("iss");
  ExpectRefused(MintToken(*rsa_, claims), {"no string \"iss\""});
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesWrongAudience) {
  json claims = Claims();
  claims["aud"] = "api";
  ExpectRefused(MintToken(*rsa_, claims),
                {"token audience \"api\" does not include \"trellis\": mount a projected "
                 "service-account token with audience \"trellis\""});
  claims["aud"] = {"api"};
  ExpectRefused(MintToken(*rsa_, claims),
                {"token audience [\"api\"] does not include \"trellis\": mount a projected "
                 "service-account token with audience \"trellis\""});
  claims["aud"] = {"https://kubernetes.default.svc.cluster.local", "vault"};
  ExpectRefused(MintToken(*rsa_, claims),
                {"[\"https://kubernetes.default.svc.cluster.local\", \"vault\"]"});
  claims["aud"] = json::array();
  ExpectRefused(MintToken(*rsa_, claims), {"token audience [] does not include"});
  claims["aud"] = {"trellis", 5};
  ExpectRefused(MintToken(*rsa_, claims), {"neither a string nor an array of strings"});
  claims.erase("aud");
  ExpectRefused(MintToken(*rsa_, claims), {"no \"aud\""});
}

TEST_F(KubernetesJwtAuthenticatorTest, ExpiryHonoursClockSkew) {
  auto auth = Make();
  const std::string token = MintToken(*rsa_, Claims());  // exp = now + 1 h
  now_ += absl::Hours(1) + absl::Seconds(59);
  EXPECT_TRUE(auth->Authenticate(token).ok()) << "within the 60 s skew";
  now_ += absl::Seconds(2);
  auth_ = std::move(auth);
  ExpectRefused(token, {"token expired at 2025-06-15T16:06:40Z", "clock skew allowed 1m",
                        "fresh projected token"});
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesNotYetValidToken) {
  json claims = Claims();
  claims["nbf"] = absl::ToUnixSeconds(now_) + 120;
  ExpectRefused(MintToken(*rsa_, claims), {"not valid before", "check the clocks"});
  claims["nbf"] = absl::ToUnixSeconds(now_) + 30;  // within the skew
  EXPECT_TRUE(auth_->Authenticate(MintToken(*rsa_, claims)).ok());
  claims["iat"] = absl::ToUnixSeconds(now_) + 3600;
  ExpectRefused(MintToken(*rsa_, claims), {"issued in the future"});
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesMissingOrMalformedExp) {
  json claims = Claims();
  claims.erase("exp");
  ExpectRefused(MintToken(*rsa_, claims), {"no \"exp\"", "legacy Secret-based"});
  claims["exp"] = "tomorrow";
  ExpectRefused(MintToken(*rsa_, claims), {"\"exp\" is not a number"});
  claims["exp"] = 1e300;
  ExpectRefused(MintToken(*rsa_, claims), {"\"exp\" is out of range"});
  claims["exp"] = -5;
  ExpectRefused(MintToken(*rsa_, claims), {"\"exp\" is out of range"});
  claims["exp"] = absl::ToUnixSeconds(now_) + 10.5;  // fractional NumericDates are fine
  EXPECT_TRUE(auth_->Authenticate(MintToken(*rsa_, claims)).ok());
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesUnsupportedAlgorithmsAndShapes) {
  const std::string good = MintToken(*rsa_, Claims());
  std::vector<std::string> parts = absl::StrSplit(good, '.');
  ExpectRefused(absl::StrCat(Base64Url(R"({"alg":"none"})"), ".", parts[1], "."),
                {"alg \"none\"", "only RS256 and ES256"});
  ExpectRefused(MintRawToken(*rsa_, R"({"alg":"HS256","kid":"rsa-1"})", Claims().dump()),
                {"algorithm \"HS256\" is not supported"});
  ExpectRefused(absl::StrCat(parts[0], ".", parts[1]), {"has 2 dot-separated parts, not 3"});
  ExpectRefused(absl::StrCat(good, ".", parts[2]), {"has 4 dot-separated parts, not 3"});
  ExpectRefused("%%%%.@@@@@@@@.########", {"token header is not unpadded base64url"});
  ExpectRefused(absl::StrCat(parts[0], ".", parts[1], ".", parts[2], "="),
                {"token signature is not unpadded base64url"});
  ExpectRefused(MintRawToken(*rsa_, R"({"alg":"RS256","kid":"rsa-1"})", "hello, world"),
                {"token payload is not a JSON object"});
  ExpectRefused(std::string(20000, 'a'), {"larger than the limit"});
}

TEST_F(KubernetesJwtAuthenticatorTest, RefusesBadIdentityClaims) {
  json claims = Claims();
  claims["kubernetes.io"].erase("namespace");
  ExpectRefused(MintToken(*rsa_, claims), {"no string \"namespace\""});
  claims = Claims();
  claims["kubernetes.io"]["serviceaccount"].erase("name");
  ExpectRefused(MintToken(*rsa_, claims), {"no string \"serviceaccount.name\""});
  claims = Claims("Shop_Prod", "web");
  ExpectRefused(MintToken(*rsa_, claims),
                {"namespace \"Shop_Prod\"", "not valid Kubernetes names"});
  claims = Claims("shop", "web");
  claims["sub"] = "system:serviceaccount:kube-system:web";
  ExpectRefused(MintToken(*rsa_, claims), {"name different service accounts"});
  claims = Claims();
  claims["kubernetes.io"] = "shop";
  ExpectRefused(MintToken(*rsa_, claims), {"\"kubernetes.io\" is not a JSON object"});
}

TEST_F(KubernetesJwtAuthenticatorTest, PicksUpRotatedJwksAndKeepsLastGoodSet) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  const std::string old_token = MintToken(*rsa_, Claims());
  TestSigningKey rotated = TestSigningKey::NewEc("ec-2026");
  const std::string new_token = MintToken(rotated, Claims());
  ASSERT_TRUE(auth->Authenticate(old_token).ok());
  EXPECT_FALSE(auth->Authenticate(new_token).ok());

  WriteFile(jwks_path_, JwksDocument({&rotated}));
  BumpMtime(jwks_path_, 5);
  // Checked at most once per second: not yet.
  now_ += absl::Milliseconds(500);
  EXPECT_FALSE(auth->Authenticate(new_token).ok());
  now_ += absl::Milliseconds(600);
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(new_token);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(reloads_.size(), 1u);
  EXPECT_TRUE(reloads_[0].ok());
  absl::StatusOr<AuthenticatedIdentity> old = auth->Authenticate(old_token);
  EXPECT_EQ(old.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(old.status().message(), HasSubstr("\"rsa-1\" is not in the issuer's key set"));

  // A broken file (in place, same inode): the last good set stays, the error is reported once.
  { std::ofstream(jwks_path_, std::ios::trunc) << "{\"keys\": [ truncated"; }
  BumpMtime(jwks_path_, 10);
  now_ += absl::Seconds(2);
  EXPECT_TRUE(auth->Authenticate(new_token).ok());
  ASSERT_EQ(reloads_.size(), 2u);
  EXPECT_EQ(reloads_[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reloads_[1].message(), HasSubstr("not valid JSON"));
  EXPECT_THAT(reloads_[1].message(), HasSubstr("keeping the last good key set"));
  EXPECT_EQ(auth->last_reload_status().code(), absl::StatusCode::kInvalidArgument);
  now_ += absl::Seconds(2);
  EXPECT_TRUE(auth->Authenticate(new_token).ok());
  EXPECT_EQ(reloads_.size(), 2u) << "an unchanged broken file is not re-read";

  // A deleted file: the same.
  ASSERT_EQ(std::remove(jwks_path_.c_str()), 0);
  now_ += absl::Seconds(2);
  EXPECT_TRUE(auth->Authenticate(new_token).ok());
  ASSERT_EQ(reloads_.size(), 3u);
  EXPECT_EQ(reloads_[2].code(), absl::StatusCode::kNotFound);

  // Repaired: both keys now.
  WriteFile(jwks_path_, JwksDocument({rsa_, &rotated}));
  EXPECT_TRUE(auth->CheckJwksFile().ok());
  EXPECT_TRUE(auth->last_reload_status().ok());
  EXPECT_TRUE(auth->Authenticate(old_token).ok());
  EXPECT_TRUE(auth->Authenticate(new_token).ok());
  EXPECT_EQ(auth->key_set()->keys().size(), 2u);
}

TEST_F(KubernetesJwtAuthenticatorTest, CreateValidatesOptionsAndFirstRead) {
  KubernetesJwtAuthenticatorOptions bad = options_;
  bad.issuers.clear();
  EXPECT_EQ(KubernetesJwtAuthenticator::Create(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = options_;
  bad.trust_domain = "Not A Domain";
  EXPECT_FALSE(KubernetesJwtAuthenticator::Create(bad).ok());
  bad = options_;
  bad.audience = "";
  EXPECT_FALSE(KubernetesJwtAuthenticator::Create(bad).ok());
  bad = options_;
  bad.clock_skew = absl::Hours(1);
  EXPECT_FALSE(KubernetesJwtAuthenticator::Create(bad).ok());
  bad = options_;
  bad.jwks_path = jwks_path_ + ".missing";
  EXPECT_EQ(KubernetesJwtAuthenticator::Create(bad).status().code(), absl::StatusCode::kNotFound);
  WriteFile(jwks_path_, R"({"keys": []})");
  EXPECT_THAT(KubernetesJwtAuthenticator::Create(options_).status().message(),
              HasSubstr("no usable key"));
}

TEST_F(KubernetesJwtAuthenticatorTest, ConcurrentAuthenticateWhileRotating) {
  options_.clock = nullptr;  // the real clock
  options_.reload_interval = absl::ZeroDuration();
  options_.on_reload = nullptr;
  auto auth = Make();
  // Real clock: the token's iat/nbf/exp must bracket the real now.
  now_ = absl::Now();
  const std::string live = MintToken(*ec_, Claims());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (!auth->Authenticate(live).ok()) failures++;
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    WriteFile(jwks_path_, i % 2 ? JwksDocument({rsa_, ec_}) : JwksDocument({ec_}));
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace trellis::control_plane
