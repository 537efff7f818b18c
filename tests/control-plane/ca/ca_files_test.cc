// Loading and writing the CA directory, with real files under TEST_TMPDIR.
#include "control-plane/ca/ca_files.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/identity/ca.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::control_plane::ca {
namespace {

using ::testing::HasSubstr;
using trellis::testing::BundleOf;
using trellis::testing::MakeIntermediate;
using trellis::testing::MakeLeaf;
using trellis::testing::MakeRoot;
using trellis::testing::TestCa;

// An intermediate under `parent` without a pathLenConstraint, so that another CA may sit below it
// (the test PKI's intermediates have pathLenConstraint 0).
TestCa MakeUnconstrainedIntermediate(const TestCa& parent, const std::string& name) {
  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
  EXPECT_TRUE(key.ok());
  identity::CaCertificateSpec spec;
  spec.common_name = name;
  spec.not_before = absl::Now() - absl::Hours(1);
  spec.not_after = absl::Now() + absl::Hours(12);
  absl::StatusOr<identity::Certificate> cert =
      identity::CreateIntermediateCertificate(parent.cert, *parent.key, key->get(), spec);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return TestCa{std::make_shared<identity::PrivateKey>(*std::move(key)), *cert, {*cert}};
}

std::string MakeTempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base != nullptr ? base : "/tmp", "/ca_files_XXXXXX");
  EXPECT_NE(mkdtemp(templ.data()), nullptr);
  return templ;
}

void WriteFile(const std::string& path, const std::string& contents, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << contents;
    ASSERT_TRUE(out.good()) << path;
  }
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

std::string KeyPem(const identity::PrivateKey& key) {
  absl::StatusOr<std::string> pem = key.ToPem();
  EXPECT_TRUE(pem.ok()) << pem.status();
  return pem.ok() ? *pem : "";
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

CaFiles CaOf(const TestCa& ca, const std::vector<identity::Certificate>& chain,
             const std::vector<const TestCa*>& roots) {
  return CaFiles{ca.cert, ca.key, chain, BundleOf(roots)};
}

// Writes a layout by hand (WriteCaFiles refuses broken ones).
void WriteLayout(const std::string& dir, const identity::Certificate& cert,
                 const identity::PrivateKey& key, const std::vector<identity::Certificate>& chain,
                 const std::vector<identity::Certificate>& roots) {
  WriteFile(JoinPath(dir, kCaCertFile), cert.ToPem(), 0644);
  WriteFile(JoinPath(dir, kCaKeyFile), KeyPem(key), 0600);
  if (!chain.empty()) WriteFile(JoinPath(dir, kChainFile), identity::ToPemChain(chain), 0644);
  WriteFile(JoinPath(dir, kRootsFile), identity::ToPemChain(roots), 0644);
}

// No refusal may carry key material.
void ExpectNoKeyBytes(const absl::Status& status, const identity::PrivateKey& key) {
  const std::string pem = KeyPem(key);
  EXPECT_FALSE(absl::StrContains(status.message(), "PRIVATE KEY")) << status;
  // A line of the base64 body.
  const size_t body = pem.find('\n') + 1;
  EXPECT_FALSE(absl::StrContains(status.message(), pem.substr(body, 40))) << status;
}

class CaFilesTest : public ::testing::Test {
 protected:
  std::string dir_ = MakeTempDir();
  TestCa root_ = MakeRoot("Mesh Root");
  TestCa intermediate_ = MakeIntermediate(root_, "Mesh Intermediate");
};

TEST_F(CaFilesTest, RoundTripsIntermediateUnderRoot) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  EXPECT_EQ(ModeOf(JoinPath(dir_, kCaKeyFile)), 0600);
  EXPECT_EQ(ModeOf(JoinPath(dir_, kCaCertFile)), 0644);
  EXPECT_EQ(ListDir(dir_), (std::vector<std::string>{"ca.crt", "ca.key", "roots.crt"}));

  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->cert, intermediate_.cert);
  EXPECT_TRUE(identity::KeyMatchesCertificate(*loaded->key, intermediate_.cert));
  EXPECT_TRUE(loaded->chain.empty());
  ASSERT_EQ(loaded->roots.roots().size(), 1u);
  EXPECT_TRUE(loaded->roots.Contains(root_.cert));
}

