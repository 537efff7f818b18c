// `trellisctl ca init --kubernetes`, run as a process: the two manifests it writes are parsed with
// yaml-cpp (not the code that wrote them) and every data key must decode to the file it names;
// root.key must be nowhere in them. Usage: ca_init_kubernetes_test TRELLISCTL
// (the schema check against the Kubernetes OpenAPI is ca_init_kubernetes_schema_test.sh).

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Trellisctl() { return ::testing::internal::GetArgvs().at(1); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

int ModeOf(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return -1;
  return st.st_mode & 0777;
}

struct Outcome {
  int code = -1;
  std::string out;
  std::string err;
};

// Runs trellisctl with `args` (no shell), capturing stdout and stderr through files.
Outcome RunTrellisctl(const std::vector<std::string>& args, const std::string& work) {
  const std::string out = work + "/stdout", err = work + "/stderr";
  const pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(out.c_str(), "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
    std::vector<char*> argv;
    std::string binary = Trellisctl();
    argv.push_back(binary.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  Outcome run;
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status)) {
    run.code = WEXITSTATUS(status);
  }
  run.out = ReadFile(out);
  run.err = ReadFile(err);
  return run;
}

class CaInitKubernetesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    char pattern[4096];
    snprintf(pattern, sizeof(pattern), "%s/ca_init_k8s.XXXXXX", tmp ? tmp : "/tmp");
    ASSERT_NE(mkdtemp(pattern), nullptr);
    work_ = pattern;
  }
  void TearDown() override {
    const std::string rm = "rm -rf '" + work_ + "'";
    ASSERT_EQ(system(rm.c_str()), 0);
  }

  std::string work_;
};

// A data map as {key: value} (every key and value a scalar string), or a test failure.
std::map<std::string, std::string> DataOf(const YAML::Node& doc) {
  std::map<std::string, std::string> out;
  const YAML::Node data = doc["data"];
  EXPECT_TRUE(data.IsMap());
  if (!data.IsMap()) return out;
  for (const auto& kv : data) {
    EXPECT_TRUE(kv.second.IsScalar()) << kv.first.as<std::string>();
    out[kv.first.as<std::string>()] = kv.second.as<std::string>();
  }
  return out;
}

TEST_F(CaInitKubernetesTest, WritesASecretAndAConfigMapThatDecodeToTheCaFiles) {
  const std::string dir = work_ + "/trellis-ca";
  const Outcome run = RunTrellisctl(
      {"ca", "init", "--dir", dir, "--kubernetes", "--trust-domain", "example.org"}, work_);
  ASSERT_EQ(run.code, 0) << run.err;
  const std::string secret_path = dir + "/kubernetes/trellis-ca-secret.yaml";
  const std::string configmap_path = dir + "/kubernetes/trellis-mesh-configmap.yaml";
  ASSERT_TRUE(Exists(secret_path)) << run.out;
  ASSERT_TRUE(Exists(configmap_path)) << run.out;
  EXPECT_EQ(ModeOf(secret_path), 0600) << "the Secret holds ca.key";

  // The Secret: ca.crt, ca.key, roots.crt, base64 of the very files; nothing else.
  const std::vector<YAML::Node> secrets = YAML::LoadAllFromFile(secret_path);
  ASSERT_EQ(secrets.size(), 1u);
  const YAML::Node& secret = secrets[0];
  EXPECT_EQ(secret["apiVersion"].as<std::string>(), "v1");
  EXPECT_EQ(secret["kind"].as<std::string>(), "Secret");
  EXPECT_EQ(secret["type"].as<std::string>(), "Opaque");
  EXPECT_EQ(secret["metadata"]["name"].as<std::string>(), "trellis-ca");
  EXPECT_EQ(secret["metadata"]["namespace"].as<std::string>(), "trellis-system");
  const std::map<std::string, std::string> data = DataOf(secret);
  std::set<std::string> keys;
  for (const auto& [k, v] : data) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"ca.crt", "ca.key", "roots.crt"}));
  for (const auto& [key, value] : data) {
    std::string decoded;
    ASSERT_TRUE(absl::Base64Unescape(value, &decoded)) << key << " is not base64";
    EXPECT_EQ(decoded, ReadFile(dir + "/" + key))
        << key << " does not decode to " << dir << "/" << key;
    EXPECT_EQ(absl::Base64Escape(decoded), value) << key << ": not canonical base64";
  }

  // The root key is in neither file, in any encoding we can think of.
  const std::string root_key = ReadFile(dir + "/root.key");
  ASSERT_THAT(root_key, HasSubstr("PRIVATE KEY"));
  const std::string secret_text = ReadFile(secret_path), configmap_text = ReadFile(configmap_path);
  std::string root_key_body = root_key.substr(root_key.find('\n') + 1, 40);
  for (const std::string& text : {secret_text, configmap_text}) {
    EXPECT_THAT(text, Not(HasSubstr(absl::Base64Escape(root_key))));
    EXPECT_THAT(text, Not(HasSubstr(root_key_body)));
    EXPECT_THAT(text, Not(HasSubstr("root.key:")));
  }
  EXPECT_THAT(configmap_text, Not(HasSubstr("PRIVATE KEY")));

  // The ConfigMap: the keys of k8s/configmap.yaml, with this CA's values.
  const YAML::Node configmap = YAML::LoadFile(configmap_path);
  EXPECT_EQ(configmap["apiVersion"].as<std::string>(), "v1");
  EXPECT_EQ(configmap["kind"].as<std::string>(), "ConfigMap");
  EXPECT_EQ(configmap["metadata"]["name"].as<std::string>(), "trellis-mesh");
  EXPECT_EQ(configmap["metadata"]["namespace"].as<std::string>(), "trellis-system");
  const std::map<std::string, std::string> settings = DataOf(configmap);
  EXPECT_EQ(settings.size(), 3u);
  EXPECT_EQ(settings.at("trust-domain"), "example.org");
  EXPECT_EQ(settings.at("control-plane-address"), "trellis-control-plane.trellis-system.svc:15012");
  EXPECT_EQ(settings.at("roots.crt"), ReadFile(dir + "/roots.crt"));

  // What to do next, and the warning about the root key.
  EXPECT_THAT(run.out, HasSubstr("kubectl apply -f " + dir + "/kubernetes/"));
  EXPECT_THAT(run.out, HasSubstr(dir + "/root.key OFFLINE"));
}

