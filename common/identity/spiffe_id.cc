#include "common/identity/spiffe_id.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace trellis::identity {
namespace {

constexpr absl::string_view kScheme = "spiffe://";

// Error messages quote at most this many bytes of the input, so that a hostile 2 KB URI SAN does
// not flood the logs.
constexpr size_t kMaxQuotedBytes = 80;

// Kubernetes name limits: a namespace is an RFC 1123 label, a service account an RFC 1123
// subdomain.
constexpr size_t kMaxKubernetesLabel = 63;
constexpr size_t kMaxKubernetesSubdomain = 253;

// === Quoting ===

// The input, truncated and with quotes, backslashes and non-printable bytes escaped, in quotes.
std::string Quote(absl::string_view text) {
  if (text.size() <= kMaxQuotedBytes) {
    return absl::StrCat("\"", absl::CHexEscape(text), "\"");
  }
  return absl::StrCat("\"", absl::CHexEscape(text.substr(0, kMaxQuotedBytes)), "\"... (",
                      text.size(), " bytes)");
}

std::string QuoteChar(char c) {
  return absl::StrCat("'", absl::CHexEscape(absl::string_view(&c, 1)), "'");
}

absl::Status InvalidArgument(absl::string_view what, absl::string_view text,
                             absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid ", what, " ", Quote(text), ": ", problem));
}

// === Validation ===
// Each *Problem function returns "" if its input is valid, else a sentence naming the broken rule.

bool IsTrustDomainChar(char c) {
  return absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' || c == '-' || c == '_';
}

bool IsPathChar(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '-' || c == '_'; }

// URI syntax that SPIFFE IDs forbid; named on their own so the message says what the user wrote.
std::string ReservedCharProblem(char c) {
  switch (c) {
    case '?':
      return "a query ('?') is not allowed";
    case '#':
      return "a fragment ('#') is not allowed";
    case '%':
      return "percent-encoding ('%') is not allowed";
    default:
      return "";
  }
}

std::string TrustDomainProblem(absl::string_view td) {
  if (td.empty()) {
    return "trust domain is empty";
  }
  // Checked before the character scan: in "user:pw@host" the ':' is not a port.
  if (absl::StrContains(td, '@')) {
    return "trust domain must not contain userinfo ('@')";
  }
  if (absl::StrContains(td, ':')) {
    return "trust domain must not contain a port (':')";
  }
  for (char c : td) {
    if (IsTrustDomainChar(c)) {
      continue;
    }
    std::string problem = ReservedCharProblem(c);
    if (!problem.empty()) {
      return problem;
    }
    return absl::StrCat("trust domain must be lowercase letters, digits, '.', '-' or '_' (found ",
                        QuoteChar(c), ")");
  }
  if (td.size() > kMaxTrustDomainLength) {
    return absl::StrCat("trust domain is ", td.size(), " bytes; the maximum is ",
                        kMaxTrustDomainLength);
  }
  return "";
}

// `path` is "" or starts with '/'.
std::string PathProblem(absl::string_view path) {
  size_t pos = 0;
  while (pos < path.size()) {
    size_t end = std::min(path.find('/', pos + 1), path.size());
    absl::string_view segment = path.substr(pos + 1, end - pos - 1);
    if (segment.empty()) {
      return end == path.size() ? "path must not end with '/'"
                                : "path must not contain empty segments (\"//\")";
    }
    for (char c : segment) {
      if (IsPathChar(c)) {
        continue;
      }
      std::string problem = ReservedCharProblem(c);
      if (!problem.empty()) {
        return problem;
      }
      return absl::StrCat("path segments must be letters, digits, '.', '-' or '_' (found ",
                          QuoteChar(c), ")");
    }
    if (segment == "." || segment == "..") {
      return absl::StrCat("path must not contain \"", segment, "\" segments");
    }
    pos = end;
  }
  return "";
}

// RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool LooksLikeScheme(absl::string_view s) {
  return !s.empty() && absl::ascii_isalpha(s[0]) && std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '+' || c == '-' || c == '.';
  });
}

// `text` does not start with "spiffe://": say why, as precisely as we can guess.
std::string SchemeProblem(absl::string_view text) {
  if (absl::StartsWithIgnoreCase(text, kScheme)) {
    return "scheme must be lowercase \"spiffe://\"";
  }
  size_t separator = text.find("://");
  if (separator != absl::string_view::npos && LooksLikeScheme(text.substr(0, separator))) {
    return absl::StrCat("scheme must be \"spiffe\" (found ", Quote(text.substr(0, separator)), ")");
  }
  if (absl::StartsWithIgnoreCase(text, "spiffe:")) {
    return "scheme must be followed by \"//\" and the trust domain (\"spiffe://<trust-domain>\")";
  }
  return "must start with \"spiffe://\"";
}

