#include "cli/ca_kubernetes.h"

#include <openssl/crypto.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::cli {
namespace {

namespace ca = control_plane::ca;

// The file's bytes, or NotFound / PermissionDenied naming it.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read \"", path, "\": ", std::strerror(errno)));
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Overwrites a string that held key material before it is freed.
struct Cleansed {
  std::string value;
  ~Cleansed() {
    if (!value.empty()) OPENSSL_cleanse(value.data(), value.size());
  }
};

// `text` as a YAML literal block scalar (`|`) indented by `indent` spaces; `text` ends with \n.
std::string LiteralBlock(const std::string& text, int indent) {
  std::string out = "|\n";
  const std::string pad(static_cast<size_t>(indent), ' ');
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty()) continue;  // PEM has no blank lines; a trailing \n ends the last line
    absl::StrAppend(&out, pad, line, "\n");
  }
  return out;
}

}  // namespace

absl::Status ValidateNamespace(const std::string& ns) {
  bool ok = !ns.empty() && ns.size() <= 63 && absl::ascii_isalnum(ns.front()) &&
            absl::ascii_isalnum(ns.back());
  for (char c : ns) ok = ok && (absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-');
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("\"", ns,
                   "\" is not a Kubernetes namespace name (lower-case letters, digits and '-', "
                   "starting and ending with a letter or digit, at most 63 characters)"));
}

std::vector<std::string> KubernetesManifestPaths(const std::string& ca_dir) {
  const std::string dir = ca::JoinPath(ca_dir, kKubernetesDir);
  return {ca::JoinPath(dir, kCaSecretFile), ca::JoinPath(dir, kMeshConfigMapFile)};
}

absl::Status WriteKubernetesManifests(const std::string& ca_dir, const std::string& ns,
                                      const std::string& trust_domain, bool overwrite) {
  if (absl::Status s = ValidateNamespace(ns); !s.ok()) return s;
  absl::StatusOr<std::string> cert = ReadWholeFile(ca::JoinPath(ca_dir, ca::kCaCertFile));
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> roots = ReadWholeFile(ca::JoinPath(ca_dir, ca::kRootsFile));
  if (!roots.ok()) return roots.status();
  Cleansed key;
  {
    absl::StatusOr<std::string> read = ReadWholeFile(ca::JoinPath(ca_dir, ca::kCaKeyFile));
    if (!read.ok()) return read.status();
    key.value = *std::move(read);
  }
  // chain.crt exists only for an intermediate under an external root; carry it when present.
  std::string chain;
  if (absl::StatusOr<std::string> read = ReadWholeFile(ca::JoinPath(ca_dir, ca::kChainFile));
      read.ok()) {
    chain = *std::move(read);
  }

  const std::string dir = ca::JoinPath(ca_dir, kKubernetesDir);
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create \"", dir, "\": ", std::strerror(errno)));
  }
  const std::vector<std::string> paths = KubernetesManifestPaths(ca_dir);
  const std::string labels =
      "  labels:\n"
      "    app.kubernetes.io/name: trellis\n"
      "    app.kubernetes.io/part-of: trellis\n";

  Cleansed secret;
  absl::StrAppend(
      &secret.value,
      "# The Trellis mesh CA for trellis-control-plane, written by `trellisctl ca init "
      "--kubernetes`.\n"
      "# SECRET: it holds the intermediate CA's private key (ca.key). Apply it, then keep this "
      "file\n"
      "# as safe as the key or delete it. root.key is NOT in it: keep that offline.\n"
      "apiVersion: v1\n"
      "kind: Secret\n"
      "metadata:\n"
      "  name: ",
      kCaSecretName, "\n  namespace: ", ns, "\n", labels,
      "type: Opaque\n"
      "data:\n"
      "  ",
      ca::kCaCertFile, ": ", absl::Base64Escape(*cert), "\n  ", ca::kCaKeyFile, ": ");
  {
    Cleansed encoded{absl::Base64Escape(key.value)};
    absl::StrAppend(&secret.value, encoded.value, "\n");
  }
  absl::StrAppend(&secret.value, "  ", ca::kRootsFile, ": ", absl::Base64Escape(*roots), "\n");
  if (!chain.empty()) {
    absl::StrAppend(&secret.value, "  ", ca::kChainFile, ": ", absl::Base64Escape(chain), "\n");
  }

  const std::string configmap = absl::StrCat(
      "# The mesh's public configuration, written by `trellisctl ca init --kubernetes`.\n"
      "# roots.crt is the trust bundle (public). Injected pods mount a ConfigMap of this name "
      "from\n"
      "# THEIR namespace: the control plane copies it there (see k8s/README.md).\n"
      "apiVersion: v1\n"
      "kind: ConfigMap\n"
      "metadata:\n"
      "  name: ",
      kMeshConfigMapName, "\n  namespace: ", ns, "\n", labels,
      "data:\n"
      "  trust-domain: \"",
      trust_domain, "\"\n  control-plane-address: \"trellis-control-plane.", ns,
      ".svc:15012\"\n  roots.crt: ", LiteralBlock(*roots, 4));

  if (absl::Status s = ca::WriteFileAtomically(paths[0], secret.value, 0600, overwrite); !s.ok()) {
    return s;
  }
  return ca::WriteFileAtomically(paths[1], configmap, 0644, overwrite);
}

}  // namespace trellis::cli