TEST_F(CaFilesTest, RoundTripsChainFileAndSeveralRoots) {
  TestCa policy = MakeUnconstrainedIntermediate(root_, "Policy CA");
  TestCa issuing = MakeIntermediate(policy, "Issuing CA");
  TestCa other_root = MakeRoot("Next Root");
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(issuing, {policy.cert}, {&root_, &other_root}), {}).ok());
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->cert, issuing.cert);
  ASSERT_EQ(loaded->chain.size(), 1u);
  EXPECT_EQ(loaded->chain[0], policy.cert);
  EXPECT_EQ(loaded->roots.roots().size(), 2u);
}

TEST_F(CaFilesTest, LoadsRootAsSigningCaAndEmptyChainFile) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(root_, {}, {&root_}), {}).ok());
  WriteFile(JoinPath(dir_, kChainFile), "\n", 0644);
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->cert, root_.cert);
  EXPECT_TRUE(loaded->chain.empty());
}

TEST_F(CaFilesTest, AcceptsOwnerOnlyReadOnlyKey) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  ASSERT_EQ(chmod(JoinPath(dir_, kCaKeyFile).c_str(), 0400), 0);
  EXPECT_TRUE(LoadCaFiles(dir_).ok());
}

TEST_F(CaFilesTest, RefusesKeyReadableByOthers) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  const std::string key_path = JoinPath(dir_, kCaKeyFile);
  ASSERT_EQ(chmod(key_path.c_str(), 0644), 0);
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(key_path));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("0644"));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("chmod 600 " + key_path));
  ExpectNoKeyBytes(loaded.status(), *intermediate_.key);
}

TEST_F(CaFilesTest, RefusesKeyReadableByAGroupWeAreNotIn) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  const std::string key = JoinPath(dir_, kCaKeyFile);
  ASSERT_EQ(chmod(key.c_str(), 0640), 0);
  // A group this process is not in (the tests run as root, which may chown).
  const gid_t stranger = 54321;
  if (chown(key.c_str(), -1, stranger) != 0) GTEST_SKIP() << "cannot chown here (not root)";
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("0640"));
  // Group write is refused whatever the group.
  ASSERT_EQ(chown(key.c_str(), -1, getegid()), 0);
  ASSERT_EQ(chmod(key.c_str(), 0660), 0);
  EXPECT_FALSE(LoadCaFiles(dir_).ok());
}

TEST_F(CaFilesTest, AcceptsKeyReadOnlyForOurOwnGroupAsAKubernetesFsGroupMountIs) {
  // defaultMode 0400 + fsGroup gives 0440 with the pod's group: a non-root control plane reads it.
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  const std::string key = JoinPath(dir_, kCaKeyFile);
  ASSERT_EQ(chown(key.c_str(), -1, getegid()), 0);
  ASSERT_EQ(chmod(key.c_str(), 0440), 0);
  EXPECT_TRUE(LoadCaFiles(dir_).ok());
}

TEST_F(CaFilesTest, RefusesKeyThatDoesNotMatchCertificate) {
  TestCa stranger = MakeRoot("Stranger");
  WriteLayout(dir_, intermediate_.cert, *stranger.key, {}, {root_.cert});
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("does not match"));
  ExpectNoKeyBytes(loaded.status(), *stranger.key);
}

TEST_F(CaFilesTest, RefusesSigningCertificateThatIsNotCa) {
  trellis::testing::TestLeaf leaf =
      MakeLeaf(intermediate_, "spiffe://cluster.local/ns/default/sa/web");
  WriteLayout(dir_, leaf.chain[0], *leaf.key, {intermediate_.cert}, {root_.cert});
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("not a CA"));
}

TEST_F(CaFilesTest, RefusesChainNotReachingRoots) {
  TestCa other_root = MakeRoot("Other Root");
  WriteLayout(dir_, intermediate_.cert, *intermediate_.key, {}, {other_root.cert});
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("does not chain"));
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("roots.crt"));
}

TEST_F(CaFilesTest, RefusesSigningCaBelowPathLengthLimit) {
  // intermediate_ has pathLenConstraint 0: no CA may sit below it.
  TestCa issuing = MakeIntermediate(intermediate_, "Issuing CA");
  WriteLayout(dir_, issuing.cert, *issuing.key, {intermediate_.cert}, {root_.cert});
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("pathLenConstraint 0"));
}

