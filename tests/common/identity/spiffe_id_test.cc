#include "common/identity/spiffe_id.h"

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/hash/hash_testing.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::identity {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using ::testing::StartsWith;

// gMock's string matchers take std::string; absl::string_view is its own type in this abseil.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

// === Parse: valid IDs ===

struct ValidCase {
  std::string text;
  std::string trust_domain;
  std::string path;
};

class ParseValidTest : public ::testing::TestWithParam<ValidCase> {};

TEST_P(ParseValidTest, ParsesIntoTrustDomainAndPath) {
  const ValidCase& c = GetParam();
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(c.text);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->trust_domain(), c.trust_domain);
  EXPECT_EQ(id->path(), c.path);
  EXPECT_EQ(id->ToString(), c.text);
}

TEST_P(ParseValidTest, RoundTripsThroughToString) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(GetParam().text);
  ASSERT_TRUE(id.ok()) << id.status();
  absl::StatusOr<SpiffeId> again = SpiffeId::Parse(id->ToString());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *id);
  EXPECT_EQ(again->ToString(), id->ToString());
}

INSTANTIATE_TEST_SUITE_P(
    Table, ParseValidTest,
    ::testing::Values(ValidCase{"spiffe://cluster.local/ns/default/sa/web", "cluster.local",
                                "/ns/default/sa/web"},
                      ValidCase{"spiffe://example.org", "example.org", ""},
                      ValidCase{"spiffe://a", "a", ""},
                      ValidCase{"spiffe://td_1-x.y/A.b-c_D/9", "td_1-x.y", "/A.b-c_D/9"},
                      ValidCase{"spiffe://td/...", "td",
                                "/..."},  // only exactly "." and ".." are dot segments
                      ValidCase{"spiffe://td/.a/a./..b", "td", "/.a/a./..b"},
                      ValidCase{"spiffe://0123456789/UPPER/case", "0123456789", "/UPPER/case"},
                      ValidCase{"spiffe://td/-/_/.-_", "td", "/-/_/.-_"},
                      ValidCase{"spiffe://" + std::string(kMaxTrustDomainLength, 'd'),
                                std::string(kMaxTrustDomainLength, 'd'), ""},
                      ValidCase{"spiffe://td/" + std::string(kMaxSpiffeIdLength - 12, 'p'), "td",
                                "/" + std::string(kMaxSpiffeIdLength - 12, 'p')}));

// === Parse: invalid IDs ===

struct InvalidCase {
  std::string text;
  std::string error;  // expected substring of the message
};

class ParseInvalidTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(ParseInvalidTest, FailsWithMessageNamingTheRule) {
  const InvalidCase& c = GetParam();
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(c.text);
  ASSERT_FALSE(id.ok()) << "accepted: " << id->ToString();
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(id.status()), StartsWith("invalid SPIFFE ID \""));
  EXPECT_THAT(Message(id.status()), HasSubstr(c.error));
}

