// Join tokens end to end on real files under TEST_TMPDIR: CreateJoinToken writes the tokens file,
// JoinTokenAuthenticator reads it (and the state file of consumed single-use tokens).
#include "control-plane/auth/join_token_authenticator.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "control-plane/auth/join_token_store.h"
#include "gtest/gtest.h"

namespace trellis::control_plane {
namespace {

constexpr char kVmId[] = "spiffe://cluster.local/vm/edge-gw-1";
constexpr char kIotId[] = "spiffe://cluster.local/iot/sensor-7";

identity::SpiffeId Id(const char* text) { return *identity::SpiffeId::Parse(text); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& content, mode_t mode = 0600) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << content;
  }
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

constexpr char kHashA[] = "0000000000000000000000000000000000000000000000000000000000000000";

class JoinTokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    ASSERT_NE(tmp, nullptr);
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = absl::StrCat(tmp, "/", info->name());
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
    path_ = dir_ + "/join-tokens.json";
  }

  std::string Create(const std::string& name, const char* id = kVmId, bool single_use = false,
                     std::optional<absl::Time> expires = std::nullopt) {
    absl::StatusOr<std::string> token = CreateJoinToken(path_, name, Id(id), expires, single_use);
    EXPECT_TRUE(token.ok()) << token.status();
    if (token.ok()) tokens_.push_back(*token);
    return token.ok() ? *token : "";
  }

  std::unique_ptr<JoinTokenAuthenticator> NewAuth(std::function<absl::Time()> clock = nullptr) {
    JoinTokenAuthenticatorOptions options;
    options.tokens_file = path_;
    options.clock = std::move(clock);
    absl::StatusOr<std::unique_ptr<JoinTokenAuthenticator>> auth =
        JoinTokenAuthenticator::Create(std::move(options));
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }

  absl::Status CreateStatus() {
    JoinTokenAuthenticatorOptions options;
    options.tokens_file = path_;
    return JoinTokenAuthenticator::Create(std::move(options)).status();
  }

  // No token ever created in this test appears in `text`.
  void ExpectNoTokenIn(absl::string_view text) {
    for (const std::string& t : tokens_) {
      EXPECT_FALSE(absl::StrContains(text, t)) << "token leaked into: " << text;
      // Nor its random part alone.
      EXPECT_FALSE(absl::StrContains(text, t.substr(kJoinTokenPrefix.size())));
    }
  }

  std::string dir_;
  std::string path_;
  std::vector<std::string> tokens_;  // every token created, for the leak checks
};

TEST_F(JoinTokenTest, CreateThenAuthenticateGivesTheIdAndName) {
  const std::string token = Create("edge-gw-1");
  ASSERT_FALSE(token.empty());
  EXPECT_TRUE(absl::StartsWith(token, "trellis-join-"));
  EXPECT_EQ(token.size(), kJoinTokenLength);
  EXPECT_TRUE(IsJoinTokenFormat(token));
  EXPECT_EQ(ModeOf(path_), 0600u);

  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(auth->name(), "join_token");
  EXPECT_EQ(auth->token_count(), 1u);
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(token);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), kVmId);
  EXPECT_EQ(id->authenticator, "join_token");
  EXPECT_EQ(id->detail, "edge-gw-1");
}

TEST_F(JoinTokenTest, TokensAreRandomAndFileHoldsOnlyHashes) {
  const std::string a = Create("a");
  const std::string b = Create("b", kIotId);
  EXPECT_NE(a, b);
  const std::string text = ReadFile(path_);
  ExpectNoTokenIn(text);
  EXPECT_TRUE(absl::StrContains(text, JoinTokenHashHex(HashJoinToken(a))));
  EXPECT_TRUE(absl::StrContains(text, JoinTokenHashHex(HashJoinToken(b))));
  EXPECT_TRUE(absl::StrContains(text, kIotId));

  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(auth->Authenticate(a)->spiffe_id.ToString(), kVmId);
  EXPECT_EQ(auth->Authenticate(b)->spiffe_id.ToString(), kIotId);
}

