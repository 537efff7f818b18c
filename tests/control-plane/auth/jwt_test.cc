#include "control-plane/auth/jwt.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "control-plane/auth/jwks.h"
#include "tests/control-plane/auth/jwt_test_util.h"

namespace trellis::control_plane {
namespace {

using testing::Base64Url;
using ::testing::HasSubstr;
using testing::JwksDocument;
using testing::MintRawToken;
using testing::MintToken;
using ::testing::Not;
using testing::SignaturePart;
using testing::TestSigningKey;
using json = nlohmann::json;

class JwtTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = new TestSigningKey(TestSigningKey::NewRsa("rsa-1"));
    ec_ = new TestSigningKey(TestSigningKey::NewEc("ec-1"));
    other_ = new TestSigningKey(TestSigningKey::NewRsa("other"));
  }
  static void TearDownTestSuite() {
    delete rsa_;
    delete ec_;
    delete other_;
  }

  void SetUp() override {
    absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(JwksDocument({rsa_, ec_}));
    ASSERT_TRUE(set.ok()) << set.status();
    keys_.emplace(*std::move(set));
  }

  // Expects `token` to fail with `code` and a message containing `what` but not the signature.
  void ExpectRejected(const std::string& token, absl::StatusCode code, absl::string_view what) {
    absl::StatusOr<VerifiedJwt> jwt = VerifyJwt(token, *keys_);
    ASSERT_FALSE(jwt.ok());
    EXPECT_EQ(jwt.status().code(), code) << jwt.status();
    EXPECT_THAT(jwt.status().message(), HasSubstr(what));
    const std::string sig = SignaturePart(token);
    if (sig.size() >= 8) {
      EXPECT_THAT(jwt.status().message(), Not(HasSubstr(sig)));
    }
  }

  static TestSigningKey* rsa_;
  static TestSigningKey* ec_;
  static TestSigningKey* other_;
  std::optional<JwksKeySet> keys_;
};

TestSigningKey* JwtTest::rsa_ = nullptr;
TestSigningKey* JwtTest::ec_ = nullptr;
TestSigningKey* JwtTest::other_ = nullptr;

const json kClaims = {{"sub", "system:serviceaccount:default:web"}, {"exp", 2000000000}};

TEST_F(JwtTest, VerifiesRs256) {
  absl::StatusOr<VerifiedJwt> jwt = VerifyJwt(MintToken(*rsa_, kClaims), *keys_);
  ASSERT_TRUE(jwt.ok()) << jwt.status();
  EXPECT_EQ(jwt->algorithm, JwkType::kRsa);
  EXPECT_EQ(jwt->kid, "rsa-1");
  EXPECT_EQ(jwt->key_kid, "rsa-1");
  EXPECT_EQ(jwt->claims, kClaims);
  EXPECT_EQ(jwt->header["alg"], "RS256");
}

TEST_F(JwtTest, VerifiesEs256) {
  absl::StatusOr<VerifiedJwt> jwt = VerifyJwt(MintToken(*ec_, kClaims), *keys_);
  ASSERT_TRUE(jwt.ok()) << jwt.status();
  EXPECT_EQ(jwt->algorithm, JwkType::kEc);
  EXPECT_EQ(jwt->key_kid, "ec-1");
  EXPECT_EQ(jwt->claims, kClaims);
}

TEST_F(JwtTest, TokenWithoutKidTriesEveryKeyOfTheType) {
  TestSigningKey rsa2 = TestSigningKey::NewRsa("rsa-2");
  keys_.emplace(*JwksKeySet::Parse(JwksDocument({rsa_, ec_, &rsa2})));
  absl::StatusOr<VerifiedJwt> jwt = VerifyJwt(MintToken(rsa2, kClaims, false), *keys_);
  ASSERT_TRUE(jwt.ok()) << jwt.status();
  EXPECT_EQ(jwt->kid, "");
  EXPECT_EQ(jwt->key_kid, "rsa-2");
  ASSERT_TRUE(VerifyJwt(MintToken(*ec_, kClaims, false), *keys_).ok());
}

TEST_F(JwtTest, RejectsPayloadChangedAfterSigning) {
  for (const TestSigningKey* key : {rsa_, ec_}) {
    const std::string token = MintToken(*key, kClaims);
    std::vector<std::string> parts = absl::StrSplit(token, '.');
    json changed = kClaims;
    changed["sub"] = "system:serviceaccount:kube-system:admin";
    parts[1] = Base64Url(changed.dump());
    ExpectRejected(absl::StrJoin(parts, "."), absl::StatusCode::kUnauthenticated,
                   "signature does not verify");
  }
}

TEST_F(JwtTest, RejectsKeyOfAnotherIssuer) {
  ExpectRejected(MintToken(*other_, kClaims), absl::StatusCode::kUnauthenticated,
                 "kid) \"other\" is not in the issuer's key set");
  // The same kid as a trusted key, but another key.
  TestSigningKey impostor = TestSigningKey::NewEc("ec-1");
  ExpectRejected(MintToken(impostor, kClaims), absl::StatusCode::kUnauthenticated,
                 "signature does not verify against the issuer's key \"ec-1\"");
  ExpectRejected(MintToken(*other_, kClaims, false), absl::StatusCode::kUnauthenticated,
                 "does not verify against any of the issuer's 1 RS256 keys");
}

