#include "proxy/identity/file_credential_source.h"

#include <errno.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/handles.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "common/log/json_log.h"
#include "common/tls/deny_list.h"
#include "common/tls/peer_verifier.h"

namespace trellis::proxy {
namespace {

constexpr uint32_t kWatchMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                                IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB | IN_ONLYDIR;

// A failed reload: which file is to blame ("" when it is the set as a whole) and why.
struct LoadFailure {
  std::string file;
  absl::Status status;
};

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

// Monotonic time for the watcher's timers (the Options clock is for certificate validity only).
absl::Duration Mono() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

const char* TriggerName(int trigger) {
  static const char* const kNames[] = {"initial", "change", "recheck", "poll"};
  return kNames[trigger];
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The bytes of one credential set. The key's bytes are wiped when the set is destroyed.
struct FileSet {
  std::string cert;
  std::string key;
  std::string bundle;
  std::string deny_list;

  FileSet() = default;
  FileSet(const FileSet&) = delete;
  FileSet& operator=(const FileSet&) = delete;
  ~FileSet() { OPENSSL_cleanse(key.data(), key.size()); }

  // SHA-256 over the length-prefixed contents: equal digests mean byte-identical sets.
  std::string Digest() const {
    crypto::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
    if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return "";
    for (const std::string* part : {&cert, &key, &bundle, &deny_list}) {
      const uint64_t size = part->size();
      EVP_DigestUpdate(ctx.get(), &size, sizeof(size));
      EVP_DigestUpdate(ctx.get(), part->data(), part->size());
    }
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), out, &len) != 1) return "";
    return std::string(reinterpret_cast<const char*>(out), len);
  }
};

absl::Status Prefixed(const std::string& file, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("\"", file, "\": ", status.message()));
}

// Parses `files` and checks them as one set; see the header for the list of checks.
absl::StatusOr<Credentials> Validate(const FileCredentialSource::Options& options,
                                     const FileSet& files, absl::Time now, LoadFailure* failure) {
  auto fail = [&](const std::string& file, absl::Status status) {
    failure->file = file;
    failure->status = file.empty() ? status : Prefixed(file, status);
    return failure->status;
  };
  absl::StatusOr<std::vector<identity::Certificate>> chain = identity::ParsePemChain(files.cert);
  if (!chain.ok()) return fail(options.cert_file, chain.status());
  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::FromPem(files.key);
  if (!key.ok()) return fail(options.key_file, key.status());
  absl::StatusOr<identity::TrustBundle> bundle = identity::TrustBundle::FromPem(files.bundle);
  if (!bundle.ok()) return fail(options.bundle_file, bundle.status());
  tls::DenyList deny_list;
  if (!options.deny_list_file.empty()) {
    absl::StatusOr<tls::DenyList> parsed = tls::DenyList::Parse(files.deny_list);
    if (!parsed.ok()) return fail(options.deny_list_file, parsed.status());
    deny_list = *std::move(parsed);
  }
  Credentials creds{*std::move(chain),
                    std::make_shared<const identity::PrivateKey>(*std::move(key)),
                    *std::move(bundle), std::move(deny_list)};

  const identity::Certificate& leaf = creds.chain.front();
  if (!identity::KeyMatchesCertificate(*creds.key, leaf)) {
    return fail(
        options.key_file,
        absl::FailedPreconditionError(absl::StrCat(
            "the key does not match the leaf certificate in \"", options.cert_file, "\" (serial ",
            leaf.serial_hex(), "); the set is incomplete or mixed (new certificate, old key?)")));
  }
  absl::StatusOr<identity::SpiffeId> id = leaf.GetSpiffeId();
  if (!id.ok()) {
    return fail(options.cert_file,
                absl::InvalidArgumentError(absl::StrCat(
                    "the leaf certificate is not an X.509-SVID: ", id.status().message())));
  }
  if (now >= leaf.not_after()) {
    return fail(options.cert_file, absl::FailedPreconditionError(absl::StrCat(
                                       "the leaf certificate (serial ", leaf.serial_hex(),
                                       ") expired at ", Rfc3339(leaf.not_after()))));
  }
  if (now < leaf.not_before()) {
    return fail(options.cert_file,
                absl::FailedPreconditionError(absl::StrCat(
                    "the leaf certificate (serial ", leaf.serial_hex(), ") is not valid until ",
                    Rfc3339(leaf.not_before()), "; is this machine's clock right?")));
  }

  // The chain must verify against the bundle for both uses of the leaf. Our own deny-list is
  // not applied to ourselves: it governs peers.
  absl::StatusOr<std::unique_ptr<tls::PeerVerifier>> verifier =
      tls::PeerVerifier::Create(creds.bundle, tls::DenyList());
  if (!verifier.ok()) return fail(options.bundle_file, verifier.status());
  std::unique_ptr<STACK_OF(X509), crypto::X509StackDeleter> intermediates(sk_X509_new_null());
  for (size_t i = 1; i < creds.chain.size(); ++i) {
    X509_up_ref(creds.chain[i].get());
    sk_X509_push(intermediates.get(), creds.chain[i].get());
  }
  absl::StatusOr<identity::SpiffeIdPattern> any = identity::SpiffeIdPattern::Parse("*");
  if (!any.ok()) return fail("", any.status());
  for (tls::PeerRole role : {tls::PeerRole::kServer, tls::PeerRole::kClient}) {
    tls::PeerVerification result =
        (*verifier)->Verify(leaf.get(), intermediates.get(), role, now, {*any});
    if (!result.ok()) {
      return fail(options.cert_file, absl::FailedPreconditionError(absl::StrCat(
                                         "the chain does not verify against the bundle in \"",
                                         options.bundle_file, "\": ", result.detail)));
    }
  }
  return creds;
}

}  // namespace

