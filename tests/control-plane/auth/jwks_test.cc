#include "control-plane/auth/jwks.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "tests/control-plane/auth/jwt_test_util.h"

namespace trellis::control_plane {
namespace {

using ::testing::HasSubstr;
using testing::JwksDocument;
using ::testing::SizeIs;
using testing::TestSigningKey;
using json = nlohmann::json;

class JwksTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = new TestSigningKey(TestSigningKey::NewRsa("rsa-1"));
    ec_ = new TestSigningKey(TestSigningKey::NewEc("ec-1"));
  }
  static void TearDownTestSuite() {
    delete rsa_;
    delete ec_;
  }
  static TestSigningKey* rsa_;
  static TestSigningKey* ec_;
};

TestSigningKey* JwksTest::rsa_ = nullptr;
TestSigningKey* JwksTest::ec_ = nullptr;

TEST(DecodeBase64UrlTest, DecodesUnpadded) {
  EXPECT_EQ(*DecodeBase64Url(""), "");
  EXPECT_EQ(*DecodeBase64Url("Zm9v"), "foo");
  EXPECT_EQ(*DecodeBase64Url("Zm8"), "fo");
  EXPECT_EQ(*DecodeBase64Url("_-8"), "\xff\xef");
}

TEST(DecodeBase64UrlTest, RejectsPaddingOtherAlphabetsAndNonCanonical) {
  EXPECT_FALSE(DecodeBase64Url("Zm8=").ok());
  EXPECT_FALSE(DecodeBase64Url("/+8").ok());
  EXPECT_FALSE(DecodeBase64Url("Zm 9v").ok());
  EXPECT_FALSE(DecodeBase64Url("Z").ok());
  EXPECT_FALSE(DecodeBase64Url("Zm9").ok());  // trailing bits set: "Zm8" is the canonical form
}

TEST(QuoteUntrustedTest, EscapesAndCuts) {
  EXPECT_EQ(QuoteUntrusted("RS512"), "\"RS512\"");
  EXPECT_EQ(QuoteUntrusted("a\nb"), "\"a\\nb\"");
  EXPECT_EQ(QuoteUntrusted(std::string(100, 'x')), "\"" + std::string(64, 'x') + "\"...");
}

TEST_F(JwksTest, ParsesRsaAndEcKeys) {
  absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(JwksDocument({rsa_, ec_}));
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_THAT(set->keys(), SizeIs(2));
  EXPECT_EQ(set->keys()[0].kid, "rsa-1");
  EXPECT_EQ(set->keys()[0].type, JwkType::kRsa);
  EXPECT_EQ(EVP_PKEY_id(set->keys()[0].public_key.get()), EVP_PKEY_RSA);
  EXPECT_EQ(set->keys()[1].kid, "ec-1");
  EXPECT_EQ(set->keys()[1].type, JwkType::kEc);
  EXPECT_EQ(EVP_PKEY_id(set->keys()[1].public_key.get()), EVP_PKEY_EC);
  EXPECT_EQ(set->skipped_keys(), 0u);
}

TEST_F(JwksTest, AlgAndKidAreOptional) {
  json doc = json::parse(JwksDocument({rsa_, ec_}));
  for (json& key : doc["keys"]) {
    key.erase("alg");
    key.erase("kid");
    key.erase("use");
  }
  absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(doc.dump());
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT(set->keys(), SizeIs(2));
  EXPECT_EQ(set->keys()[0].kid, "");
}

TEST_F(JwksTest, CandidatesByKidOrAllOfTheType) {
  TestSigningKey rsa2 = TestSigningKey::NewRsa("rsa-2");
  absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(JwksDocument({rsa_, ec_, &rsa2}));
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_THAT(set->Candidates("rsa-2", JwkType::kRsa), SizeIs(1));
  EXPECT_EQ(set->Candidates("rsa-2", JwkType::kRsa)[0]->kid, "rsa-2");
  EXPECT_THAT(set->Candidates("rsa-2", JwkType::kEc), SizeIs(0));
  EXPECT_THAT(set->Candidates("nope", JwkType::kRsa), SizeIs(0));
  EXPECT_THAT(set->Candidates(std::nullopt, JwkType::kRsa), SizeIs(2));
  EXPECT_THAT(set->Candidates(std::nullopt, JwkType::kEc), SizeIs(1));
}