TEST_F(JwtTest, RejectsAlgNone) {
  const std::string token =
      absl::StrCat(Base64Url(R"({"alg":"none"})"), ".", Base64Url(kClaims.dump()), ".");
  ExpectRejected(token, absl::StatusCode::kInvalidArgument, "unsigned (alg \"none\")");
  // Even with a (bogus) signature part.
  ExpectRejected(token + "c2lnbmF0dXJlLXBhcnQ", absl::StatusCode::kInvalidArgument, "alg \"none\"");
}

TEST_F(JwtTest, RejectsOtherAlgorithms) {
  for (const char* alg : {"HS256", "RS512", "PS256", "ES384", "EdDSA"}) {
    const std::string token =
        MintRawToken(*rsa_, json{{"alg", alg}, {"kid", "rsa-1"}}.dump(), kClaims.dump());
    ExpectRejected(token, absl::StatusCode::kInvalidArgument,
                   absl::StrCat("algorithm \"", alg, "\" is not supported"));
  }
  // An RS256 header over an ES256 key's kid: no key of that type.
  ExpectRejected(MintRawToken(*rsa_, R"({"alg":"RS256","kid":"ec-1"})", kClaims.dump()),
                 absl::StatusCode::kUnauthenticated, "not in the issuer's key set");
}

TEST_F(JwtTest, RejectsWrongNumberOfParts) {
  const std::string token = MintToken(*rsa_, kClaims);
  std::vector<std::string> parts = absl::StrSplit(token, '.');
  ExpectRejected(absl::StrCat(parts[0], ".", parts[1]), absl::StatusCode::kInvalidArgument,
                 "has 2 dot-separated parts, not 3");
  ExpectRejected(absl::StrCat(token, ".", parts[2]), absl::StatusCode::kInvalidArgument,
                 "has 4 dot-separated parts, not 3");
  ExpectRejected("justonepart", absl::StatusCode::kInvalidArgument, "has 1 dot-separated part");
  ExpectRejected("a.b.c.d.e", absl::StatusCode::kInvalidArgument, "has 5 dot-separated parts");
  ExpectRejected("", absl::StatusCode::kInvalidArgument, "empty");
}

TEST_F(JwtTest, RejectsGarbageBase64) {
  ExpectRejected("!!!.@@@.###", absl::StatusCode::kInvalidArgument, "token header is not");
  const std::string token = MintToken(*rsa_, kClaims);
  std::vector<std::string> parts = absl::StrSplit(token, '.');
  ExpectRejected(absl::StrCat(parts[0], ".", parts[1], "=.", parts[2]),
                 absl::StatusCode::kInvalidArgument, "token payload is not unpadded base64url");
  ExpectRejected(absl::StrCat(parts[0], ".", parts[1], ".", parts[2], "+/"),
                 absl::StatusCode::kInvalidArgument, "token signature is not");
  ExpectRejected(absl::StrCat(parts[0], "..", parts[2]), absl::StatusCode::kInvalidArgument,
                 "token payload is empty");
}

TEST_F(JwtTest, RejectsNonJsonParts) {
  ExpectRejected(MintRawToken(*rsa_, R"({"alg":"RS256","kid":"rsa-1"})", "not json"),
                 absl::StatusCode::kInvalidArgument, "token payload is not a JSON object");
  ExpectRejected(MintRawToken(*ec_, R"({"alg":"ES256","kid":"ec-1"})", "[1, 2]"),
                 absl::StatusCode::kInvalidArgument, "token payload is not a JSON object");
  ExpectRejected(MintRawToken(*rsa_, "RS256", kClaims.dump()), absl::StatusCode::kInvalidArgument,
                 "token header is not a JSON object");
  ExpectRejected(MintRawToken(*rsa_, R"({"kid":"rsa-1"})", kClaims.dump()),
                 absl::StatusCode::kInvalidArgument, "no string \"alg\"");
  ExpectRejected(MintRawToken(*rsa_, R"({"alg":"RS256","kid":1})", kClaims.dump()),
                 absl::StatusCode::kInvalidArgument, "\"kid\" is not a string");
  ExpectRejected(
      MintRawToken(*rsa_, R"({"alg":"RS256","kid":"rsa-1","crit":["exp"]})", kClaims.dump()),
      absl::StatusCode::kInvalidArgument, "crit");
}

TEST_F(JwtTest, RejectsEs256SignatureOfWrongLength) {
  const std::string token = MintToken(*ec_, kClaims);
  const std::string signing_input = token.substr(0, token.rfind('.'));
  ExpectRejected(absl::StrCat(signing_input, ".", Base64Url(std::string(72, '\x01'))),
                 absl::StatusCode::kInvalidArgument, "has 72 bytes, not 64");
  // All-zero r and s must fail, not crash.
  ExpectRejected(absl::StrCat(signing_input, ".", Base64Url(std::string(64, '\0'))),
                 absl::StatusCode::kUnauthenticated, "does not verify");
}

TEST_F(JwtTest, RejectsOversizedTokens) {
  json big = kClaims;
  big["padding"] = std::string(kMaxJwtSize, 'x');
  ExpectRejected(MintToken(*rsa_, big), absl::StatusCode::kInvalidArgument,
                 "larger than the limit of 16384 bytes");
}

}  // namespace
}  // namespace trellis::control_plane
