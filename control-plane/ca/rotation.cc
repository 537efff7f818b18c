#include "control-plane/ca/rotation.h"

#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>

#include <cerrno>
#include <cstdio>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/crypto/handles.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/trust_bundle.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::control_plane::ca {
namespace {

constexpr char kStateFile[] = "rotation.state";
constexpr char kNextDir[] = "next";
constexpr char kPreviousDir[] = "previous";
constexpr char kRootCertFile[] = "root.crt";
constexpr char kRootKeyFile[] = "root.key";

struct State {
  std::string step = "idle";
  absl::Time activated_at = absl::InfinitePast();
};

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

State ReadState(const std::string& dir) {
  State state;
  absl::StatusOr<std::string> text = identity::ReadFileToString(JoinPath(dir, kStateFile));
  if (!text.ok()) return state;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.first == "step") state.step = std::string(absl::StripAsciiWhitespace(kv.second));
    int64_t seconds = 0;
    if (kv.first == "activated_at" && absl::SimpleAtoi(kv.second, &seconds)) {
      state.activated_at = absl::FromUnixSeconds(seconds);
    }
  }
  return state;
}

absl::Status WriteState(const std::string& dir, const State& state) {
  std::string text = absl::StrCat("# Written by trellisctl ca rotate; do not edit.\nstep=",
                                  state.step, "\n");
  if (state.activated_at != absl::InfinitePast()) {
    absl::StrAppend(&text, "activated_at=", absl::ToUnixSeconds(state.activated_at), "\n");
  }
  return WriteFileAtomically(JoinPath(dir, kStateFile), text, 0644, /*overwrite=*/true);
}

absl::Status MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create directory \"", path, "\""));
  }
  return absl::OkStatus();
}

std::string Describe(const identity::Certificate& cert) {
  return absl::StrCat(cert.subject(), " (sha256 ", cert.sha256_hex().substr(0, 16), "...)");
}

// True if `cert` (with `chain` above it) verifies up to `root` alone at `now`.
bool ChainsTo(const identity::Certificate& cert, const std::vector<identity::Certificate>& chain,
              const identity::Certificate& root, absl::Time now) {
  if (cert == root) return true;
  absl::StatusOr<identity::TrustBundle> bundle = identity::TrustBundle::Create({root});
  if (!bundle.ok()) return false;
  absl::StatusOr<crypto::UniquePtr<X509_STORE>> store = bundle->NewX509Store();
  if (!store.ok()) return false;
  crypto::X509Stack untrusted(sk_X509_new_null());
  for (const identity::Certificate& c : chain) {
    X509_up_ref(c.get());
    sk_X509_push(untrusted.get(), c.get());
  }
  crypto::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), store->get(), cert.get(), untrusted.get()) != 1) {
    return false;
  }
  X509_STORE_CTX_set_time(ctx.get(), 0, absl::ToTimeT(now));
  const bool ok = X509_verify_cert(ctx.get()) == 1;
  ERR_clear_error();
  return ok;
}

absl::Status CopyFile(const std::string& from, const std::string& to, int mode) {
  absl::StatusOr<std::string> contents = identity::ReadFileToString(from);
  if (!contents.ok()) return contents.status();
  return WriteFileAtomically(to, *contents, mode, /*overwrite=*/true);
}

}  // namespace

absl::StatusOr<RotationStatus> GetRotationStatus(const std::string& dir) {
  absl::StatusOr<CaFiles> ca = LoadCaFiles(dir);
  if (!ca.ok()) return ca.status();
  const State state = ReadState(dir);
  RotationStatus status;
  status.step = state.step;
  status.activated_at = state.activated_at;
  status.signing_ca = absl::StrCat(ca->cert.subject(), " (serial ", ca->cert.serial_hex(), ")");
  for (const identity::Certificate& root : ca->roots.roots()) {
    status.roots.push_back(Describe(root));
    if (ChainsTo(ca->cert, ca->chain, root, absl::Now())) status.signing_root = Describe(root);
  }
  return status;
}

