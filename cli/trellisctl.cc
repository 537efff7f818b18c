// trellisctl: the Trellis operator's command-line tool.
//
//   trellisctl ca init --dir DIR [--trust-domain TD] [--root-ttl D] [--intermediate-ttl D]
//   [--kubernetes [--namespace NS]] [--force]
//
// Exit codes: 0 success, 1 the operation failed, 2 usage error (unknown command or flag).

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "cli/args.h"
#include "cli/ca_kubernetes.h"
#include "cli/commands.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::cli {
namespace {

namespace ca = control_plane::ca;


constexpr char kRootKeyFile[] = "root.key";

constexpr char kTopUsage[] = R"(Usage: trellisctl COMMAND [FLAGS]

The Trellis service mesh operator tool.

Commands:
  ca init           Create a new mesh CA (a root and an intermediate) in a directory.
  ca rotate STEP    Rotate the root CA with no downtime (status, prepare, activate, retire).
  join-token create Create a join token for a workload outside Kubernetes.
  inject            Add the Trellis sidecar to Kubernetes YAML (offline; -f FILE|-).

Flags:
  -h, --help  Show this help. `trellisctl COMMAND --help` documents a command's flags.

Exit codes: 0 success, 1 the operation failed, 2 usage error.
)";

constexpr char kCaUsage[] = R"(Usage: trellisctl ca SUBCOMMAND [FLAGS]

Subcommands:
  init        Create a new mesh CA (a root and an intermediate) in a directory.
  rotate      Rotate the root CA with no downtime (status, prepare, activate, retire).

Run `trellisctl ca init --help` or `trellisctl ca rotate --help` for their flags.
)";

constexpr char kCaInitUsage[] = R"(Usage: trellisctl ca init --dir DIR [FLAGS]

Generates an ECDSA P-256 self-signed root CA and an intermediate CA under it, and writes:
  DIR/ca.crt     the intermediate (the signing CA)
  DIR/ca.key     the intermediate's private key (mode 0600)
  DIR/roots.crt  the root (the mesh trust bundle)
  DIR/root.key   the root's private key (mode 0600): move it offline; the control plane does
                 not need it, only signing a new intermediate does.
DIR/ca.crt, ca.key and roots.crt are the layout the control plane loads (a Kubernetes Secret).

With --kubernetes, also writes the two objects `kubectl apply` needs:
  DIR/kubernetes/trellis-ca-secret.yaml       Secret trellis-ca (type Opaque): ca.crt, ca.key
                                              and roots.crt, base64 (mode 0600). Never root.key.
  DIR/kubernetes/trellis-mesh-configmap.yaml  ConfigMap trellis-mesh: trust-domain,
                                              control-plane-address and roots.crt.
then: kubectl apply -f DIR/kubernetes/

Flags:
  --dir DIR                 Directory to write into (created if missing). Required.
  --trust-domain TD         SPIFFE trust domain, shown in the CA names and written to the
                            ConfigMap. Default: cluster.local
  --kubernetes              Also write DIR/kubernetes/ (the Secret and the ConfigMap above).
  --namespace NS            Namespace of those objects, where trellis-control-plane runs.
                            Default: trellis-system
  --root-ttl DURATION       Lifetime of the root, e.g. 87600h. Default: 87600h (10 years)
  --intermediate-ttl DURATION
                            Lifetime of the intermediate (at most the root's). Default: 8760h
  --force                   Overwrite existing CA files in DIR.
  -h, --help                Show this help.
)";

bool IsHelp(const std::string& arg) { return arg == "-h" || arg == "--help" || arg == "help"; }

// The `ca init` flags, parsed.
struct CaInitFlags {
  std::string dir;
  std::string trust_domain = "cluster.local";
  absl::Duration root_ttl = absl::Hours(87600);
  absl::Duration intermediate_ttl = absl::Hours(8760);
  bool force = false;
  bool kubernetes = false;
  std::string ns = "trellis-system";
};

