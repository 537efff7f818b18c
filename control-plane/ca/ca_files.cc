#include "control-plane/ca/ca_files.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/crypto/handles.h"
#include "common/crypto/openssl_error.h"
#include "common/identity/ca.h"

namespace trellis::control_plane::ca {
namespace {

// True if `gid` is this process's effective group or one of its supplementary groups.
bool InOwnGroups(gid_t gid) {
  if (gid == getegid()) return true;
  gid_t groups[256];
  const int n = getgroups(256, groups);
  for (int i = 0; i < n; ++i) {
    if (groups[i] == gid) return true;
  }
  return false;
}


std::string ErrnoText(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Reads the CA key file, refusing one that group or others could read. The key bytes never
// reach an error message.
absl::StatusOr<identity::PrivateKey> ReadKeyFile(const std::string& path) {
  ScopedFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    const std::string message =
        absl::StrCat("cannot open CA key file \"", path, "\": ", ErrnoText(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    return absl::InternalError(absl::StrCat("cannot stat \"", path, "\": ", ErrnoText(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("CA key file \"", path, "\" is not a regular file"));
  }
  const unsigned mode = st.st_mode & 07777;
  // One exception to owner-only: read-only for a group this process belongs to. That is what a
  // Kubernetes Secret mounted with defaultMode 0400 and a pod fsGroup looks like (0440, group =
  // the fsGroup), the only way a non-root control plane can read its key; nobody outside the pod
  // is in that group.
  const bool group_read_by_own_group = (mode & 077) == 040 && InOwnGroups(st.st_gid);
  if ((mode & 077) != 0 && !group_read_by_own_group) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CA key file \"%s\" has mode %04o, so group or others can read it; the CA private key "
        "must be readable by its owner only: run `chmod 600 %s` (for a Kubernetes Secret "
        "volume, set defaultMode: 0400)",
        path, mode, path));
  }
  std::string pem;
  char buffer[4096];
  while (true) {
    const ssize_t n = read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::DataLossError(
          absl::StrCat("cannot read CA key file \"", path, "\": ", ErrnoText(errno)));
    }
    if (n == 0) break;
    pem.append(buffer, static_cast<size_t>(n));
  }
  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::FromPem(pem);
  // Wipe the copy we read; the parsed key lives on inside OpenSSL.
  OPENSSL_cleanse(pem.data(), pem.size());
  OPENSSL_cleanse(buffer, sizeof(buffer));
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CA key file \"", path,
                     "\" does not hold a usable PEM private key: ", key.status().message()));
  }
  return key;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

}  // namespace

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

