#include "control-plane/auth/join_token_authenticator.h"

#include <openssl/crypto.h>
#include <sys/stat.h>

#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"

namespace trellis::control_plane {
namespace {

std::string Rfc3339Utc(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E*SZ", t, absl::UTCTimeZone());
}

int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::string HashKey(const JoinTokenHash& hash) {
  return std::string(reinterpret_cast<const char*>(hash.data()), hash.size());
}

}  // namespace

absl::StatusOr<std::unique_ptr<JoinTokenAuthenticator>> JoinTokenAuthenticator::Create(
    JoinTokenAuthenticatorOptions options) {
  if (options.tokens_file.empty()) {
    return absl::InvalidArgumentError(
        "join_token: no tokens file: create one with `trellisctl join-token create` and name it");
  }
  if (options.reload_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("join_token: the tokens file reload interval is negative");
  }
  const std::string used_path = JoinTokenUsedStatePath(options.tokens_file);
  absl::StatusOr<std::vector<JoinTokenUse>> uses = LoadJoinTokenUses(used_path);
  if (!uses.ok()) return uses.status();
  std::unique_ptr<JoinTokenAuthenticator> auth(
      new JoinTokenAuthenticator(std::move(options), *std::move(uses)));
  {
    absl::MutexLock lock(&auth->reload_mu_);
    if (absl::Status s = auth->ReloadLocked(); !s.ok()) return s;
  }
  absl::MutexLock lock(&auth->mu_);
  auth->next_check_ = auth->Now() + auth->options_.reload_interval;
  return auth;
}

JoinTokenAuthenticator::JoinTokenAuthenticator(JoinTokenAuthenticatorOptions options,
                                               std::vector<JoinTokenUse> uses)
    : options_(std::move(options)), used_path_(JoinTokenUsedStatePath(options_.tokens_file)) {
  absl::MutexLock lock(&used_mu_);
  uses_ = std::move(uses);
  for (const JoinTokenUse& u : uses_) used_hashes_.insert(HashKey(u.sha256));
}

absl::Time JoinTokenAuthenticator::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

JoinTokenAuthenticator::FileStamp JoinTokenAuthenticator::StampOf(const struct stat& st) {
  FileStamp stamp;
  stamp.exists = true;
  stamp.device = st.st_dev;
  stamp.inode = st.st_ino;
  stamp.size = st.st_size;
  stamp.mode = st.st_mode;
  stamp.mtime_ns = Nanos(st.st_mtim);
  stamp.ctime_ns = Nanos(st.st_ctim);
  return stamp;
}

absl::Status JoinTokenAuthenticator::ReloadLocked() {
  FileStamp stamp;
  struct stat st;
  if (stat(options_.tokens_file.c_str(), &st) == 0) {
    stamp = StampOf(st);
  }
  {
    absl::MutexLock lock(&mu_);
    // Unchanged (a broken file that has not changed is still broken).
    if (tokens_ != nullptr && stamp == stamp_) return last_reload_status_;
  }
  stamp_ = stamp;

  std::shared_ptr<const TokenSet> tokens;
  absl::StatusOr<std::string> text = ReadJoinTokenFile(options_.tokens_file, &st);
  absl::Status status = text.status();
  if (status.ok()) {
    // The stamp of what was actually read (the file may have been replaced since stat()).
    stamp_ = StampOf(st);
    absl::StatusOr<TokenSet> parsed = ParseJoinTokenFile(*text);
    if (parsed.ok()) {
      tokens = std::make_shared<const TokenSet>(*std::move(parsed));
    } else {
      status = absl::Status(
          parsed.status().code(),
          absl::StrCat("join-token file ", options_.tokens_file, ": ", parsed.status().message()));
    }
  }
  {
    absl::MutexLock lock(&mu_);
    last_reload_status_ = status;
    if (tokens != nullptr) tokens_ = std::move(tokens);
  }
  if (options_.on_reload) options_.on_reload(status);
  return status;
}

void JoinTokenAuthenticator::MaybeReload() {
  const absl::Time now = Now();
  {
    absl::MutexLock lock(&mu_);
    // The second test catches a clock that went backwards.
    if (now < next_check_ && now >= next_check_ - options_.reload_interval) return;
    next_check_ = now + options_.reload_interval;
  }
  if (!reload_mu_.TryLock()) return;  // another thread is reloading; use the current set
  ReloadLocked().IgnoreError();       // reported through on_reload and last_reload_status()
  reload_mu_.Unlock();
}

absl::Status JoinTokenAuthenticator::Reload() {
  absl::MutexLock lock(&reload_mu_);
  return ReloadLocked();
}

absl::Status JoinTokenAuthenticator::last_reload_status() const {
  absl::MutexLock lock(&mu_);
  return last_reload_status_;
}

std::shared_ptr<const JoinTokenAuthenticator::TokenSet> JoinTokenAuthenticator::tokens() const {
  absl::MutexLock lock(&mu_);
  return tokens_;
}

size_t JoinTokenAuthenticator::token_count() const { return tokens()->size(); }

absl::Status JoinTokenAuthenticator::Consume(const JoinTokenEntry& entry) {
  absl::MutexLock lock(&used_mu_);
  const std::string key = HashKey(entry.sha256);
  if (used_hashes_.contains(key)) {
    return absl::UnauthenticatedError(absl::StrCat("join token ", entry.name, " was already used"));
  }
  uses_.push_back(JoinTokenUse{entry.name, entry.sha256, Now()});
  if (absl::Status s = SaveJoinTokenUses(used_path_, uses_); !s.ok()) {
    uses_.pop_back();
    return absl::UnavailableError(absl::StrCat(
        "cannot record single-use join token ", entry.name,
        " as used, so it was not accepted (retry; fix the control plane's state file): ",
        s.message()));
  }
  used_hashes_.insert(key);
  return absl::OkStatus();
}

absl::StatusOr<AuthenticatedIdentity> JoinTokenAuthenticator::Authenticate(
    absl::string_view credential) {
  if (!IsJoinTokenFormat(credential)) {
    return absl::UnauthenticatedError(absl::StrCat(
        "not a join token: expected \"", kJoinTokenPrefix,
        "\" followed by 43 base64url characters, as printed by `trellisctl join-token create`"));
  }
  MaybeReload();
  const std::shared_ptr<const TokenSet> tokens = this->tokens();
  const JoinTokenHash hash = HashJoinToken(credential);

  // Compare with every entry, in constant time, without stopping at a match: the time taken
  // depends only on the number of entries, never on which (or whether one) matched.
  size_t found = 0;  // index + 1, or 0
  for (size_t i = 0; i < tokens->size(); ++i) {
    const int differs = CRYPTO_memcmp(hash.data(), (*tokens)[i].sha256.data(), hash.size());
    // mask is all ones when equal, zero otherwise.
    const size_t mask = static_cast<size_t>(0) - static_cast<size_t>(differs == 0);
    found = (found & ~mask) | ((i + 1) & mask);
  }
  if (found == 0) return absl::UnauthenticatedError("unknown join token");
  const JoinTokenEntry& entry = (*tokens)[found - 1];

  if (entry.expires.has_value() && Now() >= *entry.expires) {
    return absl::UnauthenticatedError(
        absl::StrCat("join token ", entry.name, " expired at ", Rfc3339Utc(*entry.expires),
                     "; create a new one with `trellisctl join-token create`"));
  }
  if (entry.single_use) {
    if (absl::Status s = Consume(entry); !s.ok()) return s;
  }
  return AuthenticatedIdentity{entry.spiffe_id, std::string(name()), entry.name};
}

}  // namespace trellis::control_plane