INSTANTIATE_TEST_SUITE_P(
    Table, ParseInvalidTest,
    ::testing::Values(
        InvalidCase{"", "the ID is empty"},
        InvalidCase{"cluster.local/ns/a/sa/b", "must start with \"spiffe://\""},
        InvalidCase{" spiffe://td/a", "must start with \"spiffe://\""},
        InvalidCase{"https://td/a", "scheme must be \"spiffe\" (found \"https\")"},
        InvalidCase{"SPIFFE://td/a", "scheme must be lowercase \"spiffe://\""},
        InvalidCase{"Spiffe://td", "scheme must be lowercase \"spiffe://\""},
        InvalidCase{"spiffe:td/a", "scheme must be followed by \"//\""},
        InvalidCase{"spiffe:/td/a", "scheme must be followed by \"//\""},
        InvalidCase{"spiffe://", "trust domain is empty"},
        InvalidCase{"spiffe:///ns/a", "trust domain is empty"},
        InvalidCase{"spiffe://Foo/bar",
                    "invalid SPIFFE ID \"spiffe://Foo/bar\": trust domain must be lowercase "
                    "letters, digits, '.', '-' or '_' (found 'F')"},
        InvalidCase{"spiffe://td:8443/a", "trust domain must not contain a port (':')"},
        InvalidCase{"spiffe://user@td/a", "trust domain must not contain userinfo ('@')"},
        InvalidCase{"spiffe://user:pw@td/a", "trust domain must not contain userinfo ('@')"},
        InvalidCase{"spiffe://t d/a",
                    "trust domain must be lowercase letters, digits, '.', '-' "
                    "or '_' (found ' ')"},
        InvalidCase{"spiffe://t%64/a", "percent-encoding ('%') is not allowed"},
        InvalidCase{"spiffe://td?x=1", "a query ('?') is not allowed"},
        InvalidCase{"spiffe://td#frag", "a fragment ('#') is not allowed"},
        InvalidCase{"spiffe://td/a?x=1", "a query ('?') is not allowed"},
        InvalidCase{"spiffe://td/a#frag", "a fragment ('#') is not allowed"},
        InvalidCase{"spiffe://td/a%2Fb", "percent-encoding ('%') is not allowed"},
        InvalidCase{"spiffe://td/", "path must not end with '/'"},
        InvalidCase{"spiffe://td/a/b/", "path must not end with '/'"},
        InvalidCase{"spiffe://td//a", "path must not contain empty segments (\"//\")"},
        InvalidCase{"spiffe://td/a//b", "path must not contain empty segments (\"//\")"},
        InvalidCase{"spiffe://td/.", "path must not contain \".\" segments"},
        InvalidCase{"spiffe://td/a/./b", "path must not contain \".\" segments"},
        InvalidCase{"spiffe://td/..", "path must not contain \"..\" segments"},
        InvalidCase{"spiffe://td/a/../b", "path must not contain \"..\" segments"},
        InvalidCase{"spiffe://td/a b",
                    "path segments must be letters, digits, '.', '-' or '_' "
                    "(found ' ')"},
        InvalidCase{"spiffe://td/a*", "(found '*')"}, InvalidCase{"spiffe://td/a:b", "(found ':')"},
        InvalidCase{"spiffe://td/caf\xc3\xa9", "(found '\\xc3')"},
        InvalidCase{std::string("spiffe://td/a\0b", 15), "(found '\\x00')"},
        InvalidCase{"spiffe://td/a\n", "(found '\\n')"},
        InvalidCase{"spiffe://" + std::string(kMaxTrustDomainLength + 1, 'd'),
                    "trust domain is 256 bytes; the maximum is 255"},
        InvalidCase{"spiffe://td/" + std::string(kMaxSpiffeIdLength - 11, 'p'),
                    "the ID is 2049 bytes; the maximum is 2048"}));

TEST(SpiffeIdErrorTest, QuotesTheInputEscaped) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse("spiffe://td/\"a\"\x01");
  ASSERT_FALSE(id.ok());
  EXPECT_THAT(Message(id.status()), StartsWith("invalid SPIFFE ID \"spiffe://td/\\\"a\\\"\\x01\""));
}

TEST(SpiffeIdErrorTest, TruncatesLongInputInTheMessage) {
  const std::string text = "spiffe://td/" + std::string(3000, 'x') + "?";
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(text);
  ASSERT_FALSE(id.ok());
  EXPECT_LT(Message(id.status()).size(), 250u) << id.status();
  EXPECT_THAT(Message(id.status()), HasSubstr("\"... (3013 bytes)"));
  EXPECT_THAT(Message(id.status()), HasSubstr("the ID is 3013 bytes; the maximum is 2048"));
}

// === Value semantics ===

SpiffeId MustParse(absl::string_view text) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(text);
  EXPECT_TRUE(id.ok()) << id.status();
  return *std::move(id);
}

TEST(SpiffeIdTest, ComparesByCanonicalText) {
  const SpiffeId a = MustParse("spiffe://td/a");
  const SpiffeId a2 = MustParse("spiffe://td/a");
  const SpiffeId b = MustParse("spiffe://td/b");
  const SpiffeId case_differs = MustParse("spiffe://td/A");  // paths are case-sensitive
  EXPECT_TRUE(a == a2);
  EXPECT_FALSE(a != a2);
  EXPECT_TRUE(a != b);
  EXPECT_FALSE(a == case_differs);
  EXPECT_TRUE(a < b);
  EXPECT_FALSE(b < a);
  EXPECT_FALSE(a < a2);
}

