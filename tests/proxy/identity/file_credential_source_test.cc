#include "proxy/identity/file_credential_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log/json_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::proxy {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kId[] = "spiffe://cluster.local/ns/default/sa/web";
// How long a change may take to be published (the debounce is 100 ms).
constexpr absl::Duration kPublishWait = absl::Seconds(2);
// How long to wait before concluding that something was (correctly) not published.
constexpr absl::Duration kQuiet = absl::Milliseconds(600);

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

// What atomic writers (Vault agent, cert-manager's csi-driver) do: write a temp file, rename.
void WriteAtomic(const std::string& path, const std::string& content) {
  WriteFile(path + ".tmp", content);
  ASSERT_EQ(rename((path + ".tmp").c_str(), path.c_str()), 0) << path;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = kPublishWait) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

std::string CertPem(const testing::TestLeaf& leaf) { return identity::ToPemChain(leaf.chain); }

std::string KeyPem(const testing::TestLeaf& leaf) {
  absl::StatusOr<std::string> pem = leaf.key->ToPem();
  return pem.ok() ? *pem : "";
}

class FileCredentialSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = absl::StrCat(TempDir(), "/", name);
    ASSERT_EQ(system(absl::StrCat("rm -rf '", dir_, "' && mkdir -p '", dir_, "'").c_str()), 0);
    log_path_ = dir_ + ".log";
    log_fd_ = open(log_path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0600);
    ASSERT_GE(log_fd_, 0);
    log::SetOutputFd(log_fd_);
    options_.cert_file = dir_ + "/tls.crt";
    options_.key_file = dir_ + "/tls.key";
    options_.bundle_file = dir_ + "/ca.crt";
  }

  void TearDown() override {
    if (source_ != nullptr) source_->Stop();
    log::SetOutputFd(STDERR_FILENO);
    close(log_fd_);
    // Shown on failure, to see what the source said.
    if (HasFailure()) std::fprintf(stderr, "--- source log ---\n%s", Log().c_str());
  }

  void WriteSet(const testing::TestLeaf& leaf) {
    WriteAtomic(options_.cert_file, CertPem(leaf));
    WriteAtomic(options_.key_file, KeyPem(leaf));
    WriteAtomic(options_.bundle_file, root_.cert.ToPem());
  }

  // Creates the source, loads the first set synchronously and starts watching.
  void StartWith(const testing::TestLeaf& leaf) {
    WriteSet(leaf);
    absl::StatusOr<std::unique_ptr<FileCredentialSource>> source =
        FileCredentialSource::Create(options_, &store_, &stats_);
    ASSERT_TRUE(source.ok()) << source.status();
    source_ = *std::move(source);
    ASSERT_TRUE(source_->LoadNow().ok());
    ASSERT_TRUE(source_->Start().ok());
  }

  std::string Serial() const {
    std::optional<Credentials> creds = store_.credentials();
    return creds.has_value() ? creds->chain.front().serial_hex() : "";
  }

  // The store has `leaf`, and the source has finished publishing it: its counters are updated
  // and then its "credentials loaded" line (with "serial":"...") is written, just after the store.
  bool Published(const testing::TestLeaf& leaf) {
    const std::string serial = leaf.chain.front().serial_hex();
    const std::string logged = absl::StrCat("\"serial\":\"", serial, "\"");
    return WaitFor([&] { return Serial() == serial && Log().find(logged) != std::string::npos; });
  }

  std::string Log() const { return ReadAll(log_path_); }

  std::string dir_;
  std::string log_path_;
  int log_fd_ = -1;
  testing::TestCa root_ = testing::MakeRoot("Mesh Root");
  testing::TestLeaf first_ = testing::MakeLeaf(root_, kId);
  FileCredentialSource::Options options_;
  ContextStore store_;
  ProxyStats stats_;
  std::unique_ptr<FileCredentialSource> source_;
};

TEST_F(FileCredentialSourceTest, CreateRejectsIncompleteOptions) {
  FileCredentialSource::Options options = options_;
  options.key_file.clear();
  absl::StatusOr<std::unique_ptr<FileCredentialSource>> source =
      FileCredentialSource::Create(options, &store_, &stats_);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(source.status().message(), HasSubstr("key_file"));
  EXPECT_FALSE(FileCredentialSource::Create(options_, nullptr, &stats_).ok());
}