TEST_F(JoinTokenTest, UnknownTokenIsRefused) {
  Create("known");
  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  // Well-formed, but not in the file.
  const std::string other = absl::StrCat("trellis-join-", std::string(42, 'A'), "A");
  ASSERT_TRUE(IsJoinTokenFormat(other));
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(other);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(id.status().message(), "unknown join token");
  EXPECT_FALSE(absl::StrContains(id.status().message(), other));
}

TEST_F(JoinTokenTest, WrongFormatIsRefusedWithoutQuotingIt) {
  const std::string token = Create("known");
  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  const std::string random_part = token.substr(kJoinTokenPrefix.size());
  const std::vector<std::string> bad = {
      "",
      "trellis-join-",
      random_part,                                               // no prefix
      absl::StrCat("trellis-joim-", random_part),                // wrong prefix
      token + "A",                                               // too long
      token.substr(0, token.size() - 1),                         // too short
      absl::StrCat("trellis-join-", std::string(42, 'A'), "B"),  // non-canonical last char
      absl::StrCat("trellis-join-", std::string(42, 'A'), "="),  // padding / bad char
      absl::StrCat("trellis-join-", std::string(42, '+'), "A"),  // standard base64, not url
      "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",                           // a JWT
  };
  for (const std::string& cred : bad) {
    EXPECT_FALSE(IsJoinTokenFormat(cred)) << cred;
    absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(cred);
    ASSERT_FALSE(id.ok()) << cred;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_TRUE(absl::StrContains(id.status().message(), "not a join token")) << id.status();
    if (cred.size() > kJoinTokenPrefix.size()) {
      EXPECT_FALSE(absl::StrContains(id.status().message(), cred)) << id.status();
    }
    ExpectNoTokenIn(id.status().message());
  }
}

TEST_F(JoinTokenTest, ExpiredTokenIsRefusedNamingTokenAndExpiry) {
  const absl::Time expires =
      absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())) + absl::Hours(1);
  const std::string token = Create("short-lived", kVmId, /*single_use=*/false, expires);
  absl::Time now = absl::Now();
  auto auth = NewAuth([&now] { return now; });
  ASSERT_NE(auth, nullptr);
  EXPECT_TRUE(auth->Authenticate(token).ok());

  now = expires + absl::Seconds(1);
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(token);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(id.status().message(), "short-lived")) << id.status();
  EXPECT_TRUE(absl::StrContains(
      id.status().message(), absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", expires, absl::UTCTimeZone())))
      << id.status();
  ExpectNoTokenIn(id.status().message());
}

TEST_F(JoinTokenTest, ExpiryInThePastIsRefusedAtCreation) {
  absl::StatusOr<std::string> token =
      CreateJoinToken(path_, "late", Id(kVmId), absl::Now() - absl::Minutes(1), false);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(access(path_.c_str(), F_OK), -1);
}

TEST_F(JoinTokenTest, SingleUseWorksOnceAlsoAcrossRestart) {
  const std::string token = Create("once", kVmId, /*single_use=*/true);
  const std::string keep = Create("other-once", kIotId, /*single_use=*/true);
  {
    auto auth = NewAuth();
    ASSERT_NE(auth, nullptr);
    absl::StatusOr<AuthenticatedIdentity> first = auth->Authenticate(token);
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_EQ(first->spiffe_id.ToString(), kVmId);
    absl::StatusOr<AuthenticatedIdentity> second = auth->Authenticate(token);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(second.status().message(), "join token once was already used");
  }
  const std::string used_path = path_ + ".used";
  EXPECT_EQ(ModeOf(used_path), 0600u);
  const std::string state = ReadFile(used_path);
  EXPECT_TRUE(absl::StrContains(state, "\"once\"")) << state;
  ExpectNoTokenIn(state);

  // A new control plane process: the consumption was persisted.
  auto restarted = NewAuth();
  ASSERT_NE(restarted, nullptr);
  absl::StatusOr<AuthenticatedIdentity> again = restarted->Authenticate(token);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().message(), "join token once was already used");
  // The other single-use token was not touched.
  EXPECT_TRUE(restarted->Authenticate(keep).ok());
  EXPECT_FALSE(restarted->Authenticate(keep).ok());
}