TEST(SpiffeIdTest, WorksAsOrderedMapKey) {
  std::map<SpiffeId, int> m;
  m.emplace(MustParse("spiffe://b/x"), 1);
  m.emplace(MustParse("spiffe://a/y"), 2);
  m.emplace(MustParse("spiffe://a/y"), 3);  // duplicate key: ignored
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m.begin()->first.ToString(), "spiffe://a/y");
  EXPECT_EQ(m.begin()->second, 2);
}

TEST(SpiffeIdTest, ImplementsAbslHashCorrectly) {
  EXPECT_TRUE(absl::VerifyTypeImplementsAbslHashCorrectly({
      MustParse("spiffe://td"),
      MustParse("spiffe://td/a"),
      MustParse("spiffe://td/a/b"),
      MustParse("spiffe://other/a"),
  }));
  EXPECT_EQ(absl::Hash<SpiffeId>()(MustParse("spiffe://td/a")),
            absl::Hash<SpiffeId>()(MustParse("spiffe://td/a")));
}

// === Kubernetes form ===

TEST(KubernetesTest, BuildsServiceAccountIdentity) {
  absl::StatusOr<SpiffeId> id =
      SpiffeId::ForKubernetesServiceAccount("cluster.local", "prod-1", "web.frontend");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->ToString(), "spiffe://cluster.local/ns/prod-1/sa/web.frontend");
  EXPECT_EQ(id->trust_domain(), "cluster.local");
  EXPECT_EQ(id->path(), "/ns/prod-1/sa/web.frontend");
  EXPECT_THAT(id->kubernetes_namespace(), Optional(std::string("prod-1")));
  EXPECT_THAT(id->service_account(), Optional(std::string("web.frontend")));
  EXPECT_EQ(*id, MustParse("spiffe://cluster.local/ns/prod-1/sa/web.frontend"));
}

TEST(KubernetesTest, AcceptsMaximumLengths) {
  const std::string td(kMaxTrustDomainLength, 't');
  const std::string ns(63, 'n');
  const std::string sa = std::string(126, 's') + "." + std::string(126, 's');  // 253
  absl::StatusOr<SpiffeId> id = SpiffeId::ForKubernetesServiceAccount(td, ns, sa);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_THAT(id->kubernetes_namespace(), Optional(ns));
  EXPECT_THAT(id->service_account(), Optional(sa));
}

TEST(KubernetesTest, AccessorsReadParsedIds) {
  const SpiffeId id = MustParse("spiffe://td/ns/default/sa/Web_1");
  EXPECT_THAT(id.kubernetes_namespace(), Optional(std::string("default")));
  EXPECT_THAT(id.service_account(), Optional(std::string("Web_1")));
}

TEST(KubernetesTest, AccessorsAreEmptyForOtherPaths) {
  for (const char* text :
       {"spiffe://td", "spiffe://td/ns/a", "spiffe://td/ns/a/sa", "spiffe://td/ns/a/sa/b/extra",
        "spiffe://td/x/ns/a/sa/b", "spiffe://td/NS/a/sa/b", "spiffe://td/ns/a/SA/b",
        "spiffe://td/ns/a/xa/b"}) {
    const SpiffeId id = MustParse(text);
    EXPECT_EQ(id.kubernetes_namespace(), std::nullopt) << text;
    EXPECT_EQ(id.service_account(), std::nullopt) << text;
  }
}

class KubernetesInvalidTest : public ::testing::TestWithParam<
                                  std::tuple<std::string, std::string, std::string, std::string>> {
};

TEST_P(KubernetesInvalidTest, RejectsPart) {
  const auto& [td, ns, sa, error] = GetParam();
  absl::StatusOr<SpiffeId> id = SpiffeId::ForKubernetesServiceAccount(td, ns, sa);
  ASSERT_FALSE(id.ok()) << "accepted: " << id->ToString();
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(id.status()), HasSubstr(error));
}