TEST_F(CaFilesTest, RefusesMissingIntermediateInChainFile) {
  TestCa policy = MakeUnconstrainedIntermediate(root_, "Policy CA");
  TestCa issuing = MakeIntermediate(policy, "Issuing CA");
  WriteLayout(dir_, issuing.cert, *issuing.key, {}, {root_.cert});
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("chain.crt"));
}

TEST_F(CaFilesTest, RefusesExpiredCa) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_, absl::Now() + absl::Hours(24 * 365));
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("expired"));
}

TEST_F(CaFilesTest, MissingFileIsNamed) {
  for (const char* name : {kCaCertFile, kCaKeyFile, kRootsFile}) {
    SCOPED_TRACE(name);
    const std::string dir = MakeTempDir();
    ASSERT_TRUE(WriteCaFiles(dir, CaOf(intermediate_, {}, {&root_}), {}).ok());
    const std::string path = JoinPath(dir, name);
    ASSERT_EQ(unlink(path.c_str()), 0);
    absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir);
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound) << loaded.status();
    EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(path));
  }
}

TEST_F(CaFilesTest, GarbageKeyFileIsRefusedWithoutEchoingIt) {
  WriteLayout(dir_, intermediate_.cert, *intermediate_.key, {}, {root_.cert});
  WriteFile(JoinPath(dir_, kCaKeyFile), "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n", 0600);
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(JoinPath(dir_, kCaKeyFile)));
  EXPECT_FALSE(absl::StrContains(loaded.status().message(), "c2VjcmV0")) << loaded.status();
}

TEST_F(CaFilesTest, WriteRefusesToOverwriteUnlessAsked) {
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(intermediate_, {}, {&root_}), {}).ok());
  TestCa root2 = MakeRoot("Root 2");
  TestCa policy = MakeUnconstrainedIntermediate(root_, "Policy CA");
  TestCa issuing = MakeIntermediate(policy, "Issuing");
  absl::Status status = WriteCaFiles(dir_, CaOf(root2, {}, {&root2}), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(status.message()), HasSubstr(JoinPath(dir_, kCaCertFile)));
  absl::StatusOr<CaFiles> loaded = LoadCaFiles(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->cert, intermediate_.cert);  // untouched

  // Overwriting with a chain, then without one: the stale chain.crt goes away.
  ASSERT_TRUE(
      WriteCaFiles(dir_, CaOf(issuing, {policy.cert}, {&root_}), {/*overwrite=*/true}).ok());
  EXPECT_EQ(LoadCaFiles(dir_)->chain.size(), 1u);
  ASSERT_TRUE(WriteCaFiles(dir_, CaOf(root2, {}, {&root2}), {/*overwrite=*/true}).ok());
  loaded = LoadCaFiles(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->cert, root2.cert);
  EXPECT_EQ(ListDir(dir_), (std::vector<std::string>{"ca.crt", "ca.key", "roots.crt"}));
  EXPECT_EQ(ModeOf(JoinPath(dir_, kCaKeyFile)), 0600);
}

TEST_F(CaFilesTest, WriteRefusesUnusableCa) {
  TestCa other_root = MakeRoot("Other Root");
  absl::Status status = WriteCaFiles(dir_, CaOf(intermediate_, {}, {&other_root}), {});
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(ListDir(dir_).empty());
}

TEST(WriteFileAtomicallyTest, WritesModeAndRefusesExisting) {
  const std::string dir = MakeTempDir();
  const std::string path = JoinPath(dir, "f");
  ASSERT_TRUE(WriteFileAtomically(path, "one", 0600, false).ok());
  EXPECT_EQ(ModeOf(path), 0600);
  EXPECT_EQ(WriteFileAtomically(path, "two", 0600, false).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(*identity::ReadFileToString(path), "one");
  ASSERT_TRUE(WriteFileAtomically(path, "three", 0644, true).ok());
  EXPECT_EQ(*identity::ReadFileToString(path), "three");
  EXPECT_EQ(ModeOf(path), 0644);
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"f"});  // no temporary files left
}

}  // namespace
}  // namespace trellis::control_plane::ca