TEST_F(JoinTokenTest, UnparsableStateFileStopsStartup) {
  Create("x", kVmId, true);
  WriteFile(path_ + ".used", "{not json");
  const absl::Status s = CreateStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), path_ + ".used")) << s;
}

TEST_F(JoinTokenTest, MultiUseTokenWorksRepeatedly) {
  const std::string token = Create("fleet", kVmId, /*single_use=*/false);
  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(token);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(id->spiffe_id.ToString(), kVmId);
  }
  EXPECT_EQ(access((path_ + ".used").c_str(), F_OK), -1);  // nothing to record
}

TEST_F(JoinTokenTest, DuplicateNameIsRefused) {
  Create("dup");
  const std::string before = ReadFile(path_);
  absl::StatusOr<std::string> again = CreateJoinToken(path_, "dup", Id(kIotId), std::nullopt, true);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(absl::StrContains(again.status().message(), "dup")) << again.status();
  EXPECT_EQ(ReadFile(path_), before);
}

TEST_F(JoinTokenTest, BadNameIsRefused) {
  for (const char* name : {"", "-x", "a b", "a/b", "ü"}) {
    absl::StatusOr<std::string> t = CreateJoinToken(path_, name, Id(kVmId), std::nullopt, false);
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(JoinTokenTest, FileReadableByOthersIsRefusedWithChmodHint) {
  Create("t");
  ASSERT_EQ(chmod(path_.c_str(), 0644), 0);
  const absl::Status s = CreateStatus();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), path_)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "chmod 600")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "0644")) << s;

  // CreateJoinToken does not append to it either.
  absl::StatusOr<std::string> t = CreateJoinToken(path_, "u", Id(kVmId), std::nullopt, false);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(absl::StrContains(t.status().message(), "chmod 600")) << t.status();

  ASSERT_EQ(chmod(path_.c_str(), 0400), 0);  // read-only for the owner is fine
  EXPECT_TRUE(CreateStatus().ok());
}

TEST_F(JoinTokenTest, MissingFileIsNotFound) {
  EXPECT_EQ(CreateStatus().code(), absl::StatusCode::kNotFound);
}

TEST_F(JoinTokenTest, BrokenFilesAreRefusedNamingTheEntry) {
  struct Case {
    std::string content;
    std::string expected;  // in the message
  };
  const std::string ok_entry =
      absl::StrCat(R"({"name": "good", "sha256": ")", kHashA,
                   R"(", "spiffe_id": "spiffe://td/a", "single_use": false})");
  const std::vector<Case> cases = {
      {"{not json", "not valid JSON"},
      {"[]", "\"tokens\""},
      {R"({"tokens": {}})", "\"tokens\""},
      {R"({"tokens": [], "extra": 1})", "extra"},
      {absl::StrCat(
           R"({"tokens": [)", ok_entry,
           R"(, {"name": "bad-id", "sha256": "11111111111111111111111111111111111111111111)"
           R"(11111111111111111111", "spiffe_id": "https://td/a", "single_use": true}]})"),
       "tokens[1] (\"bad-id\"): \"spiffe_id\""},
      {R"({"tokens": [{"name": "bad-hex", "sha256": "xyz", "spiffe_id": "spiffe://td/a", )"
       R"("single_use": true}]})",
       "tokens[0] (\"bad-hex\"): \"sha256\""},
      {absl::StrCat(R"({"tokens": [{"name": "short-hex", "sha256": ")",
                    std::string(kHashA).substr(0, 62),
                    R"(", "spiffe_id": "spiffe://td/a", "single_use": true}]})"),
       "tokens[0] (\"short-hex\"): \"sha256\""},
      {absl::StrCat(
           R"({"tokens": [{"name": "bad-time", "sha256": ")", kHashA,
           R"(", "spiffe_id": "spiffe://td/a", "single_use": true, "expires": "tomorrow"}]})"),
       "tokens[0] (\"bad-time\"): \"expires\""},
      {absl::StrCat(
           R"({"tokens": [{"name": "typo", "sha256": ")", kHashA,
           R"(", "spiffe_id": "spiffe://td/a", "single_use": true, "expire": "2030-01-01T00:00:00Z"}]})"),
       "tokens[0] (\"typo\"): unknown member \"expire\""},
      {absl::StrCat(R"({"tokens": [{"name": "no-flag", "sha256": ")", kHashA,
                    R"(", "spiffe_id": "spiffe://td/a"}]})"),
       "tokens[0] (\"no-flag\"): \"single_use\""},
      {absl::StrCat(R"({"tokens": [{"sha256": ")", kHashA,
                    R"(", "spiffe_id": "spiffe://td/a", "single_use": true}]})"),
       "tokens[0]: has no string \"name\""},
      {absl::StrCat(R"({"tokens": [)", ok_entry, ",", ok_entry, "]}"),
       "tokens[1] (\"good\"): another entry has the same name"},
      {R"({"tokens": [7]})", "tokens[0]: is not a JSON object"},
  };
  for (const Case& c : cases) {
    WriteFile(path_, c.content);
    const absl::Status s = CreateStatus();
    ASSERT_FALSE(s.ok()) << c.content;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), path_)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.expected)) << s << "\nexpected: " << c.expected;

    // CreateJoinToken refuses to append to it and leaves it alone.
    absl::StatusOr<std::string> t = CreateJoinToken(path_, "new", Id(kVmId), std::nullopt, false);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
    EXPECT_EQ(ReadFile(path_), c.content);
  }
  // And the good entry alone, with an RFC 3339 offset expiry, is accepted.
  WriteFile(path_, absl::StrCat(R"({"tokens": [)", ok_entry, "]}"));
  EXPECT_TRUE(CreateStatus().ok());
}