TEST_F(FileCredentialSourceTest, InitialLoadPublishesAndCounts) {
  StartWith(first_);
  EXPECT_NE(store_.server_context(), nullptr);
  EXPECT_NE(store_.client_context(), nullptr);
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  EXPECT_EQ(store_.server_context()->spiffe_id().ToString(), kId);
  EXPECT_EQ(stats_.credential_reloads_ok.load(), 1u);
  EXPECT_EQ(stats_.credential_reloads_error.load(), 0u);
  EXPECT_EQ(stats_.rotations.load(), 0u);
  EXPECT_EQ(stats_.certificate_not_after_seconds.load(),
            absl::ToUnixSeconds(first_.chain.front().not_after()));
  EXPECT_EQ(stats_.trust_bundle_roots.load(), 1);
  const std::string log = Log();
  EXPECT_THAT(log, HasSubstr(first_.chain.front().serial_hex()));
  EXPECT_THAT(log, HasSubstr(kId));
  EXPECT_THAT(log, HasSubstr("\"not_after\""));
  EXPECT_THAT(log, Not(HasSubstr("PRIVATE KEY")));
}

TEST_F(FileCredentialSourceTest, LoadNowNamesTheMissingFile) {
  WriteAtomic(options_.cert_file, CertPem(first_));
  WriteAtomic(options_.bundle_file, root_.cert.ToPem());
  absl::StatusOr<std::unique_ptr<FileCredentialSource>> source =
      FileCredentialSource::Create(options_, &store_, &stats_);
  ASSERT_TRUE(source.ok());
  const absl::Status status = (*source)->LoadNow();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(options_.key_file));
  EXPECT_EQ(store_.server_context(), nullptr);
  EXPECT_EQ(stats_.credential_reloads_error.load(), 1u);
  EXPECT_THAT(Log(), HasSubstr(options_.key_file));
}

TEST_F(FileCredentialSourceTest, RenamedCertAndKeyArePublished) {
  StartWith(first_);
  const uint64_t generation = store_.generation();
  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  WriteAtomic(options_.cert_file, CertPem(second));
  WriteAtomic(options_.key_file, KeyPem(second));
  ASSERT_TRUE(Published(second));
  EXPECT_EQ(store_.generation(), generation + 1);
  EXPECT_EQ(stats_.credential_reloads_ok.load(), 2u);
  // Counted just after the new contexts are visible.
  EXPECT_TRUE(WaitFor([&] { return stats_.rotations.load() == 1u; })) << stats_.rotations.load();
  EXPECT_EQ(stats_.certificate_not_after_seconds.load(),
            absl::ToUnixSeconds(second.chain.front().not_after()));
  EXPECT_THAT(Log(), HasSubstr(second.chain.front().serial_hex()));
}

TEST_F(FileCredentialSourceTest, UnchangedFilesAreNotRepublished) {
  StartWith(first_);
  absl::SleepFor(kQuiet);  // lets the watcher's start-up look finish
  const uint64_t generation = store_.generation();
  WriteSet(first_);  // same bytes, new inodes
  absl::SleepFor(kQuiet);
  EXPECT_EQ(store_.generation(), generation);
  EXPECT_EQ(stats_.credential_reloads_ok.load(), 1u);
  EXPECT_EQ(stats_.credential_reloads_error.load(), 0u);
}

// The layout of a Kubernetes Secret volume: the files are symlinks into ..data, itself a symlink
// to a timestamped directory; an update swaps ..data with one rename.
TEST_F(FileCredentialSourceTest, KubernetesSymlinkSwapIsPublished) {
  auto write_generation = [&](const std::string& ts, const testing::TestLeaf& leaf) {
    const std::string gen_dir = absl::StrCat(dir_, "/", ts);
    ASSERT_EQ(mkdir(gen_dir.c_str(), 0755), 0);
    WriteFile(gen_dir + "/tls.crt", CertPem(leaf));
    WriteFile(gen_dir + "/tls.key", KeyPem(leaf));
    WriteFile(gen_dir + "/ca.crt", root_.cert.ToPem());
    const std::string tmp_link = dir_ + "/..data_tmp";
    ASSERT_EQ(symlink(ts.c_str(), tmp_link.c_str()), 0);
    ASSERT_EQ(rename(tmp_link.c_str(), (dir_ + "/..data").c_str()), 0);
  };
  write_generation("..2026_01_01_00_00_00.000000001", first_);
  for (const char* name : {"tls.crt", "tls.key", "ca.crt"}) {
    ASSERT_EQ(symlink(absl::StrCat("..data/", name).c_str(), absl::StrCat(dir_, "/", name).c_str()),
              0);
  }
  absl::StatusOr<std::unique_ptr<FileCredentialSource>> source =
      FileCredentialSource::Create(options_, &store_, &stats_);
  ASSERT_TRUE(source.ok());
  source_ = *std::move(source);
  ASSERT_TRUE(source_->LoadNow().ok());
  ASSERT_TRUE(source_->Start().ok());
  ASSERT_EQ(Serial(), first_.chain.front().serial_hex());

  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  write_generation("..2026_01_01_01_00_00.000000002", second);
  ASSERT_EQ(system(absl::StrCat("rm -rf '", dir_, "/..2026_01_01_00_00_00.000000001'").c_str()), 0);
  ASSERT_TRUE(Published(second));

  // And again: the watcher must follow the new target directory.
  testing::TestLeaf third = testing::MakeLeaf(root_, kId);
  write_generation("..2026_01_01_02_00_00.000000003", third);
  ASSERT_EQ(system(absl::StrCat("rm -rf '", dir_, "/..2026_01_01_01_00_00.000000002'").c_str()), 0);
  ASSERT_TRUE(Published(third));
  // Counted just after the new contexts are visible.
  EXPECT_TRUE(WaitFor([&] { return stats_.rotations.load() == 2u; })) << stats_.rotations.load();
}