TEST_F(JwksTest, SkipsUnsupportedKeysAndCountsThem) {
  json doc = json::parse(JwksDocument({rsa_, ec_}));
  doc["keys"].push_back({{"kty", "oct"}, {"kid", "hmac"}, {"k", "c2VjcmV0"}});
  doc["keys"].push_back({{"kty", "OKP"}, {"crv", "Ed25519"}, {"x", "11qYAYKxCrfVS_7TyWQHOg"}});
  doc["keys"].push_back({{"kty", "EC"}, {"crv", "P-384"}, {"x", "AA"}, {"y", "AA"}});
  json rs512 = rsa_->PublicJwk();
  rs512["alg"] = "RS512";
  doc["keys"].push_back(rs512);
  json enc = ec_->PublicJwk();
  enc["use"] = "enc";
  doc["keys"].push_back(enc);
  absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(doc.dump());
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT(set->keys(), SizeIs(2));
  EXPECT_EQ(set->skipped_keys(), 5u);
  EXPECT_THAT(set->skipped_reasons()[0], HasSubstr("unsupported kty \"oct\""));
  EXPECT_THAT(set->skipped_reasons()[2], HasSubstr("unsupported EC curve \"P-384\""));
  EXPECT_THAT(set->skipped_reasons()[3], HasSubstr("unsupported alg \"RS512\""));
}

TEST_F(JwksTest, NoUsableKeyIsAnError) {
  absl::StatusOr<JwksKeySet> empty = JwksKeySet::Parse(R"({"keys": []})");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("no usable key"));
  absl::StatusOr<JwksKeySet> only_oct =
      JwksKeySet::Parse(R"({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})");
  EXPECT_EQ(only_oct.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(only_oct.status().message(), HasSubstr("no usable key"));
  EXPECT_THAT(only_oct.status().message(), HasSubstr("unsupported kty \"oct\""));
}

TEST_F(JwksTest, MalformedDocumentsAreErrors) {
  for (const char* text : {"", "{", "not json", "[]", "{\"keys\": {}}", "{}", "{\"keys\": [1]}",
                           "{\"keys\": [{\"kty\": 7}]}"}) {
    absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(text);
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
  EXPECT_THAT(JwksKeySet::Parse("{\"keys\": [").status().message(), HasSubstr("not valid JSON"));
}

TEST_F(JwksTest, MalformedSupportedKeyFailsTheDocument) {
  json rsa = rsa_->PublicJwk();
  rsa["n"] = "not base64!";
  EXPECT_THAT(JwksKeySet::Parse(json{{"keys", {rsa, ec_->PublicJwk()}}}.dump()).status().message(),
              HasSubstr("\"n\""));
  json small = rsa_->PublicJwk();
  small["n"] = testing::Base64Url(std::string(64, '\xff'));  // 512 bits
  EXPECT_THAT(JwksKeySet::Parse(json{{"keys", {small}}}.dump()).status().message(),
              HasSubstr("512 bits"));
  json even_e = rsa_->PublicJwk();
  even_e["e"] = "Ag";
  EXPECT_FALSE(JwksKeySet::Parse(json{{"keys", {even_e}}}.dump()).ok());
  json off_curve = ec_->PublicJwk();
  off_curve["y"] = off_curve["x"];
  EXPECT_THAT(JwksKeySet::Parse(json{{"keys", {off_curve}}}.dump()).status().message(),
              HasSubstr("not a point on the P-256 curve"));
  json short_x = ec_->PublicJwk();
  short_x["x"] = "AAAA";
  EXPECT_THAT(JwksKeySet::Parse(json{{"keys", {short_x}}}.dump()).status().message(),
              HasSubstr("32 bytes"));
  json bad_kid = ec_->PublicJwk();
  bad_kid["kid"] = 5;
  EXPECT_FALSE(JwksKeySet::Parse(json{{"keys", {bad_kid}}}.dump()).ok());
}

TEST_F(JwksTest, RejectsOversizedDocuments) {
  std::string doc = JwksDocument({ec_});
  doc.insert(1, std::string(kMaxJwksSize, ' '));
  EXPECT_THAT(JwksKeySet::Parse(doc).status().message(), HasSubstr("larger than the limit"));
}

TEST_F(JwksTest, SurvivesDeepNesting) {
  std::string deep = "{\"keys\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_FALSE(JwksKeySet::Parse(deep).ok());
  EXPECT_FALSE(JwksKeySet::Parse(std::string(kMaxJwksSize, '[')).ok());
}

}  // namespace
}  // namespace trellis::control_plane