// === impl FileCredentialSource ===

FileCredentialSource::ScopedFd::~ScopedFd() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::unique_ptr<FileCredentialSource>> FileCredentialSource::Create(
    Options options, ContextStore* store, ProxyStats* stats) {
  if (store == nullptr || stats == nullptr) {
    return absl::InvalidArgumentError("FileCredentialSource needs a ContextStore and ProxyStats");
  }
  const std::pair<const char*, const std::string*> required[] = {
      {"cert_file", &options.cert_file},
      {"key_file", &options.key_file},
      {"bundle_file", &options.bundle_file}};
  for (const auto& [flag, value] : required) {
    if (value->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("file credentials need ", flag, " (a PEM file path)"));
    }
  }
  for (absl::Duration d : {options.debounce, options.recheck_interval, options.poll_interval}) {
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          "debounce, recheck_interval and poll_interval must be positive");
    }
  }
  ScopedFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake.get() < 0) {
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  ScopedFd inotify(options.poll_only ? -1 : inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!options.poll_only && inotify.get() < 0) {
    log::Warn("inotify unavailable; polling the credential files instead",
              {{"error", std::strerror(errno)},
               {"poll_interval_ms", absl::ToInt64Milliseconds(options.poll_interval)}});
  }
  return std::unique_ptr<FileCredentialSource>(new FileCredentialSource(
      std::move(options), store, stats, std::move(inotify), std::move(wake)));
}

FileCredentialSource::FileCredentialSource(Options options, ContextStore* store, ProxyStats* stats,
                                           ScopedFd inotify_fd, ScopedFd wake_fd)
    : options_(std::move(options)),
      store_(store),
      stats_(stats),
      inotify_fd_(std::move(inotify_fd)),
      wake_fd_(std::move(wake_fd)) {}

FileCredentialSource::~FileCredentialSource() { Stop(); }

std::vector<std::string> FileCredentialSource::Files() const {
  std::vector<std::string> files = {options_.cert_file, options_.key_file, options_.bundle_file};
  if (!options_.deny_list_file.empty()) files.push_back(options_.deny_list_file);
  return files;
}

absl::Status FileCredentialSource::LoadNow() { return Reload(Trigger::kInitial); }

std::string FileCredentialSource::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