TEST_F(CaInitKubernetesTest, NamespaceGoesIntoBothObjectsAndTheControlPlaneAddress) {
  const std::string dir = work_ + "/ca";
  const Outcome run =
      RunTrellisctl({"ca", "init", "--dir", dir, "--kubernetes", "--namespace=mesh-ops"}, work_);
  ASSERT_EQ(run.code, 0) << run.err;
  const YAML::Node secret = YAML::LoadFile(dir + "/kubernetes/trellis-ca-secret.yaml");
  const YAML::Node configmap = YAML::LoadFile(dir + "/kubernetes/trellis-mesh-configmap.yaml");
  EXPECT_EQ(secret["metadata"]["namespace"].as<std::string>(), "mesh-ops");
  EXPECT_EQ(configmap["metadata"]["namespace"].as<std::string>(), "mesh-ops");
  EXPECT_EQ(configmap["data"]["control-plane-address"].as<std::string>(),
            "trellis-control-plane.mesh-ops.svc:15012");
  EXPECT_EQ(configmap["data"]["trust-domain"].as<std::string>(), "cluster.local");
}

TEST_F(CaInitKubernetesTest, WithoutTheFlagNoManifests) {
  const std::string dir = work_ + "/ca";
  const Outcome run = RunTrellisctl({"ca", "init", "--dir", dir}, work_);
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_TRUE(Exists(dir + "/ca.crt"));
  EXPECT_FALSE(Exists(dir + "/kubernetes"));
  EXPECT_THAT(run.out, Not(HasSubstr("kubectl apply")));
}

TEST_F(CaInitKubernetesTest, BadNamespaceAndStrayNamespaceAreUsageErrors) {
  const std::string dir = work_ + "/ca";
  Outcome run =
      RunTrellisctl({"ca", "init", "--dir", dir, "--kubernetes", "--namespace", "Mesh_Ops"}, work_);
  EXPECT_EQ(run.code, 2);
  EXPECT_THAT(run.err, HasSubstr("\"Mesh_Ops\" is not a Kubernetes namespace name"));
  run = RunTrellisctl({"ca", "init", "--dir", dir, "--namespace", "ops"}, work_);
  EXPECT_EQ(run.code, 2);
  EXPECT_THAT(run.err, HasSubstr("--namespace is only for --kubernetes"));
  run = RunTrellisctl({"ca", "init", "--dir", dir, "--kubernetes", "--namespace"}, work_);
  EXPECT_EQ(run.code, 2);
  EXPECT_FALSE(Exists(dir)) << "a usage error still wrote something";
}

TEST_F(CaInitKubernetesTest, ExistingManifestsAreNotOverwrittenWithoutForce) {
  const std::string dir = work_ + "/ca";
  ASSERT_EQ(RunTrellisctl({"ca", "init", "--dir", dir, "--kubernetes"}, work_).code, 0);
  const std::string secret_path = dir + "/kubernetes/trellis-ca-secret.yaml";
  const std::string first = ReadFile(secret_path);
  // Only the manifest is left from an earlier run: still refused, naming it.
  for (const char* name : {"ca.crt", "ca.key", "roots.crt", "root.key"}) {
    ASSERT_EQ(unlink((dir + "/" + name).c_str()), 0);
  }
  Outcome run = RunTrellisctl({"ca", "init", "--dir", dir, "--kubernetes"}, work_);
  EXPECT_EQ(run.code, 1);
  EXPECT_THAT(run.err, HasSubstr(secret_path));
  EXPECT_THAT(run.err, HasSubstr("--force"));
  EXPECT_EQ(ReadFile(secret_path), first);
  run = RunTrellisctl({"ca", "init", "--dir", dir, "--kubernetes", "--force"}, work_);
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_NE(ReadFile(secret_path), first);
  EXPECT_EQ(ModeOf(secret_path), 0600);
  // The new Secret carries the new CA.
  const YAML::Node secret = YAML::LoadFile(secret_path);
  std::string decoded;
  ASSERT_TRUE(absl::Base64Unescape(secret["data"]["ca.crt"].as<std::string>(), &decoded));
  EXPECT_EQ(decoded, ReadFile(dir + "/ca.crt"));
}

TEST_F(CaInitKubernetesTest, HelpDocumentsTheFlags) {
  const Outcome run = RunTrellisctl({"ca", "init", "--help"}, work_);
  EXPECT_EQ(run.code, 0);
  for (const char* want : {"--kubernetes", "--namespace", "trellis-ca-secret.yaml",
                           "trellis-mesh-configmap.yaml", "Never root.key", "trellis-system"}) {
    EXPECT_THAT(run.out, HasSubstr(want));
  }
}

}  // namespace
