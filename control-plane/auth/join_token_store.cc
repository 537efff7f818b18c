#include "control-plane/auth/join_token_store.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "control-plane/ca/ca_files.h"

namespace trellis::control_plane {
namespace {

using json = nlohmann::ordered_json;

constexpr absl::string_view kTimeFormat = "%Y-%m-%dT%H:%M:%E*SZ";

std::string Rfc3339Utc(absl::Time t) {
  return absl::FormatTime(kTimeFormat, t, absl::UTCTimeZone());
}

// Quotes operator-written text for a message: at most 64 bytes, escaped.
std::string Quote(absl::string_view text) {
  const bool cut = text.size() > 64;
  return absl::StrCat("\"", absl::CHexEscape(text.substr(0, 64)), cut ? "...\"" : "\"");
}

bool ParseRfc3339(const std::string& text, absl::Time* t) {
  std::string err;
  return absl::ParseTime(absl::RFC3339_full, text, t, &err);
}

bool ParseHash(const std::string& hex, JoinTokenHash* hash) {
  if (hex.size() != 2 * hash->size()) return false;
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  const std::string bytes = absl::HexStringToBytes(hex);
  if (bytes.size() != hash->size()) return false;
  std::memcpy(hash->data(), bytes.data(), hash->size());
  return true;
}

const std::string* StringMember(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || !it->is_string()) return nullptr;
  return &it->get_ref<const std::string&>();
}

// "tokens[3] (\"name\")" or "tokens[3]" when the entry has no usable name.
std::string EntryLabel(const char* array, size_t index, const json& entry) {
  std::string label = absl::StrCat(array, "[", index, "]");
  if (entry.is_object()) {
    if (const std::string* name = StringMember(entry, "name");
        name != nullptr && ValidateJoinTokenName(*name).ok()) {
      absl::StrAppend(&label, " (\"", *name, "\")");
    }
  }
  return label;
}

absl::StatusOr<JoinTokenEntry> ParseEntry(const json& e, const std::string& label) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", what));
  };
  if (!e.is_object()) return bad("is not a JSON object");
  for (auto it = e.begin(); it != e.end(); ++it) {
    const std::string& key = it.key();
    if (key != "name" && key != "sha256" && key != "spiffe_id" && key != "expires" &&
        key != "single_use" && key != "created") {
      return bad(absl::StrCat("unknown member ", Quote(key),
                              " (known: name, sha256, spiffe_id, expires, single_use, created)"));
    }
  }
  const std::string* name = StringMember(e, "name");
  if (name == nullptr) return bad("has no string \"name\"");
  if (absl::Status s = ValidateJoinTokenName(*name); !s.ok()) return bad(s.message());

  const std::string* hex = StringMember(e, "sha256");
  JoinTokenHash hash;
  if (hex == nullptr || !ParseHash(*hex, &hash)) {
    return bad(
        "\"sha256\" must be a string of 64 hex digits (the SHA-256 of the token; "
        "`printf %s \"$TOKEN\" | sha256sum`)");
  }

  const std::string* id_text = StringMember(e, "spiffe_id");
  if (id_text == nullptr) return bad("has no string \"spiffe_id\"");
  absl::StatusOr<identity::SpiffeId> id = identity::SpiffeId::Parse(*id_text);
  if (!id.ok()) return bad(absl::StrCat("\"spiffe_id\": ", id.status().message()));

  std::optional<absl::Time> expires;
  if (auto it = e.find("expires"); it != e.end() && !it->is_null()) {
    absl::Time t;
    if (!it->is_string() || !ParseRfc3339(it->get_ref<const std::string&>(), &t)) {
      return bad("\"expires\" must be an RFC 3339 timestamp such as \"2030-01-01T00:00:00Z\"");
    }
    expires = t;
  }
  if (auto it = e.find("created"); it != e.end() && !it->is_null()) {
    absl::Time t;
    if (!it->is_string() || !ParseRfc3339(it->get_ref<const std::string&>(), &t)) {
      return bad("\"created\" must be an RFC 3339 timestamp");
    }
  }
  auto single_use = e.find("single_use");
  if (single_use == e.end() || !single_use->is_boolean()) {
    return bad("\"single_use\" must be true or false");
  }
  return JoinTokenEntry{*name, hash, *std::move(id), expires, single_use->get<bool>()};
}