absl::Status ValidateCa(const CaFiles& ca, absl::Time now) {
  if (!ca.cert.is_ca()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the signing certificate (", kCaCertFile, ", subject \"", ca.cert.subject(),
                     "\") is not a CA: it lacks basicConstraints CA:TRUE; ", kCaCertFile,
                     " must hold the CA certificate that signs workload certificates, not a leaf"));
  }
  if (ca.key == nullptr) {
    return absl::InvalidArgumentError("the CA has no private key");
  }
  if (!identity::KeyMatchesCertificate(*ca.key, ca.cert)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CA key (", kCaKeyFile, ") does not match the signing certificate (",
                     kCaCertFile, ", subject \"", ca.cert.subject(),
                     "\"): its public key differs; install the key that belongs to ", kCaCertFile));
  }

  absl::StatusOr<crypto::UniquePtr<X509_STORE>> store = ca.roots.NewX509Store();
  if (!store.ok()) return store.status();
  crypto::X509Stack untrusted(sk_X509_new_null());
  if (untrusted == nullptr) return crypto::OpenSslInternalError("cannot allocate a stack");
  for (const identity::Certificate& cert : ca.chain) {
    crypto::UniquePtr<X509> ref = crypto::UpRef(cert.get());
    if (sk_X509_push(untrusted.get(), ref.get()) == 0) {
      return crypto::OpenSslInternalError("cannot build the chain");
    }
    ref.release();  // now owned by the stack
  }
  crypto::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), store->get(), ca.cert.get(), untrusted.get()) != 1) {
    return crypto::OpenSslInternalError("cannot set up chain verification");
  }
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), absl::ToTimeT(now));
  if (X509_verify_cert(ctx.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(ctx.get());
    crypto::ClearOpenSslErrors();
    return absl::FailedPreconditionError(absl::StrCat(
        "the signing certificate (", kCaCertFile, ", subject \"", ca.cert.subject(),
        "\") does not chain to any root in ", kRootsFile, " through the ", ca.chain.size(),
        " certificate(s) of ", kChainFile, ": ", X509_verify_cert_error_string(error),
        "; put the intermediates between it and the root in ", kChainFile, " and the root in ",
        kRootsFile));
  }
  // The signing CA verifies as a target, but the leaves it signs add one level: a CA above it
  // whose pathLenConstraint leaves no room for the signing CA would make every leaf invalid.
  STACK_OF(X509)* path = X509_STORE_CTX_get0_chain(ctx.get());
  for (int k = 1; path != nullptr && k < sk_X509_num(path); ++k) {
    X509* above = sk_X509_value(path, k);
    const long path_length = X509_get_pathlen(above);
    if (path_length >= 0 && path_length < k) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the signing certificate (", kCaCertFile, ", subject \"", ca.cert.subject(),
          "\") cannot sign valid leaves: the CA \"",
          identity::Certificate::FromX509(above).subject(), "\" above it has pathLenConstraint ",
          path_length, " but ", k, " CA certificate(s) would sit below it in a leaf's chain"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CaFiles> LoadCaFiles(const std::string& dir, absl::Time now) {
  const std::string cert_path = JoinPath(dir, kCaCertFile);
  const std::string key_path = JoinPath(dir, kCaKeyFile);
  const std::string chain_path = JoinPath(dir, kChainFile);
  const std::string roots_path = JoinPath(dir, kRootsFile);

  absl::StatusOr<std::vector<identity::Certificate>> certs = identity::LoadPemChainFile(cert_path);
  if (!certs.ok()) return certs.status();
  // Tools that put the chain into the certificate file (leaf-first) are accepted: the first
  // certificate signs, the rest are its chain.
  std::vector<identity::Certificate> chain(certs->begin() + 1, certs->end());

  absl::StatusOr<identity::PrivateKey> key = ReadKeyFile(key_path);
  if (!key.ok()) return key.status();

  struct stat st;
  if (stat(chain_path.c_str(), &st) == 0) {
    absl::StatusOr<std::string> text = identity::ReadFileToString(chain_path);
    if (!text.ok()) return text.status();
    if (!absl::StripAsciiWhitespace(*text).empty()) {
      absl::StatusOr<std::vector<identity::Certificate>> more = identity::ParsePemChain(*text);
      if (!more.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("\"", chain_path, "\": ", more.status().message()));
      }
      chain.insert(chain.end(), more->begin(), more->end());
    }
  } else if (errno != ENOENT) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot stat \"", chain_path, "\": ", ErrnoText(errno)));
  }

  absl::StatusOr<std::vector<identity::Certificate>> roots_list =
      identity::LoadPemChainFile(roots_path);
  if (!roots_list.ok()) return roots_list.status();
  absl::StatusOr<identity::TrustBundle> roots =
      identity::TrustBundle::Create(*std::move(roots_list));
  if (!roots.ok()) {
    return absl::Status(roots.status().code(),
                        absl::StrCat("\"", roots_path, "\": ", roots.status().message()));
  }

  CaFiles ca{certs->front(), std::make_shared<const identity::PrivateKey>(*std::move(key)),
             std::move(chain), *std::move(roots)};
  if (absl::Status s = ValidateCa(ca, now); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("CA in \"", dir, "\": ", s.message()));
  }
  return ca;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents, int mode,
                                 bool overwrite) {
  if (!overwrite && FileExists(path)) {
    return absl::AlreadyExistsError(absl::StrCat("\"", path, "\" already exists"));
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp = JoinPath(dir, absl::StrCat(".", base, ".tmp.XXXXXX"));
  // mkstemp creates the file with mode 0600, so key bytes are never readable by others.
  ScopedFd fd(mkstemp(tmp.data()));
  if (fd.get() < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create a temporary file in \"", dir, "\": ", ErrnoText(errno)));
  }
  auto fail = [&](absl::string_view what) {
    const int err = errno;
    unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot write \"", path, "\": ", what, ": ", ErrnoText(err)));
  };
  if (fchmod(fd.get(), static_cast<mode_t>(mode)) != 0) return fail("chmod");
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = write(fd.get(), contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd.get()) != 0) return fail("fsync");
  if (close(fd.release()) != 0) return fail("close");
  if (overwrite) {
    if (rename(tmp.c_str(), path.c_str()) != 0) return fail("rename");
  } else {
    // link() refuses to replace an existing file, so a concurrent writer cannot be clobbered.
    if (link(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      unlink(tmp.c_str());
      if (err == EEXIST) {
        return absl::AlreadyExistsError(absl::StrCat("\"", path, "\" already exists"));
      }
      return absl::InternalError(
          absl::StrCat("cannot write \"", path, "\": link: ", ErrnoText(err)));
    }
    unlink(tmp.c_str());
  }
  // Make the rename durable; best effort.
  ScopedFd dir_fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) fsync(dir_fd.get());
  return absl::OkStatus();
}

absl::Status WriteCaFiles(const std::string& dir, const CaFiles& ca, const WriteOptions& options) {
  if (absl::Status s = ValidateCa(ca, absl::Now()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("refusing to write an unusable CA: ", s.message()));
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("\"", dir, "\" is not a directory"));
  }
  if (!options.overwrite) {
    // chain.crt counts even when there is no chain to write: a stale one would be loaded.
    const std::vector<std::string> names = {kCaCertFile, kCaKeyFile, kChainFile, kRootsFile};
    std::vector<std::string> existing;
    for (const std::string& name : names) {
      if (FileExists(JoinPath(dir, name))) existing.push_back(JoinPath(dir, name));
    }
    if (!existing.empty()) {
      return absl::AlreadyExistsError(absl::StrCat("refusing to overwrite existing CA file(s): ",
                                                   absl::StrJoin(existing, ", ")));
    }
  }

  absl::StatusOr<std::string> key_pem = ca.key->ToPem();
  if (!key_pem.ok()) return key_pem.status();
  absl::Status status =
      WriteFileAtomically(JoinPath(dir, kCaKeyFile), *key_pem, 0600, options.overwrite);
  OPENSSL_cleanse(key_pem->data(), key_pem->size());
  if (!status.ok()) return status;
  if (status =
          WriteFileAtomically(JoinPath(dir, kCaCertFile), ca.cert.ToPem(), 0644, options.overwrite);
      !status.ok()) {
    return status;
  }
  const std::string chain_path = JoinPath(dir, kChainFile);
  if (!ca.chain.empty()) {
    status =
        WriteFileAtomically(chain_path, identity::ToPemChain(ca.chain), 0644, options.overwrite);
    if (!status.ok()) return status;
  } else if (options.overwrite && unlink(chain_path.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(
        absl::StrCat("cannot remove stale \"", chain_path, "\": ", ErrnoText(errno)));
  }
  return WriteFileAtomically(JoinPath(dir, kRootsFile), ca.roots.ToPem(), 0644, options.overwrite);
}

}  // namespace trellis::control_plane::ca