absl::StatusOr<std::string> PrepareRotation(const RotationOptions& options) {
  absl::StatusOr<CaFiles> ca = LoadCaFiles(options.dir, options.now);
  if (!ca.ok()) return ca.status();
  const State state = ReadState(options.dir);
  if (state.step != "idle") {
    return absl::FailedPreconditionError(absl::StrCat(
        "a rotation is already in progress (step: ", state.step, "); run `trellisctl ca rotate ",
        state.step == "prepared" ? "activate" : "retire", "` first"));
  }
  absl::StatusOr<identity::PrivateKey> root_key = identity::PrivateKey::GenerateEcdsaP256();
  absl::StatusOr<identity::PrivateKey> ca_key = identity::PrivateKey::GenerateEcdsaP256();
  if (!root_key.ok()) return root_key.status();
  if (!ca_key.ok()) return ca_key.status();
  // A date in the names tells the generations apart in `status`, logs and `openssl x509`.
  const std::string generation = absl::FormatTime(" %Y-%m-%d %H:%M", options.now, absl::UTCTimeZone());
  identity::CaCertificateSpec root_spec{options.root_common_name + generation, "Trellis",
                                        options.now - absl::Minutes(5),
                                        options.now + options.root_ttl, 1};
  absl::StatusOr<identity::Certificate> root = identity::CreateRootCertificate(*root_key, root_spec);
  if (!root.ok()) return root.status();
  identity::CaCertificateSpec ca_spec{options.intermediate_common_name + generation, "Trellis",
                                      options.now - absl::Minutes(5),
                                      options.now + options.intermediate_ttl, 0};
  absl::StatusOr<identity::Certificate> intermediate =
      identity::CreateIntermediateCertificate(*root, *root_key, ca_key->get(), ca_spec);
  if (!intermediate.ok()) return intermediate.status();

  const std::string next = JoinPath(options.dir, kNextDir);
  if (absl::Status s = MakeDir(next); !s.ok()) return s;
  absl::StatusOr<std::string> root_key_pem = root_key->ToPem();
  absl::StatusOr<std::string> ca_key_pem = ca_key->ToPem();
  if (!root_key_pem.ok()) return root_key_pem.status();
  if (!ca_key_pem.ok()) return ca_key_pem.status();
  for (auto [name, contents, mode] :
       std::vector<std::tuple<const char*, std::string, int>>{
           {kRootKeyFile, *root_key_pem, 0600},
           {kRootCertFile, root->ToPem(), 0644},
           {kCaKeyFile, *ca_key_pem, 0600},
           {kCaCertFile, intermediate->ToPem(), 0644}}) {
    if (absl::Status s = WriteFileAtomically(JoinPath(next, name), contents, mode, true); !s.ok()) {
      return s;
    }
  }
  // Publish: the new root joins the bundle. Proxies start trusting it; nothing uses it yet.
  std::vector<identity::Certificate> roots = ca->roots.roots();
  roots.push_back(*root);
  if (absl::Status s = WriteFileAtomically(JoinPath(options.dir, kRootsFile),
                                           identity::ToPemChain(roots), 0644, true);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = WriteState(options.dir, {"prepared", absl::InfinitePast()}); !s.ok()) {
    return s;
  }
  return absl::StrCat("Published new root ", Describe(*root), " in roots.crt (", roots.size(),
                      " roots now).\nThe control plane pushes it to every proxy within seconds. "
                      "When every proxy has it (trellis_proxy_trust_bundle_roots == ",
                      roots.size(), "), run: trellisctl ca rotate activate --dir ", options.dir,
                      "\n");
}