TEST_F(JoinTokenTest, HandWrittenEntryWithSha256sumHashWorks) {
  // An operator may write entries by hand with `printf %s "$TOKEN" | sha256sum`.
  const std::string token = absl::StrCat("trellis-join-", std::string(42, 'Q'), "A");
  ASSERT_TRUE(IsJoinTokenFormat(token));
  std::string hex = JoinTokenHashHex(HashJoinToken(token));
  for (char& c : hex) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  WriteFile(path_,
            absl::StrCat(R"({"tokens": [{"name": "by-hand", "sha256": ")", hex,
                         R"(", "spiffe_id": "spiffe://example.org/iot/x", )"
                         R"("expires": "2999-01-01T00:00:00+02:00", "single_use": false}]})"));
  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(token);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://example.org/iot/x");
}

TEST_F(JoinTokenTest, LiveReloadAcceptsNewTokensAndKeepsLastGoodSet) {
  const std::string first = Create("first");
  std::vector<absl::Status> reports;
  JoinTokenAuthenticatorOptions options;
  options.tokens_file = path_;
  options.reload_interval = absl::Hours(1);  // only explicit Reload() below
  options.on_reload = [&reports](const absl::Status& s) { reports.push_back(s); };
  auto created = JoinTokenAuthenticator::Create(std::move(options));
  ASSERT_TRUE(created.ok()) << created.status();
  JoinTokenAuthenticator& auth = **created;
  EXPECT_TRUE(auth.Reload().ok());  // unchanged

  const std::string second = Create("second", kIotId);
  EXPECT_EQ(auth.Authenticate(second).status().message(), "unknown join token");
  ASSERT_TRUE(auth.Reload().ok());
  EXPECT_EQ(auth.token_count(), 2u);
  absl::StatusOr<AuthenticatedIdentity> id = auth.Authenticate(second);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), kIotId);

  // A broken file: the last good set stays in use, Reload() says why, every time.
  const std::string good = ReadFile(path_);
  WriteFile(path_, good.substr(0, good.size() / 2));
  absl::Status s = auth.Reload();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), path_)) << s;
  EXPECT_EQ(auth.Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(auth.last_reload_status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(auth.Authenticate(first).ok());
  EXPECT_TRUE(auth.Authenticate(second).ok());
  ExpectNoTokenIn(s.message());

  // Too open: also kept, and reported.
  WriteFile(path_, good, 0640);
  s = auth.Reload();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "chmod 600")) << s;
  EXPECT_TRUE(auth.Authenticate(first).ok());

  // `chmod 600` alone (no content change) is noticed.
  ASSERT_EQ(chmod(path_.c_str(), 0600), 0);
  EXPECT_TRUE(auth.Reload().ok());
  EXPECT_TRUE(auth.last_reload_status().ok());

  // One token removed: revocation works live.
  WriteFile(path_, absl::StrCat("{\"tokens\": []}\n"));
  ASSERT_TRUE(auth.Reload().ok());
  EXPECT_EQ(auth.token_count(), 0u);
  EXPECT_EQ(auth.Authenticate(first).status().message(), "unknown join token");
  EXPECT_FALSE(reports.empty());
  EXPECT_TRUE(reports.back().ok());
}