absl::Status FileCredentialSource::Reload(Trigger trigger) {
  absl::MutexLock lock(&mu_);
  LoadFailure failure;
  FileSet files;
  const std::vector<std::pair<const std::string*, std::string*>> reads = {
      {&options_.cert_file, &files.cert},
      {&options_.key_file, &files.key},
      {&options_.bundle_file, &files.bundle},
      {&options_.deny_list_file, &files.deny_list}};
  for (const auto& [path, out] : reads) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> bytes = identity::ReadFileToString(*path);
    if (!bytes.ok()) {
      failure = {*path, bytes.status()};
      break;
    }
    *out = *std::move(bytes);
  }

  std::string digest;
  if (failure.status.ok()) {
    digest = files.Digest();
    if (!digest.empty() && digest == published_digest_) {
      last_error_.clear();
      return absl::OkStatus();
    }
    absl::StatusOr<Credentials> creds = Validate(options_, files, Now(), &failure);
    if (creds.ok()) {
      const std::optional<Credentials> previous = store_->credentials();
      const identity::Certificate leaf = creds->chain.front();
      const std::string spiffe_id = leaf.GetSpiffeId()->ToString();
      const size_t roots = creds->bundle.roots().size();
      const size_t denied = creds->deny_list.size();
      absl::Status published = store_->Update(*std::move(creds));
      if (published.ok()) {
        published_digest_ = digest;
        last_error_.clear();
        stats_->credential_reloads_ok.fetch_add(1);
        stats_->certificate_not_after_seconds.store(absl::ToUnixSeconds(leaf.not_after()));
        stats_->trust_bundle_roots.store(static_cast<int64_t>(roots));
        const bool rotated =
            previous.has_value() && previous->chain.front().serial_hex() != leaf.serial_hex();
        if (rotated) stats_->rotations.fetch_add(1);
        log::Info("credentials loaded from files",
                  {{"trigger", TriggerName(static_cast<int>(trigger))},
                   {"serial", leaf.serial_hex()},
                   {"spiffe_id", spiffe_id},
                   {"not_before", Rfc3339(leaf.not_before())},
                   {"not_after", Rfc3339(leaf.not_after())},
                   {"bundle_roots", roots},
                   {"deny_list_entries", denied},
                   {"rotated", rotated},
                   {"cert_file", options_.cert_file}});
        return absl::OkStatus();
      }
      failure = {"", published};
    }
  }

  // A re-check that fails exactly as the attempt before it adds nothing for the operator.
  const std::string message(failure.status.message());
  if (trigger == Trigger::kRecheck && message == last_error_) return failure.status;
  last_error_ = message;
  stats_->credential_reloads_error.fetch_add(1);
  nlohmann::json fields = {{"trigger", TriggerName(static_cast<int>(trigger))},
                           {"file", failure.file},
                           {"reason", message}};
  if (std::shared_ptr<const tls::TlsContext> kept = store_->server_context()) {
    fields["kept_serial"] = kept->chain().front().serial_hex();
  }
  log::Error("credential files not loaded; keeping the current certificate", fields);
  return failure.status;
}

absl::Status FileCredentialSource::Start() {
  if (thread_.joinable()) return absl::FailedPreconditionError("already started");
  // Watch before returning, so that any change made after Start() is seen.
  const bool watches_ok = !polling() && RefreshWatches();
  thread_ = std::thread([this, watches_ok] { Run(watches_ok); });
  return absl::OkStatus();
}