INSTANTIATE_TEST_SUITE_P(
    Table, KubernetesInvalidTest,
    ::testing::Values(
        std::make_tuple("", "ns", "sa", "invalid trust domain \"\": trust domain is empty"),
        std::make_tuple("Cluster.local", "ns", "sa", "(found 'C')"),
        std::make_tuple("td:80", "ns", "sa", "port"),
        std::make_tuple("td", "", "sa", "invalid Kubernetes namespace \"\": is empty"),
        std::make_tuple("td", "Prod", "sa",
                        "invalid Kubernetes namespace \"Prod\": must be "
                        "lowercase letters, digits or '-' (found 'P')"),
        std::make_tuple("td", "a.b", "sa", "(found '.')"),
        std::make_tuple("td", "a/sa/b", "sa", "(found '/')"),
        std::make_tuple("td", "-a", "sa", "must start and end with a lowercase letter or digit"),
        std::make_tuple("td", "a-", "sa", "must start and end with a lowercase letter or digit"),
        std::make_tuple("td", std::string(64, 'n'), "sa", "is 64 characters; the maximum is 63"),
        std::make_tuple("td", "ns", "", "invalid Kubernetes service account name \"\": is empty"),
        std::make_tuple("td", "ns", "Web",
                        "must be lowercase letters, digits, '-' or '.' "
                        "(found 'W')"),
        std::make_tuple("td", "ns", "web_1", "(found '_')"),
        std::make_tuple("td", "ns", "..", "each '.'-separated part must start and end"),
        std::make_tuple("td", "ns", "a..b", "each '.'-separated part must start and end"),
        std::make_tuple("td", "ns", "a.-b", "each '.'-separated part must start and end"),
        std::make_tuple("td", "ns", std::string(254, 's'),
                        "is 254 characters; the maximum is "
                        "253")));

// === ValidateTrustDomain ===

TEST(ValidateTrustDomainTest, AcceptsValidNames) {
  for (const char* td : {"cluster.local", "a", "example-org_1.io", "123"}) {
    EXPECT_TRUE(ValidateTrustDomain(td).ok()) << td << ": " << ValidateTrustDomain(td);
  }
  EXPECT_TRUE(ValidateTrustDomain(std::string(kMaxTrustDomainLength, 'x')).ok());
}

TEST(ValidateTrustDomainTest, RejectsInvalidNames) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "invalid trust domain \"\": trust domain is empty"},
      {"Cluster.local", "(found 'C')"},
      {"td:8080", "must not contain a port"},
      {"me@td", "must not contain userinfo"},
      {"td/ns", "(found '/')"},
      {"spiffe://td", "not a URI"},
      {std::string(kMaxTrustDomainLength + 1, 'x'), "256 bytes; the maximum is 255"},
  };
  for (const auto& [td, error] : cases) {
    absl::Status status = ValidateTrustDomain(td);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << td;
    EXPECT_THAT(Message(status), HasSubstr(error)) << td;
  }
}

// === SpiffeIdPattern ===

struct MatchCase {
  std::string pattern;
  std::string id;
  bool matches;
};

class PatternMatchTest : public ::testing::TestWithParam<MatchCase> {};

TEST_P(PatternMatchTest, Matches) {
  const MatchCase& c = GetParam();
  absl::StatusOr<SpiffeIdPattern> pattern = SpiffeIdPattern::Parse(c.pattern);
  ASSERT_TRUE(pattern.ok()) << pattern.status();
  EXPECT_EQ(pattern->Matches(MustParse(c.id)), c.matches);
}