TEST_F(JoinTokenTest, AuthenticateNoticesChangesAfterTheInterval) {
  Create("first");
  absl::Time now = absl::Now();
  JoinTokenAuthenticatorOptions options;
  options.tokens_file = path_;
  options.clock = [&now] { return now; };
  auto auth = JoinTokenAuthenticator::Create(std::move(options));
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::string second = Create("second");
  EXPECT_FALSE((*auth)->Authenticate(second).ok());  // within the interval: not re-read yet
  now += absl::Seconds(2);
  EXPECT_TRUE((*auth)->Authenticate(second).ok());
}

TEST_F(JoinTokenTest, NoTokenInAnyFileOrMessage) {
  const std::string once = Create("once", kVmId, true);
  const std::string expiring = Create("expiring", kVmId, false, absl::Now() + absl::Minutes(5));
  absl::Time now = absl::Now();
  auto auth = NewAuth([&now] { return now; });
  ASSERT_NE(auth, nullptr);
  std::vector<std::string> messages;
  ASSERT_TRUE(auth->Authenticate(once).ok());
  messages.emplace_back(auth->Authenticate(once).status().message());
  now += absl::Minutes(10);
  messages.emplace_back(auth->Authenticate(expiring).status().message());
  messages.emplace_back(auth->Authenticate(once + "x").status().message());
  std::string flipped = expiring;
  flipped[20] = flipped[20] == 'A' ? 'B' : 'A';
  messages.emplace_back(auth->Authenticate(flipped).status().message());
  absl::StatusOr<std::string> dup = CreateJoinToken(path_, "once", Id(kVmId), std::nullopt, true);
  messages.emplace_back(dup.status().message());
  for (const std::string& m : messages) {
    EXPECT_FALSE(m.empty());
    ExpectNoTokenIn(m);
    EXPECT_FALSE(absl::StrContains(m, flipped));
  }
  ExpectNoTokenIn(ReadFile(path_));
  ExpectNoTokenIn(ReadFile(path_ + ".used"));
}

TEST_F(JoinTokenTest, ConcurrentSingleUseSucceedsExactlyOnce) {
  const std::string token = Create("race", kVmId, /*single_use=*/true);
  const std::string multi = Create("multi", kIotId, /*single_use=*/false);
  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  constexpr int kThreads = 8;
  std::atomic<bool> go{false};
  std::atomic<int> ok{0};
  std::atomic<int> used{0};
  std::atomic<int> multi_ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      while (!go.load()) {
      }
      absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(token);
      if (id.ok()) {
        ++ok;
      } else if (id.status().message() == "join token race was already used") {
        ++used;
      }
      if (auth->Authenticate(multi).ok()) ++multi_ok;
    });
  }
  go = true;
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(used.load(), kThreads - 1);
  EXPECT_EQ(multi_ok.load(), kThreads);
}

TEST_F(JoinTokenTest, StateFileWriteFailureDoesNotConsume) {
  const std::string token = Create("once", kVmId, true);
  auto auth = NewAuth();
  ASSERT_NE(auth, nullptr);
  // A directory where the state file should go: the atomic rename fails, even for root.
  const std::string used_path = path_ + ".used";
  ASSERT_EQ(mkdir(used_path.c_str(), 0700), 0);
  absl::StatusOr<AuthenticatedIdentity> id = auth->Authenticate(token);
  ASSERT_EQ(rmdir(used_path.c_str()), 0);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(id.status().message(), "once")) << id.status();
  ExpectNoTokenIn(id.status().message());
  EXPECT_TRUE(auth->Authenticate(token).ok());  // retried once the state can be written
  EXPECT_EQ(auth->Authenticate(token).status().message(), "join token once was already used");
}

}  // namespace
}  // namespace trellis::control_plane