// Parses `--name value`, `--name=value` and `--force`. Returns kExitOk to go on, or an exit code
// (help shown: 0 returned through `done`; usage error: 2).
int ParseCaInitFlags(const std::vector<std::string>& args, CaInitFlags& flags, bool& done) {
  done = false;
  const std::vector<std::string> valued = {"--dir", "--trust-domain", "--root-ttl",
                                           "--intermediate-ttl", "--namespace"};
  std::map<std::string, std::string> values;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (IsHelp(arg)) {
      std::cout << kCaInitUsage;
      done = true;
      return kExitOk;
    }
    if (arg == "--force") {
      flags.force = true;
      continue;
    }
    if (arg == "--kubernetes") {
      flags.kubernetes = true;
      continue;
    }
    std::string name = arg;
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); absl::StartsWith(arg, "--") && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    if (std::find(valued.begin(), valued.end(), name) == valued.end()) {
      done = true;
      if (absl::StartsWith(arg, "-")) {
        return UsageError(absl::StrCat("ca init: unknown flag \"", name, "\""), kCaInitUsage);
      }
      return UsageError(absl::StrCat("ca init: unexpected argument \"", arg, "\""), kCaInitUsage);
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        done = true;
        return UsageError(absl::StrCat("ca init: flag ", name, " needs a value"), kCaInitUsage);
      }
      value = args[++i];
    }
    values[name] = value;
  }
  if (values.count("--dir") == 0 || values["--dir"].empty()) {
    done = true;
    return UsageError("ca init: --dir is required", kCaInitUsage);
  }
  flags.dir = values["--dir"];
  if (values.count("--trust-domain")) flags.trust_domain = values["--trust-domain"];
  if (values.count("--namespace")) {
    if (!flags.kubernetes) {
      done = true;
      return UsageError("ca init: --namespace is only for --kubernetes", kCaInitUsage);
    }
    flags.ns = values["--namespace"];
    if (absl::Status s = ValidateNamespace(flags.ns); !s.ok()) {
      done = true;
      return UsageError(absl::StrCat("ca init: --namespace: ", s.message()), kCaInitUsage);
    }
  }
  for (auto [name, target] : {std::make_pair("--root-ttl", &flags.root_ttl),
                              std::make_pair("--intermediate-ttl", &flags.intermediate_ttl)}) {
    if (values.count(name) == 0) continue;
    if (!absl::ParseDuration(values[name], target) || *target <= absl::ZeroDuration()) {
      done = true;
      return UsageError(absl::StrCat("ca init: ", name, " \"", values[name],
                                     "\" is not a positive duration such as 8760h"),
                        kCaInitUsage);
    }
  }
  if (absl::Status s = identity::ValidateTrustDomain(flags.trust_domain); !s.ok()) {
    done = true;
    return UsageError(absl::StrCat("ca init: --trust-domain: ", s.message()), kCaInitUsage);
  }
  if (flags.intermediate_ttl > flags.root_ttl) {
    done = true;
    return UsageError("ca init: --intermediate-ttl must not exceed --root-ttl", kCaInitUsage);
  }
  return kExitOk;
}

// "AB:CD:..." as `openssl x509 -fingerprint -sha256` prints it.
std::string ColonFingerprint(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    if (i > 0) out += ':';
    out += absl::AsciiStrToUpper(hex.substr(i, 2));
  }
  return out;
}

int Fail(const absl::Status& status) {
  std::cerr << "trellisctl: ca init: " << status.message() << "\n";
  return kExitFailure;
}

