#pragma once

// The join-token authenticator: workloads outside Kubernetes (VMs, IoT devices) present a token
// that an operator created with `trellisctl join-token create` (CreateJoinToken); the control
// plane finds its hashed entry in the tokens file (format: join_token_store.h) and issues the
// SPIFFE ID bound to it.
//
// Single-use tokens: a token is consumed when Authenticate succeeds, before the certificate is
// signed, and the consumption is written (atomically, mode 0600) to <tokens file>.used before
// Authenticate returns, so it survives a restart. If signing then fails (a bad CSR, a CA error),
// the token is consumed anyway and the operator must create a new one. That is deliberate: the
// other order (consume only after a successful signing) leaves a window in which two concurrent
// requests, or a request racing a crash, could both be issued a certificate for one single-use
// token; a lost token costs an operator a minute, a reused one breaks the promise "single use".
// If the state file cannot be written, the token is not accepted (UNAVAILABLE; it stays unused).
//
// A consumed token is identified by its hash (the name is recorded alongside, for people): a new
// token created later under a re-used name is a different token and is not "already used".
// Records are never pruned, so restoring an old tokens file does not revive consumed tokens.
//
// The state file is local to one control-plane process: with several replicas, each would accept
// a single-use token once. Point join-token workloads at one replica (or use multi-use tokens with
// a short expiry) until the state lives in a shared store.
//
// The tokens file is re-read when its size, mtime, inode or mode changes (checked at most once per
// `reload_interval`), so tokens can be added or removed live. A file that fails to load (broken
// JSON, a bad entry, mode too open, deleted) leaves the last good set in use; Reload() and
// last_reload_status() report the error. To revoke every token, write an empty "tokens" array.

#include <sys/stat.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "control-plane/auth/authenticator.h"
#include "control-plane/auth/join_token_store.h"

namespace trellis::control_plane {

struct JoinTokenAuthenticatorOptions {
  // The tokens file (join_token_store.h). Must exist and be mode 0600 or stricter.
  std::string tokens_file;
  // The current time, for expiry, the reload interval and the state file's timestamps; absl::Now
  // when empty.
  std::function<absl::Time()> clock;
  // How often Authenticate checks the tokens file for changes.
  absl::Duration reload_interval = absl::Seconds(1);
  // Called (from the thread that noticed) after every reload attempt of a changed file: OK with a
  // new token set, or the error while the last good set stays in use. May be empty.
  std::function<void(const absl::Status&)> on_reload;
};

// Thread-safe.
class JoinTokenAuthenticator : public Authenticator {
 public:
  // Reads the tokens file and the state file of consumed tokens. InvalidArgument for bad options;
  // otherwise the error of the first read: the tokens file missing (NotFound), too open or
  // unparsable, or the state file unparsable (FailedPrecondition).
  static absl::StatusOr<std::unique_ptr<JoinTokenAuthenticator>> Create(
      JoinTokenAuthenticatorOptions options);

  // Returns the SPIFFE ID bound to the token, with the token's name as detail. UNAUTHENTICATED,
  // never quoting the token, for: a credential not of the join-token form; an unknown token
  // ("unknown join token"); an expired one (naming the token and its expiry); a single-use token
  // already used ("join token NAME was already used"). UNAVAILABLE if a single-use token cannot
  // be recorded as used. The lookup compares the hash with every entry in constant time.
  absl::StatusOr<AuthenticatedIdentity> Authenticate(absl::string_view credential) override;

  absl::string_view name() const override { return "join_token"; }

  // Checks the tokens file now, whatever the interval, and reloads it if it changed. Returns OK if
  // the set in use is the file's current content, else the error of loading it (also when the
  // broken file has not changed since the last attempt).
  absl::Status Reload();

  // The result of the last reload attempt (as Reload() would return without re-checking).
  absl::Status last_reload_status() const;

  // How many tokens the set in use has.
  size_t token_count() const;

 private:
  // What identifies one version of the tokens file. The mode and ctime are part of it so that a
  // `chmod 600` fixing a refused file is noticed without a content change.
  struct FileStamp {
    bool exists = false;
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = 0;
    mode_t mode = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    bool operator==(const FileStamp& o) const {
      return exists == o.exists && device == o.device && inode == o.inode && size == o.size &&
             mode == o.mode && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
    }
  };
  using TokenSet = std::vector<JoinTokenEntry>;

  JoinTokenAuthenticator(JoinTokenAuthenticatorOptions options, std::vector<JoinTokenUse> uses);

  static FileStamp StampOf(const struct stat& st);
  absl::Time Now() const;
  void MaybeReload();
  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);
  std::shared_ptr<const TokenSet> tokens() const;
  // Records a single-use token as consumed, in memory and in the state file. UNAUTHENTICATED if it
  // already was; UNAVAILABLE (and not consumed) if the state file cannot be written.
  absl::Status Consume(const JoinTokenEntry& entry);

  const JoinTokenAuthenticatorOptions options_;
  const std::string used_path_;

  // Held while checking and reading the tokens file.
  absl::Mutex reload_mu_;
  FileStamp stamp_ ABSL_GUARDED_BY(reload_mu_);

  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenSet> tokens_ ABSL_GUARDED_BY(mu_);
  absl::Status last_reload_status_ ABSL_GUARDED_BY(mu_);
  absl::Time next_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  // Held while consuming (including the state file write), so consumption is one at a time.
  absl::Mutex used_mu_;
  std::vector<JoinTokenUse> uses_ ABSL_GUARDED_BY(used_mu_);
  absl::flat_hash_set<std::string> used_hashes_ ABSL_GUARDED_BY(used_mu_);  // raw hash bytes
};

}  // namespace trellis::control_plane