TEST_F(FileCredentialSourceTest, NewCertWithOldKeyIsNotPublishedUntilTheKeyArrives) {
  StartWith(first_);
  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  WriteAtomic(options_.cert_file, CertPem(second));
  absl::SleepFor(kQuiet);
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  EXPECT_GE(stats_.credential_reloads_error.load(), 1u);
  EXPECT_THAT(Log(), HasSubstr("does not match"));
  EXPECT_THAT(source_->last_error(), HasSubstr(options_.key_file));

  WriteAtomic(options_.key_file, KeyPem(second));
  ASSERT_TRUE(Published(second));
  // Counted just after the new contexts are visible.
  EXPECT_TRUE(WaitFor([&] { return stats_.rotations.load() == 1u; })) << stats_.rotations.load();
  EXPECT_TRUE(WaitFor([&] { return source_->last_error().empty(); })) << source_->last_error();
}

TEST_F(FileCredentialSourceTest, HalfWrittenCertIsNotPublished) {
  StartWith(first_);
  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  const std::string pem = CertPem(second);
  WriteFile(options_.cert_file, pem.substr(0, pem.size() / 2));
  absl::SleepFor(kQuiet);
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  EXPECT_GE(stats_.credential_reloads_error.load(), 1u);
  EXPECT_THAT(Log(), HasSubstr(options_.cert_file));

  WriteFile(options_.cert_file, pem);
  WriteFile(options_.key_file, KeyPem(second));
  ASSERT_TRUE(Published(second));
}

TEST_F(FileCredentialSourceTest, ExpiredCertIsRefused) {
  StartWith(first_);
  testing::TestLeaf expired = testing::MakeLeaf(root_, kId, absl::Now() - absl::Minutes(50),
                                                absl::Now() - absl::Minutes(10));
  WriteAtomic(options_.cert_file, CertPem(expired));
  WriteAtomic(options_.key_file, KeyPem(expired));
  ASSERT_TRUE(WaitFor([&] { return stats_.credential_reloads_error.load() >= 1; }));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  EXPECT_EQ(stats_.rotations.load(), 0u);
  EXPECT_THAT(Log(), HasSubstr("expired"));
}

TEST_F(FileCredentialSourceTest, CertFromAnotherCaIsRefused) {
  StartWith(first_);
  testing::TestCa other = testing::MakeRoot("Other Root");
  testing::TestLeaf foreign = testing::MakeLeaf(other, kId);
  WriteAtomic(options_.cert_file, CertPem(foreign));
  WriteAtomic(options_.key_file, KeyPem(foreign));
  ASSERT_TRUE(WaitFor([&] { return stats_.credential_reloads_error.load() >= 1; }));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  EXPECT_THAT(Log(), HasSubstr("does not verify against the bundle"));
}

TEST_F(FileCredentialSourceTest, IntermediateChainIsAccepted) {
  testing::TestCa intermediate = testing::MakeIntermediate(root_);
  testing::TestLeaf leaf = testing::MakeLeaf(intermediate, kId);
  StartWith(leaf);
  EXPECT_EQ(Serial(), leaf.chain.front().serial_hex());
  EXPECT_EQ(store_.credentials()->chain.size(), 2u);
}