int CaInit(const std::vector<std::string>& args) {
  CaInitFlags flags;
  bool done = false;
  if (int code = ParseCaInitFlags(args, flags, done); done) return code;

  if (mkdir(flags.dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Fail(absl::PermissionDeniedError(
        absl::StrCat("cannot create \"", flags.dir, "\": ", std::strerror(errno))));
  }
  const std::string root_key_path = ca::JoinPath(flags.dir, kRootKeyFile);
  if (!flags.force) {
    std::vector<std::string> existing;
    std::vector<std::string> paths;
    for (const char* name :
         {ca::kCaCertFile, ca::kCaKeyFile, ca::kChainFile, ca::kRootsFile, kRootKeyFile}) {
      paths.push_back(ca::JoinPath(flags.dir, name));
    }
    if (flags.kubernetes) {
      for (const std::string& path : KubernetesManifestPaths(flags.dir)) paths.push_back(path);
    }
    for (const std::string& path : paths) {
      struct stat st;
      if (lstat(path.c_str(), &st) == 0) existing.push_back(path);
    }
    if (!existing.empty()) {
      std::cerr << "trellisctl: ca init: refusing to overwrite existing CA file(s): "
                << absl::StrJoin(existing, ", ")
                << "\nA CA already lives there; pass --force to replace it (workloads that "
                   "trust the old root will stop trusting new certificates).\n";
      return kExitFailure;
    }
  }

  const absl::Time now = absl::Now();
  absl::StatusOr<identity::PrivateKey> root_key = identity::PrivateKey::GenerateEcdsaP256();
  if (!root_key.ok()) return Fail(root_key.status());
  identity::CaCertificateSpec root_spec;
  root_spec.common_name = absl::StrCat("Trellis Root CA (", flags.trust_domain, ")");
  root_spec.not_before = now - absl::Minutes(5);
  root_spec.not_after = now + flags.root_ttl;
  root_spec.path_length = 1;
  absl::StatusOr<identity::Certificate> root =
      identity::CreateRootCertificate(*root_key, root_spec);
  if (!root.ok()) return Fail(root.status());

  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
  if (!key.ok()) return Fail(key.status());
  identity::CaCertificateSpec intermediate_spec;
  intermediate_spec.common_name =
      absl::StrCat("Trellis Intermediate CA (", flags.trust_domain, ")");
  intermediate_spec.not_before = now - absl::Minutes(5);
  intermediate_spec.not_after = now + flags.intermediate_ttl;
  intermediate_spec.path_length = 0;
  absl::StatusOr<identity::Certificate> intermediate =
      identity::CreateIntermediateCertificate(*root, *root_key, key->get(), intermediate_spec);
  if (!intermediate.ok()) return Fail(intermediate.status());

  absl::StatusOr<identity::TrustBundle> roots = identity::TrustBundle::Create({*root});
  if (!roots.ok()) return Fail(roots.status());
  ca::CaFiles files{*intermediate,
                    std::make_shared<const identity::PrivateKey>(*std::move(key)),
                    {},
                    *std::move(roots)};

  absl::StatusOr<std::string> root_key_pem = root_key->ToPem();
  if (!root_key_pem.ok()) return Fail(root_key_pem.status());
  absl::Status status =
      ca::WriteFileAtomically(root_key_path, *root_key_pem, 0600, /*overwrite=*/flags.force);
  OPENSSL_cleanse(root_key_pem->data(), root_key_pem->size());
  if (!status.ok()) return Fail(status);
  if (status = ca::WriteCaFiles(flags.dir, files, {/*overwrite=*/flags.force}); !status.ok()) {
    return Fail(status);
  }
  // Read back what was written, exactly as the control plane will.
  if (absl::StatusOr<ca::CaFiles> loaded = ca::LoadCaFiles(flags.dir); !loaded.ok()) {
    return Fail(loaded.status());
  }
  if (flags.kubernetes) {
    if (status = WriteKubernetesManifests(flags.dir, flags.ns, flags.trust_domain, flags.force);
        !status.ok()) {
      return Fail(status);
    }
  }

  std::cout << "Created a Trellis CA for trust domain " << flags.trust_domain << " in " << flags.dir
            << ":\n"
            << "  " << ca::JoinPath(flags.dir, ca::kCaCertFile)
            << "   intermediate (signing) CA, valid until "
            << absl::FormatTime(intermediate->not_after(), absl::UTCTimeZone()) << "\n"
            << "  " << ca::JoinPath(flags.dir, ca::kCaKeyFile)
            << "   intermediate private key (mode 0600)\n"
            << "  " << ca::JoinPath(flags.dir, ca::kRootsFile) << " root CA, valid until "
            << absl::FormatTime(root->not_after(), absl::UTCTimeZone()) << "\n"
            << "  " << root_key_path << "   root private key (mode 0600): keep it offline\n"
            << "Root SHA256 Fingerprint=" << ColonFingerprint(root->sha256_hex()) << "\n"
            << "\nKeep " << root_key_path
            << " OFFLINE: move it off this machine and out of the cluster. The control plane "
               "needs only ca.crt, ca.key and roots.crt; the root key is needed again only to "
               "sign a new intermediate.\n";
  if (flags.kubernetes) {
    const std::vector<std::string> manifests = KubernetesManifestPaths(flags.dir);
    const std::string kube_dir = ca::JoinPath(flags.dir, kKubernetesDir);
    std::cout << "\nKubernetes objects (namespace " << flags.ns << "):\n"
              << "  " << manifests[0] << "       Secret " << kCaSecretName
              << " (ca.crt, ca.key, roots.crt; mode 0600, it holds a private key)\n"
              << "  " << manifests[1] << "  ConfigMap " << kMeshConfigMapName
              << " (trust-domain, control-plane-address, roots.crt)\n"
              << "\nNext:\n"
              << "  kubectl create namespace " << flags.ns << "   # unless it exists\n"
              << "  kubectl apply -f " << kube_dir << "/\n"
              << "  then install the control plane: k8s/README.md\n"
              << "  move " << root_key_path
              << " OFFLINE; the Secret does not contain it and the cluster never needs it\n";
  }
  return kExitOk;
}

int CaCommand(const std::vector<std::string>& args) {
  if (args.empty()) return UsageError("ca: missing subcommand", kCaUsage);
  if (IsHelp(args[0])) {
    std::cout << kCaUsage;
    return kExitOk;
  }
  if (args[0] == "init") return CaInit({args.begin() + 1, args.end()});
  if (args[0] == "rotate") return CaRotateCommand({args.begin() + 1, args.end()});
  return UsageError(absl::StrCat("ca: unknown subcommand \"", args[0], "\""), kCaUsage);
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return UsageError("missing command", kTopUsage);
  if (IsHelp(args[0])) {
    std::cout << kTopUsage;
    return kExitOk;
  }
  if (args[0] == "ca") return CaCommand({args.begin() + 1, args.end()});
  if (args[0] == "join-token") return JoinTokenCommand({args.begin() + 1, args.end()});
  if (args[0] == "inject") return InjectCommand({args.begin() + 1, args.end()});
  if (absl::StartsWith(args[0], "-")) {
    return UsageError(absl::StrCat("unknown flag \"", args[0], "\""), kTopUsage);
  }
  return UsageError(absl::StrCat("unknown command \"", args[0], "\""), kTopUsage);
}

}  // namespace
}  // namespace trellis::cli

int main(int argc, char** argv) { return trellis::cli::Main(argc, argv); }