absl::StatusOr<std::string> ActivateRotation(const RotationOptions& options) {
  const State state = ReadState(options.dir);
  if (state.step != "prepared") {
    return absl::FailedPreconditionError(absl::StrCat(
        "nothing to activate (step: ", state.step, "); run `trellisctl ca rotate prepare` first"));
  }
  absl::StatusOr<CaFiles> current = LoadCaFiles(options.dir, options.now);
  if (!current.ok()) return current.status();
  const std::string next = JoinPath(options.dir, kNextDir);
  absl::StatusOr<std::vector<identity::Certificate>> new_root =
      identity::LoadPemChainFile(JoinPath(next, kRootCertFile));
  if (!new_root.ok()) return new_root.status();
  if (!current->roots.Contains(new_root->front())) {
    return absl::FailedPreconditionError(
        "the new root is not in roots.crt any more; run `trellisctl ca rotate prepare` again");
  }
  // Keep the old signing CA (and root key) for the record, then switch. The key goes first: a
  // reload in between sees a mismatched pair, refuses it and keeps signing with the old CA.
  const std::string previous = JoinPath(options.dir, kPreviousDir);
  if (absl::Status s = MakeDir(previous); !s.ok()) return s;
  for (auto [name, mode] : std::vector<std::pair<const char*, int>>{
           {kCaCertFile, 0644}, {kCaKeyFile, 0600}, {kChainFile, 0644}, {kRootKeyFile, 0600}}) {
    const std::string from = JoinPath(options.dir, name);
    if (!Exists(from)) continue;
    if (absl::Status s = CopyFile(from, JoinPath(previous, name), mode); !s.ok()) return s;
  }
  for (auto [name, mode] :
       std::vector<std::pair<const char*, int>>{{kCaKeyFile, 0600}, {kCaCertFile, 0644}}) {
    if (absl::Status s = CopyFile(JoinPath(next, name), JoinPath(options.dir, name), mode);
        !s.ok()) {
      return s;
    }
  }
  unlink(JoinPath(options.dir, kChainFile).c_str());  // the new intermediate sits under its root
  if (absl::Status s = CopyFile(JoinPath(next, kRootKeyFile), JoinPath(options.dir, kRootKeyFile),
                                0600);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<CaFiles> activated = LoadCaFiles(options.dir, options.now);
  if (!activated.ok()) {
    return absl::InternalError(absl::StrCat("the activated CA does not load (",
                                            activated.status().message(),
                                            "); the previous CA is in ", previous));
  }
  for (const char* name : {kRootKeyFile, kRootCertFile, kCaKeyFile, kCaCertFile}) {
    unlink(JoinPath(next, name).c_str());
  }
  rmdir(next.c_str());
  if (absl::Status s = WriteState(options.dir, {"activated", options.now}); !s.ok()) return s;
  return absl::StrCat(
      "The control plane now signs with ", Describe(activated->cert),
      " and tells proxies to renew soon.\nOld leaves stay valid until they expire: after ",
      absl::FormatTime(options.now + options.max_leaf_ttl),
      " run: trellisctl ca rotate retire --dir ", options.dir, "\nroot.key now holds the NEW ",
      "root's key; move it (and previous/root.key) to offline storage.\n");
}

absl::StatusOr<std::string> RetireOldRoots(const RotationOptions& options) {
  const State state = ReadState(options.dir);
  if (state.step != "activated") {
    return absl::FailedPreconditionError(absl::StrCat(
        "nothing to retire (step: ", state.step, "); run prepare and activate first"));
  }
  const absl::Time earliest = state.activated_at + options.max_leaf_ttl;
  if (options.now < earliest && !options.force) {
    return absl::FailedPreconditionError(absl::StrCat(
        "leaves signed by the old CA may be valid until ", absl::FormatTime(earliest),
        " (activation + max TTL ", absl::FormatDuration(options.max_leaf_ttl),
        "); retiring now would break them. Wait, or pass --force if you know they are gone"));
  }
  absl::StatusOr<CaFiles> ca = LoadCaFiles(options.dir, options.now);
  if (!ca.ok()) return ca.status();
  std::vector<identity::Certificate> kept;
  std::vector<std::string> retired;
  for (const identity::Certificate& root : ca->roots.roots()) {
    if (ChainsTo(ca->cert, ca->chain, root, options.now)) {
      kept.push_back(root);
    } else {
      retired.push_back(Describe(root));
    }
  }
  if (kept.empty()) {
    return absl::FailedPreconditionError(
        "the signing CA chains to none of the roots; refusing to empty the trust bundle");
  }
  if (absl::Status s = WriteFileAtomically(JoinPath(options.dir, kRootsFile),
                                           identity::ToPemChain(kept), 0644, true);
      !s.ok()) {
    return s;
  }
  unlink(JoinPath(options.dir, kStateFile).c_str());
  std::string summary = absl::StrCat("Retired ", retired.size(), " root(s):\n");
  for (const std::string& r : retired) absl::StrAppend(&summary, "  ", r, "\n");
  absl::StrAppend(&summary, "Trust bundle now: ", kept.size(), " root(s). Rotation complete.\n");
  return summary;
}

}  // namespace trellis::control_plane::ca