TEST_F(FileCredentialSourceTest, DenyListEditsArePublished) {
  options_.deny_list_file = dir_ + "/deny.txt";
  WriteAtomic(options_.deny_list_file, "# nobody yet\n");
  StartWith(first_);
  ASSERT_TRUE(store_.credentials()->deny_list.empty());

  WriteAtomic(options_.deny_list_file,
              "serial:abcdef01\nspiffe://cluster.local/ns/evil/sa/mallory\n");
  ASSERT_TRUE(WaitFor([&] { return store_.credentials()->deny_list.size() == 2; }));
  EXPECT_TRUE(store_.credentials()->deny_list.IsSerialDenied("abcdef01"));
  EXPECT_TRUE(store_.server_context()->deny_list().IsSerialDenied("abcdef01"));
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  EXPECT_EQ(stats_.rotations.load(), 0u);

  // A malformed edit is refused and the last good list stays.
  WriteAtomic(options_.deny_list_file, "serial:not-hex\n");
  ASSERT_TRUE(WaitFor([&] { return stats_.credential_reloads_error.load() >= 1; }));
  EXPECT_EQ(store_.credentials()->deny_list.size(), 2u);
  // The error is counted just before its log line is written: wait for the line too.
  EXPECT_TRUE(WaitFor([&] { return Log().find(options_.deny_list_file) != std::string::npos; }))
      << Log();
}

TEST_F(FileCredentialSourceTest, DeletedFileKeepsTheCurrentContexts) {
  StartWith(first_);
  const auto context = store_.server_context();
  ASSERT_EQ(unlink(options_.key_file.c_str()), 0);
  ASSERT_TRUE(WaitFor([&] { return stats_.credential_reloads_error.load() >= 1; }));
  EXPECT_EQ(store_.server_context(), context);
  EXPECT_EQ(Serial(), first_.chain.front().serial_hex());
  const std::string log = Log();
  EXPECT_THAT(log, HasSubstr(options_.key_file));
  EXPECT_THAT(log, HasSubstr("keeping the current certificate"));

  // Putting it back (with a new pair) recovers.
  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  WriteAtomic(options_.cert_file, CertPem(second));
  WriteAtomic(options_.key_file, KeyPem(second));
  ASSERT_TRUE(Published(second));
}

// A repair that produces no event in the watched directory (here: the key is rewritten in place
// through a hard link in a directory nobody watches) is found by the periodic re-check.
TEST_F(FileCredentialSourceTest, RecheckFindsARepairWithoutEvents) {
  options_.recheck_interval = absl::Milliseconds(200);
  const std::string elsewhere = dir_ + "-elsewhere";
  ASSERT_EQ(system(absl::StrCat("rm -rf '", elsewhere, "' && mkdir -p '", elsewhere, "'").c_str()),
            0);
  StartWith(first_);
  ASSERT_EQ(link(options_.key_file.c_str(), (elsewhere + "/tls.key").c_str()), 0);

  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  WriteAtomic(options_.cert_file, CertPem(second));
  ASSERT_TRUE(WaitFor([&] { return stats_.credential_reloads_error.load() >= 1; }));
  // The rename's own events may still produce one more (different) error on a loaded machine;
  // once the count is steady, further re-checks failing the same way must not add to it.
  uint64_t errors = stats_.credential_reloads_error.load();
  for (int i = 0; i < 20; ++i) {
    absl::SleepFor(absl::Milliseconds(300));
    const uint64_t now = stats_.credential_reloads_error.load();
    if (now == errors) break;
    errors = now;
  }
  absl::SleepFor(absl::Milliseconds(500));  // several re-checks failing the same way
  EXPECT_EQ(stats_.credential_reloads_error.load(), errors) << "repeated errors are not counted";

  WriteFile(elsewhere + "/tls.key", KeyPem(second));
  ASSERT_TRUE(Published(second));
}

TEST_F(FileCredentialSourceTest, PollingModePicksUpChanges) {
  options_.poll_only = true;
  options_.poll_interval = absl::Milliseconds(100);
  StartWith(first_);
  EXPECT_TRUE(source_->polling());
  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  WriteAtomic(options_.cert_file, CertPem(second));
  WriteAtomic(options_.key_file, KeyPem(second));
  ASSERT_TRUE(Published(second));
}

TEST_F(FileCredentialSourceTest, StopAndStartAgain) {
  StartWith(first_);
  source_->Stop();
  source_->Stop();  // idempotent
  ASSERT_TRUE(source_->Start().ok());
  EXPECT_FALSE(source_->Start().ok());
  testing::TestLeaf second = testing::MakeLeaf(root_, kId);
  WriteAtomic(options_.cert_file, CertPem(second));
  WriteAtomic(options_.key_file, KeyPem(second));
  ASSERT_TRUE(Published(second));
}

}  // namespace
}  // namespace trellis::proxy