// The whole of a small file: at most kMaxJoinTokenFileSize bytes.
absl::StatusOr<std::string> ReadAll(int fd, const std::string& path, const char* what) {
  std::string content;
  char buf[16384];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read ", what, " ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > kMaxJoinTokenFileSize) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, " ", path, " is larger than ", kMaxJoinTokenFileSize, " bytes"));
    }
  }
  return content;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Serializes CreateJoinToken calls within this process (read, append, write).
absl::Mutex& CreateMutex() {
  static absl::Mutex* mu = new absl::Mutex();
  return *mu;
}

}  // namespace

bool IsJoinTokenFormat(absl::string_view text) {
  if (text.size() != kJoinTokenLength ||
      text.substr(0, kJoinTokenPrefix.size()) != kJoinTokenPrefix) {
    return false;
  }
  const absl::string_view encoded = text.substr(kJoinTokenPrefix.size());
  for (char c : encoded) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  }
  std::string raw;
  if (!absl::WebSafeBase64Unescape(encoded, &raw) || raw.size() != kJoinTokenRandomBytes) {
    return false;
  }
  // Canonical only (the unused low bits of the last character are zero).
  const bool canonical = absl::WebSafeBase64Escape(raw) == encoded;
  OPENSSL_cleanse(raw.data(), raw.size());
  return canonical;
}

JoinTokenHash HashJoinToken(absl::string_view token) {
  JoinTokenHash hash;
  SHA256(reinterpret_cast<const uint8_t*>(token.data()), token.size(), hash.data());
  return hash;
}

std::string JoinTokenHashHex(const JoinTokenHash& hash) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(hash.data()), hash.size()));
}

absl::Status ValidateJoinTokenName(absl::string_view name) {
  bool ok = !name.empty() && name.size() <= kMaxJoinTokenNameLength &&
            absl::ascii_isalnum(static_cast<unsigned char>(name[0]));
  for (char c : name) {
    ok = ok &&
         (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "join token name ", Quote(name), " is invalid: use 1 to ", kMaxJoinTokenNameLength,
      " letters, digits, '.', '_' or '-', starting with a letter or digit"));
}

absl::StatusOr<std::vector<JoinTokenEntry>> ParseJoinTokenFile(absl::string_view text) {
  const json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("not a JSON object with a \"tokens\" array");
  }
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() != "tokens") {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown top-level member ", Quote(it.key()), " (known: tokens)"));
    }
  }
  auto tokens = doc.find("tokens");
  if (tokens == doc.end() || !tokens->is_array()) {
    return absl::InvalidArgumentError("has no \"tokens\" array");
  }
  std::vector<JoinTokenEntry> entries;
  entries.reserve(tokens->size());
  absl::flat_hash_set<std::string> names;
  absl::flat_hash_set<std::string> hashes;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const json& e = (*tokens)[i];
    const std::string label = EntryLabel("tokens", i, e);
    absl::StatusOr<JoinTokenEntry> entry = ParseEntry(e, label);
    if (!entry.ok()) return entry.status();
    if (!names.insert(entry->name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": another entry has the same name; names must be unique"));
    }
    if (!hashes.insert(JoinTokenHashHex(entry->sha256)).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": another entry has the same \"sha256\"; a token maps to one SPIFFE ID"));
    }
    entries.push_back(*std::move(entry));
  }
  return entries;
}

absl::StatusOr<std::string> ReadJoinTokenFile(const std::string& path, struct stat* st) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    return absl::Status(
        err == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kFailedPrecondition,
        absl::StrCat("cannot open join-token file ", path, ": ", std::strerror(err)));
  }
  if (fstat(fd.get(), st) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot stat join-token file ", path, ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st->st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("join-token file ", path, " is not a regular file"));
  }
  if ((st->st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "join-token file %s has mode %04o: it holds credentials and must not be accessible to "
        "group or others; run `chmod 600 %s`",
        path, st->st_mode & 07777, path));
  }
  return ReadAll(fd.get(), path, "join-token file");
}

std::string JoinTokenUsedStatePath(const std::string& tokens_file) {
  return tokens_file + kJoinTokenUsedSuffix;
}