INSTANTIATE_TEST_SUITE_P(Table, PatternMatchTest,
                         ::testing::Values(
                             // Exact.
                             MatchCase{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b", true},
                             MatchCase{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/bc", false},
                             MatchCase{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b/c", false},
                             MatchCase{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa", false},
                             MatchCase{"spiffe://td/ns/a/sa/b", "spiffe://other/ns/a/sa/b", false},
                             MatchCase{"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/B", false},
                             // Path prefix: any depth, segment boundary, same trust domain.
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/a/sa/b", true},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/a/x", true},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/a/sa/b/c/d", true},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/ab/sa/x", false},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/a", false},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns", false},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/b/sa/x", false},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://other/ns/a/sa/b", false},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://tdx/ns/a/sa/b", false},
                             MatchCase{"spiffe://td/ns/a/*", "spiffe://td/ns/A/sa/b", false},
                             // Trust domain, both spellings.
                             MatchCase{"spiffe://td", "spiffe://td/ns/a/sa/b", true},
                             MatchCase{"spiffe://td", "spiffe://td", true},
                             MatchCase{"spiffe://td/*", "spiffe://td/x", true},
                             MatchCase{"spiffe://td/*", "spiffe://td", true},
                             MatchCase{"spiffe://td", "spiffe://tdx/ns/a", false},
                             MatchCase{"spiffe://td/*", "spiffe://other/td", false},
                             MatchCase{"spiffe://td.example", "spiffe://td/ns/a", false},
                             // Any.
                             MatchCase{"*", "spiffe://td/ns/a/sa/b", true},
                             MatchCase{"*", "spiffe://other", true}));

TEST(PatternTest, ToStringIsCanonical) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"*", "*"},
      {"spiffe://td", "spiffe://td/*"},
      {"spiffe://td/*", "spiffe://td/*"},
      {"spiffe://td/ns/a/*", "spiffe://td/ns/a/*"},
      {"spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b"},
  };
  for (const auto& [text, canonical] : cases) {
    absl::StatusOr<SpiffeIdPattern> pattern = SpiffeIdPattern::Parse(text);
    ASSERT_TRUE(pattern.ok()) << pattern.status();
    EXPECT_EQ(pattern->ToString(), canonical);
    absl::StatusOr<SpiffeIdPattern> again = SpiffeIdPattern::Parse(pattern->ToString());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->ToString(), canonical);
  }
}

class PatternInvalidTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(PatternInvalidTest, Refused) {
  const InvalidCase& c = GetParam();
  absl::StatusOr<SpiffeIdPattern> pattern = SpiffeIdPattern::Parse(c.text);
  ASSERT_FALSE(pattern.ok()) << "accepted: " << pattern->ToString();
  EXPECT_EQ(pattern.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(pattern.status()), StartsWith("invalid SPIFFE ID pattern \""));
  EXPECT_THAT(Message(pattern.status()), HasSubstr(c.error));
}

constexpr char kStarPlacement[] = "'*' is only allowed as the whole pattern or as a final \"/*\"";

INSTANTIATE_TEST_SUITE_P(
    Table, PatternInvalidTest,
    ::testing::Values(InvalidCase{"", "the pattern is empty"}, InvalidCase{"**", kStarPlacement},
                      InvalidCase{"*/*", kStarPlacement},
                      InvalidCase{"spiffe://td/ns/a*", kStarPlacement},
                      InvalidCase{"spiffe://td/ns/*/sa/b", kStarPlacement},
                      InvalidCase{"spiffe://td/*/*", kStarPlacement},
                      InvalidCase{"spiffe://td/ns/a/**", kStarPlacement},
                      InvalidCase{"spiffe://*", "the trust domain cannot contain '*'"},
                      InvalidCase{"spiffe://*/ns/a", "the trust domain cannot contain '*'"},
                      InvalidCase{"spiffe://*.td/*", "the trust domain cannot contain '*'"},
                      InvalidCase{"spiffe://td/ns/a/", "path must not end with '/'"},
                      InvalidCase{"spiffe://td/ns/a//*", "path must not end with '/'"},
                      InvalidCase{"spiffe://td/ns/../*", "\"..\" segments"},
                      InvalidCase{"spiffe://TD/*", "(found 'T')"},
                      InvalidCase{"spiffe:///*", "trust domain is empty"},
                      InvalidCase{"SPIFFE://td/*", "scheme must be lowercase"},
                      InvalidCase{"td/ns/a/*", "must start with \"spiffe://\""},
                      InvalidCase{"spiffe://td/a?b/*", "a query ('?') is not allowed"}));

}  // namespace
}  // namespace trellis::identity