void FileCredentialSource::Stop() {
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  while (write(wake_fd_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  thread_.join();
  uint64_t drained = 0;
  while (read(wake_fd_.get(), &drained, sizeof(drained)) < 0 && errno == EINTR) {
  }
}

bool FileCredentialSource::RefreshWatches() {
  if (inotify_fd_.get() < 0) return false;
  // Directory -> names in it that matter: the configured paths and, for symlinks, their targets.
  std::vector<std::pair<std::string, std::string>> wanted;
  for (const std::string& file : Files()) {
    wanted.emplace_back(Dirname(file), Basename(file));
    char resolved[PATH_MAX];
    if (realpath(file.c_str(), resolved) != nullptr) {
      wanted.emplace_back(Dirname(resolved), Basename(resolved));
    }
  }
  bool all = true;
  std::vector<Watch> next;
  for (const auto& [dir, name] : wanted) {
    const int wd = inotify_add_watch(inotify_fd_.get(), dir.c_str(), kWatchMask);
    if (wd < 0) {
      // Typically the directory does not exist yet; polling covers it until it does.
      all = false;
      continue;
    }
    auto it = std::find_if(next.begin(), next.end(), [&](const Watch& w) { return w.wd == wd; });
    if (it == next.end()) {
      next.push_back(Watch{wd, dir, {name}});
      const bool known =
          std::any_of(watches_.begin(), watches_.end(), [&](const Watch& w) { return w.wd == wd; });
      if (!known) log::Debug("watching directory", {{"dir", dir}});
    } else if (std::find(it->names.begin(), it->names.end(), name) == it->names.end()) {
      it->names.push_back(name);
    }
  }
  for (const Watch& old : watches_) {
    const bool kept =
        std::any_of(next.begin(), next.end(), [&](const Watch& w) { return w.wd == old.wd; });
    if (!kept) inotify_rm_watch(inotify_fd_.get(), old.wd);
  }
  watches_ = std::move(next);
  return all;
}

bool FileCredentialSource::DrainEvents() {
  bool relevant = false;
  alignas(struct inotify_event) char buf[8192];
  while (true) {
    const ssize_t n = read(inotify_fd_.get(), buf, sizeof(buf));
    if (n <= 0) break;  // EAGAIN: nothing more for now
    for (ssize_t off = 0; off < n;) {
      const auto* event = reinterpret_cast<const struct inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(struct inotify_event) + event->len);
      if (event->mask & IN_Q_OVERFLOW) {
        relevant = true;
        continue;
      }
      auto watch = std::find_if(watches_.begin(), watches_.end(),
                                [&](const Watch& w) { return w.wd == event->wd; });
      if (watch == watches_.end()) continue;
      if (event->mask & IN_IGNORED) {
        // The kernel dropped the watch (its directory is gone, e.g. an old ..2026_xx).
        watches_.erase(watch);
        relevant = true;
        continue;
      }
      if (event->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        relevant = true;
        continue;
      }
      const std::string name = event->len > 0 ? std::string(event->name) : std::string();
      // Names starting with ".." are a Kubernetes atomic writer's ..data and ..<timestamp>.
      if (absl::StartsWith(name, "..") ||
          std::find(watch->names.begin(), watch->names.end(), name) != watch->names.end()) {
        relevant = true;
      }
    }
  }
  return relevant;
}

std::vector<FileCredentialSource::FileStamp> FileCredentialSource::StampFiles() const {
  std::vector<FileStamp> stamps;
  for (const std::string& file : Files()) {
    FileStamp stamp;
    struct stat st;
    if (stat(file.c_str(), &st) == 0) {
      stamp.exists = true;
      stamp.dev = st.st_dev;
      stamp.ino = st.st_ino;
      stamp.size = st.st_size;
      stamp.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
      stamp.ctime_ns = int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec;
    }
    stamps.push_back(stamp);
  }
  return stamps;
}

void FileCredentialSource::Run(bool watches_ok) {
  const bool use_inotify = !polling();
  // Files may have changed between LoadNow() and the watches being set: look once at the start
  // (a no-op when nothing changed). The first poll does the same in polling mode.
  std::optional<absl::Duration> reload_at = Mono();
  std::optional<absl::Duration> recheck_at;
  absl::Duration recheck_until;
  absl::Duration poll_at = Mono() + options_.poll_interval;
  std::vector<FileStamp> stamps;  // empty: the first poll always looks

  auto reload = [&](Trigger trigger) {
    const absl::Status status = Reload(trigger);
    const absl::Duration now = Mono();
    if (status.ok()) {
      recheck_at.reset();
      return;
    }
    if (trigger != Trigger::kRecheck) recheck_until = now + options_.recheck_window;
    if (now + options_.recheck_interval <= recheck_until) {
      recheck_at = now + options_.recheck_interval;
    } else {
      recheck_at.reset();
    }
  };

  while (true) {
    const bool poll_files = !watches_ok;
    std::optional<absl::Duration> next;
    for (std::optional<absl::Duration> t :
         {reload_at, recheck_at,
          poll_files ? std::optional<absl::Duration>(poll_at) : std::optional<absl::Duration>()}) {
      if (t.has_value() && (!next.has_value() || *t < *next)) next = t;
    }
    int timeout_ms = -1;
    if (next.has_value()) {
      timeout_ms = static_cast<int>(std::max<int64_t>(
          0, absl::ToInt64Milliseconds(absl::Ceil(*next - Mono(), absl::Milliseconds(1)))));
    }
    struct pollfd fds[2] = {{wake_fd_.get(), POLLIN, 0},
                            {use_inotify ? inotify_fd_.get() : -1, POLLIN, 0}};
    if (poll(fds, 2, timeout_ms) < 0 && errno != EINTR) {
      log::Error("credential file watcher: poll failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[0].revents != 0) return;  // Stop()
    if (use_inotify && (fds[1].revents & POLLIN) && DrainEvents()) {
      reload_at = Mono() + options_.debounce;
    }
    const absl::Duration now = Mono();
    if (reload_at.has_value() && now >= *reload_at) {
      reload_at.reset();
      watches_ok = use_inotify && RefreshWatches();
      reload(Trigger::kEvent);
    }
    if (recheck_at.has_value() && now >= *recheck_at) {
      recheck_at.reset();
      reload(Trigger::kRecheck);
    }
    if (poll_files && now >= poll_at) {
      poll_at = now + options_.poll_interval;
      std::vector<FileStamp> current = StampFiles();
      if (current != stamps) {
        stamps = std::move(current);
        reload(Trigger::kPoll);
      }
      // A directory that was missing may exist now: go back to events when it does.
      if (use_inotify) watches_ok = RefreshWatches();
    }
  }
}

}  // namespace trellis::proxy