absl::StatusOr<std::vector<JoinTokenUse>> LoadJoinTokenUses(const std::string& path) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return std::vector<JoinTokenUse>();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open join-token state file ", path, ": ", std::strerror(errno)));
  }
  absl::StatusOr<std::string> text = ReadAll(fd.get(), path, "join-token state file");
  if (!text.ok()) return text.status();
  auto bad = [&](absl::string_view what) {
    return absl::FailedPreconditionError(absl::StrCat(
        "join-token state file ", path, ": ", what,
        "; fix it (deleting it would make every consumed single-use token usable again)"));
  };
  const json doc = json::parse(text->begin(), text->end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return bad("not valid JSON");
  if (!doc.is_object()) return bad("not a JSON object");
  auto used = doc.find("used");
  if (used == doc.end() || !used->is_array()) return bad("has no \"used\" array");
  std::vector<JoinTokenUse> uses;
  for (size_t i = 0; i < used->size(); ++i) {
    const json& u = (*used)[i];
    const std::string label = EntryLabel("used", i, u);
    if (!u.is_object()) return bad(absl::StrCat(label, " is not a JSON object"));
    const std::string* name = StringMember(u, "name");
    const std::string* hex = StringMember(u, "sha256");
    const std::string* used_at = StringMember(u, "used_at");
    JoinTokenUse use;
    if (name == nullptr || hex == nullptr || used_at == nullptr || !ParseHash(*hex, &use.sha256) ||
        !ParseRfc3339(*used_at, &use.used_at)) {
      return bad(absl::StrCat(
          label, " needs a string \"name\", a hex \"sha256\" and an RFC 3339 \"used_at\""));
    }
    use.name = *name;
    uses.push_back(std::move(use));
  }
  return uses;
}

absl::Status SaveJoinTokenUses(const std::string& path, const std::vector<JoinTokenUse>& uses) {
  json used = json::array();
  for (const JoinTokenUse& u : uses) {
    used.push_back(json{{"name", u.name},
                        {"sha256", JoinTokenHashHex(u.sha256)},
                        {"used_at", Rfc3339Utc(u.used_at)}});
  }
  const json doc = json{{"used", std::move(used)}};
  return ca::WriteFileAtomically(path, doc.dump(2) + "\n", 0600, /*overwrite=*/true);
}

absl::StatusOr<std::string> CreateJoinToken(const std::string& tokens_file, const std::string& name,
                                            const identity::SpiffeId& id,
                                            std::optional<absl::Time> expires, bool single_use) {
  if (absl::Status s = ValidateJoinTokenName(name); !s.ok()) return s;
  const absl::Time now = absl::Now();
  if (expires.has_value() && *expires <= now) {
    return absl::InvalidArgumentError(
        absl::StrCat("join token expiry ", Rfc3339Utc(*expires), " is not in the future"));
  }
  absl::MutexLock lock(&CreateMutex());

  json doc = json{{"tokens", json::array()}};
  bool exists = true;
  struct stat st;
  absl::StatusOr<std::string> text = ReadJoinTokenFile(tokens_file, &st);
  if (absl::IsNotFound(text.status())) {
    exists = false;
  } else if (!text.ok()) {
    return text.status();
  } else {
    absl::StatusOr<std::vector<JoinTokenEntry>> entries = ParseJoinTokenFile(*text);
    if (!entries.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("join-token file ", tokens_file,
                                                        " is invalid (fix it first; nothing was "
                                                        "written): ",
                                                        entries.status().message()));
    }
    for (const JoinTokenEntry& e : *entries) {
      if (e.name == name) {
        return absl::AlreadyExistsError(absl::StrCat("join-token file ", tokens_file,
                                                     " already has a token named \"", name,
                                                     "\"; choose another name"));
      }
    }
    doc = json::parse(text->begin(), text->end(), nullptr, /*allow_exceptions=*/false);
  }

  uint8_t raw[kJoinTokenRandomBytes];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    return absl::InternalError("cannot generate a join token: RAND_bytes failed");
  }
  std::string token =
      absl::StrCat(kJoinTokenPrefix, absl::WebSafeBase64Escape(absl::string_view(
                                         reinterpret_cast<const char*>(raw), sizeof(raw))));
  OPENSSL_cleanse(raw, sizeof(raw));

  json entry = json::object();
  entry["name"] = name;
  entry["sha256"] = JoinTokenHashHex(HashJoinToken(token));
  entry["spiffe_id"] = id.ToString();
  if (expires.has_value()) entry["expires"] = Rfc3339Utc(*expires);
  entry["single_use"] = single_use;
  entry["created"] = Rfc3339Utc(absl::FromUnixSeconds(absl::ToUnixSeconds(now)));
  doc["tokens"].push_back(std::move(entry));

  // Without an existing file, refuse to clobber one another process created meanwhile.
  if (absl::Status s =
          ca::WriteFileAtomically(tokens_file, doc.dump(2) + "\n", 0600, /*overwrite=*/exists);
      !s.ok()) {
    OPENSSL_cleanse(token.data(), token.size());
    return s;
  }
  return token;
}

}  // namespace trellis::control_plane
