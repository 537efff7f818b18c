#pragma once

// File mode: the proxy's credentials come from files that something else writes (cert-manager's
// csi-driver, a Vault agent template, a Kubernetes Secret volume, an operator's script), and are
// reloaded whenever those files change.
//
//   FileCredentialSource::Options options;
//   options.cert_file = "/etc/trellis/tls.crt";
//   options.key_file = "/etc/trellis/tls.key";
//   options.bundle_file = "/etc/trellis/ca.crt";
//   auto source = FileCredentialSource::Create(std::move(options), &store, &stats);
//   if (!source.ok()) ...;
//   if (absl::Status s = (*source)->LoadNow(); !s.ok()) ...;   // first certificate, synchronously
//   (*source)->Start();                                         // then follow changes
//   ...
//   (*source)->Stop();
//
// How changes are seen. The source watches the DIRECTORIES holding the files (and, for a file
// that is a symlink, the directory of its target), never the files themselves: atomic writers
// replace a file by renaming a new one over it, and Kubernetes swaps a whole `..data` symlink,
// both of which a watch on the old inode would miss. Events (IN_CLOSE_WRITE, IN_MOVED_TO,
// IN_CREATE, IN_DELETE, IN_DELETE_SELF/IN_MOVE_SELF of a watched target directory, ...) are
// debounced: the reload runs once no event has arrived for `debounce`, so a writer that puts the
// certificate and the key in place one after the other is read once, as a pair. The watched set
// is recomputed before each reload, since a swap moves the symlink targets to a new directory.
// If inotify is unavailable (inotify_init fails, or a directory cannot be watched) the source
// polls the files' metadata every `poll_interval` instead.
//
// What is published. A reload reads every file, then checks the set as a whole: the chain parses
// (leaf first), the key parses and matches the leaf, the leaf is an X.509-SVID, it is valid now
// (not expired, not yet valid), and the chain verifies against the bundle. Only then does it call
// ContextStore::Update. A set that fails any check (a half-written file, a new certificate with
// the old key, an expired or foreign certificate, a deleted file) is not published: the store
// keeps the contexts it has, the error is logged with the file and the reason, and
// credential_reloads_total{result="error"} goes up. The source then retries on the next event and
// also re-checks every `recheck_interval` for at most `recheck_window`, in case the repair came
// without an event it could see. Such a re-check that fails the same way as the attempt before it
// is neither logged nor counted again. A reload whose files are byte-for-byte those last
// published is a no-op (it neither publishes nor counts).
//
// Stats (ProxyStats): credential_reloads_ok/_error, certificate_not_after_seconds (the leaf's
// notAfter), trust_bundle_roots, and rotations (incremented when a publish changes the leaf's
// serial; the first load is not a rotation). Logs are JSON lines (common/log) with the serial,
// SPIFFE ID and notAfter on success; no log line ever holds key bytes.
//
// Threading: LoadNow() may be called from any thread, before or after Start(); reloads are
// serialised. Start() runs one watcher thread until Stop() (or destruction), which joins it.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proxy/identity/context_store.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

class FileCredentialSource {
 public:
  struct Options {
    std::string cert_file;       // PEM chain, leaf first (intermediates after; root optional)
    std::string key_file;        // PEM private key of the leaf (PKCS#8 or SEC1)
    std::string bundle_file;     // PEM trust bundle: one or more roots
    std::string deny_list_file;  // optional: common/tls/deny_list.h format; "" means none
    // A reload runs once the watched directories have been quiet for this long.
    absl::Duration debounce = absl::Milliseconds(100);
    // After a failed reload, re-check this often, for at most `recheck_window`.
    absl::Duration recheck_interval = absl::Seconds(1);
    absl::Duration recheck_window = absl::Minutes(1);
    // Metadata polling period when inotify cannot be used.
    absl::Duration poll_interval = absl::Seconds(1);
    // Poll even where inotify works: for file systems that never deliver events (NFS, some FUSE
    // mounts).
    bool poll_only = false;
    // The clock for validity checks; absl::Now when empty.
    std::function<absl::Time()> clock;
  };

  // Checks `options` (the three required paths are set, durations are positive) and prepares the
  // watcher. Does not read the files: call LoadNow(). `store` and `stats` must be non-null and
  // outlive the source. InvalidArgument on bad options; Internal if no wake-up fd can be made.
  static absl::StatusOr<std::unique_ptr<FileCredentialSource>> Create(Options options,
                                                                      ContextStore* store,
                                                                      ProxyStats* stats);

  FileCredentialSource(const FileCredentialSource&) = delete;
  FileCredentialSource& operator=(const FileCredentialSource&) = delete;
  // Stops the watcher thread if it runs.
  ~FileCredentialSource();

  // Reads, validates and publishes the files now, on the calling thread. OK when the set was
  // published or was already the published one; otherwise the error (which names the file and
  // says what is wrong) and nothing changed. Counts and logs like every reload.
  absl::Status LoadNow();

  // Sets up the watches and starts the watcher thread; changes made after it returns are seen,
  // and the thread also looks once at the files at start, for changes since LoadNow().
  // FailedPrecondition if already started.
  absl::Status Start();

  // Stops and joins the watcher thread. Idempotent; the source can be started again.
  void Stop();

  // Why the last reload failed (file and reason), or "" when it succeeded. For /certs.
  std::string last_error() const;

  // True when the watcher is (or would be) polling rather than using inotify.
  bool polling() const { return inotify_fd_.get() < 0 || options_.poll_only; }

 private:
  // Owns one file descriptor; -1 when empty.
  class ScopedFd {
   public:
    explicit ScopedFd(int fd = -1) : fd_(fd) {}
    ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    ScopedFd& operator=(ScopedFd&&) = delete;
    ~ScopedFd();
    int get() const { return fd_; }

   private:
    int fd_;
  };
  // A directory under watch and the names in it that matter.
  struct Watch {
    int wd = -1;
    std::string dir;
    std::vector<std::string> names;
  };
  // What a file looked like at the last poll, to notice changes without reading it.
  struct FileStamp {
    bool exists = false;
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    bool operator==(const FileStamp& o) const {
      return exists == o.exists && dev == o.dev && ino == o.ino && size == o.size &&
             mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
    }
  };
  enum class Trigger { kInitial, kEvent, kRecheck, kPoll };

  FileCredentialSource(Options options, ContextStore* store, ProxyStats* stats, ScopedFd inotify_fd,
                       ScopedFd wake_fd);

  std::vector<std::string> Files() const;
  absl::Status Reload(Trigger trigger);
  // The watcher thread's loop; `watches_ok` says whether Start() could watch every directory.
  void Run(bool watches_ok);
  // Adds watches for every directory the files (and their symlink targets) live in and drops
  // watches no longer needed. Returns false if some directory could not be watched.
  bool RefreshWatches();
  // Reads pending inotify events; true if any concerns our files.
  bool DrainEvents();
  std::vector<FileStamp> StampFiles() const;
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  const Options options_;
  ContextStore* const store_;
  ProxyStats* const stats_;
  const ScopedFd inotify_fd_;  // -1 when inotify is unavailable
  const ScopedFd wake_fd_;     // eventfd that Stop() writes to wake the watcher

  std::vector<Watch> watches_;  // Start(), then the watcher thread only

  mutable absl::Mutex mu_;                             // serialises reloads
  std::string published_digest_ ABSL_GUARDED_BY(mu_);  // SHA-256 of the published files' bytes
  std::string last_error_ ABSL_GUARDED_BY(mu_);  // message of the last failed reload, "" after ok

  std::thread thread_;
};

}  // namespace trellis::proxy