// Validates a whole ID; on success sets *trust_domain_length.
std::string IdProblem(absl::string_view text, size_t* trust_domain_length) {
  if (text.empty()) {
    return "the ID is empty";
  }
  if (text.size() > kMaxSpiffeIdLength) {
    return absl::StrCat("the ID is ", text.size(), " bytes; the maximum is ", kMaxSpiffeIdLength);
  }
  if (!absl::StartsWith(text, kScheme)) {
    return SchemeProblem(text);
  }
  absl::string_view rest = text.substr(kScheme.size());
  absl::string_view td = rest.substr(0, std::min(rest.find_first_of("/?#"), rest.size()));
  std::string problem = TrustDomainProblem(td);
  if (!problem.empty()) {
    return problem;
  }
  absl::string_view path = rest.substr(td.size());
  if (!path.empty() && path[0] != '/') {
    return ReservedCharProblem(path[0]);  // '?' or '#' right after the trust domain
  }
  problem = PathProblem(path);
  if (!problem.empty()) {
    return problem;
  }
  *trust_domain_length = td.size();
  return "";
}

// Kubernetes names are lowercase letters, digits and '-' (plus '.' in subdomains).
std::string KubernetesCharProblem(absl::string_view name, bool allow_dot) {
  for (char c : name) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-' &&
        !(allow_dot && c == '.')) {
      return absl::StrCat("must be lowercase letters, digits",
                          allow_dot ? ", '-' or '.'" : " or '-'", " (found ", QuoteChar(c), ")");
    }
  }
  return "";
}

bool StartsAndEndsAlphanumeric(absl::string_view label) {
  return !label.empty() && absl::ascii_isalnum(label.front()) && absl::ascii_isalnum(label.back());
}

// An RFC 1123 label: [a-z0-9-]+, starting and ending alphanumeric.
std::string KubernetesNamespaceProblem(absl::string_view ns) {
  if (ns.empty()) {
    return "is empty";
  }
  if (std::string problem = KubernetesCharProblem(ns, /*allow_dot=*/false); !problem.empty()) {
    return problem;
  }
  if (!StartsAndEndsAlphanumeric(ns)) {
    return "must start and end with a lowercase letter or digit";
  }
  if (ns.size() > kMaxKubernetesLabel) {
    return absl::StrCat("is ", ns.size(), " characters; the maximum is ", kMaxKubernetesLabel);
  }
  return "";
}

// An RFC 1123 subdomain: such labels joined by '.'.
std::string KubernetesServiceAccountProblem(absl::string_view sa) {
  if (sa.empty()) {
    return "is empty";
  }
  if (std::string problem = KubernetesCharProblem(sa, /*allow_dot=*/true); !problem.empty()) {
    return problem;
  }
  for (absl::string_view label : absl::StrSplit(sa, '.')) {
    if (!StartsAndEndsAlphanumeric(label)) {
      return "each '.'-separated part must start and end with a lowercase letter or digit";
    }
  }
  if (sa.size() > kMaxKubernetesSubdomain) {
    return absl::StrCat("is ", sa.size(), " characters; the maximum is ", kMaxKubernetesSubdomain);
  }
  return "";
}

// "/ns/<ns>/sa/<sa>" -> {ns, sa}; nothing for any other path.
std::optional<std::pair<absl::string_view, absl::string_view>> SplitKubernetesPath(
    absl::string_view path) {
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  if (parts.size() != 5 || !parts[0].empty() || parts[1] != "ns" || parts[3] != "sa") {
    return std::nullopt;
  }
  return std::make_pair(parts[2], parts[4]);
}

}  // namespace

// === SpiffeId ===

absl::StatusOr<SpiffeId> SpiffeId::Parse(absl::string_view text) {
  size_t trust_domain_length = 0;
  std::string problem = IdProblem(text, &trust_domain_length);
  if (!problem.empty()) {
    return InvalidArgument("SPIFFE ID", text, problem);
  }
  return SpiffeId(std::string(text), trust_domain_length);
}

absl::StatusOr<SpiffeId> SpiffeId::ForKubernetesServiceAccount(absl::string_view trust_domain,
                                                               absl::string_view ns,
                                                               absl::string_view service_account) {
  if (absl::Status status = ValidateTrustDomain(trust_domain); !status.ok()) {
    return status;
  }
  if (std::string problem = KubernetesNamespaceProblem(ns); !problem.empty()) {
    return InvalidArgument("Kubernetes namespace", ns, problem);
  }
  if (std::string problem = KubernetesServiceAccountProblem(service_account); !problem.empty()) {
    return InvalidArgument("Kubernetes service account name", service_account, problem);
  }
  // Every part is now a subset of the SPIFFE character set with no dot segments, and the total
  // is far below 2048 bytes, so the result is a valid ID.
  return SpiffeId(absl::StrCat(kScheme, trust_domain, "/ns/", ns, "/sa/", service_account),
                  trust_domain.size());
}

absl::string_view SpiffeId::trust_domain() const {
  return absl::string_view(text_).substr(kScheme.size(), trust_domain_length_);
}

absl::string_view SpiffeId::path() const {
  return absl::string_view(text_).substr(kScheme.size() + trust_domain_length_);
}

std::optional<std::string> SpiffeId::kubernetes_namespace() const {
  auto parts = SplitKubernetesPath(path());
  if (!parts) {
    return std::nullopt;
  }
  return std::string(parts->first);
}

std::optional<std::string> SpiffeId::service_account() const {
  auto parts = SplitKubernetesPath(path());
  if (!parts) {
    return std::nullopt;
  }
  return std::string(parts->second);
}

absl::Status ValidateTrustDomain(absl::string_view td) {
  if (absl::StrContains(td, "://")) {
    return InvalidArgument(
        "trust domain", td,
        "expected a bare trust domain name such as \"cluster.local\", not a URI");
  }
  if (std::string problem = TrustDomainProblem(td); !problem.empty()) {
    return InvalidArgument("trust domain", td, problem);
  }
  return absl::OkStatus();
}

// === SpiffeIdPattern ===

absl::StatusOr<SpiffeIdPattern> SpiffeIdPattern::Parse(absl::string_view text) {
  constexpr absl::string_view kWhat = "SPIFFE ID pattern";
  if (text == "*") {
    return SpiffeIdPattern(Kind::kAny, "*", 0);
  }
  if (text.empty()) {
    return InvalidArgument(kWhat, text, "the pattern is empty (use \"*\" to match any ID)");
  }
  // Looked for before "/*" is stripped, so that "spiffe://*" is not read as "spiffe:/" + "/*".
  if (absl::StartsWith(text, kScheme)) {
    absl::string_view rest = text.substr(kScheme.size());
    if (absl::StrContains(rest.substr(0, rest.find_first_of("/?#")), '*')) {
      return InvalidArgument(kWhat, text,
                             "the trust domain cannot contain '*' (use \"*\" alone to match any "
                             "trust domain)");
    }
  }
  absl::string_view base = text;
  const bool wildcard = absl::ConsumeSuffix(&base, "/*");
  if (absl::StrContains(base, '*')) {
    return InvalidArgument(kWhat, text,
                           "'*' is only allowed as the whole pattern or as a final \"/*\" segment");
  }
  size_t trust_domain_length = 0;
  if (std::string problem = IdProblem(base, &trust_domain_length); !problem.empty()) {
    return InvalidArgument(kWhat, text, problem);
  }
  if (base.size() == kScheme.size() + trust_domain_length) {
    return SpiffeIdPattern(Kind::kTrustDomain, absl::StrCat(base, "/*"), trust_domain_length);
  }
  return SpiffeIdPattern(wildcard ? Kind::kPathPrefix : Kind::kExact, std::string(text),
                         trust_domain_length);
}

bool SpiffeIdPattern::Matches(const SpiffeId& id) const {
  switch (kind_) {
    case Kind::kAny:
      return true;
    case Kind::kTrustDomain:
      return id.trust_domain() ==
             absl::string_view(text_).substr(kScheme.size(), trust_domain_length_);
    case Kind::kPathPrefix:
      // "spiffe://td/ns/a/" (text_ without '*'): the trailing '/' keeps /ns/ab out.
      return absl::StartsWith(id.ToString(), absl::string_view(text_).substr(0, text_.size() - 1));
    case Kind::kExact:
      return id.ToString() == text_;
  }
  return false;
}

}  // namespace trellis::identity
