// Fuzz target for //common/identity:spiffe_id.
//
// The whole input is parsed as a SPIFFE ID, a pattern and a trust domain. Besides memory safety
// (ASan/UBSan), it checks:
//  - Parse agrees with a plain split-based reimplementation of the SPIFFE ID rules;
//  - a parsed ID round-trips, its parts reassemble into it, and every pattern that should
//    match it does;
//  - errors are InvalidArgument, start with the documented prefix, stay short and printable.
// An input with one '\n' is also read as "<pattern>\n<id>" and Matches is checked against a
// string-prefix oracle; one with two is read as "<trust domain>\n<namespace>\n<service account>"
// for ForKubernetesServiceAccount.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/identity/spiffe_id.h"

namespace {

using ::trellis::identity::SpiffeId;
using ::trellis::identity::SpiffeIdPattern;
using ::trellis::identity::ValidateTrustDomain;

#define FUZZ_CHECK(condition)                                                            \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

constexpr absl::string_view kScheme = "spiffe://";

// --- The reference: the standard's rules, written as differently from the library as we can ---

bool AllOf(absl::string_view s, absl::string_view allowed) {
  return s.find_first_not_of(allowed) == absl::string_view::npos;
}

constexpr absl::string_view kLowerDigits = "abcdefghijklmnopqrstuvwxyz0123456789";
constexpr absl::string_view kUpper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

bool ReferenceTrustDomainValid(absl::string_view td) {
  return !td.empty() && td.size() <= 255 && AllOf(td, absl::StrCat(kLowerDigits, ".-_"));
}

bool ReferenceIdValid(absl::string_view text) {
  if (text.size() > 2048 || !absl::ConsumePrefix(&text, kScheme)) {
    return false;
  }
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  if (!ReferenceTrustDomainValid(parts[0])) {
    return false;
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i].empty() || parts[i] == "." || parts[i] == ".." ||
        !AllOf(parts[i], absl::StrCat(kLowerDigits, kUpper, ".-_"))) {
      return false;
    }
  }
  return true;
}

// Kubernetes names: RFC 1123 labels ([a-z0-9-], alphanumeric at both ends), '.'-joined for a
// service account.
bool ReferenceKubernetesNameValid(absl::string_view name, size_t max_size, bool dots) {
  if (name.empty() || name.size() > max_size) {
    return false;
  }
  std::vector<absl::string_view> labels = {name};
  if (dots) {
    labels = absl::StrSplit(name, '.');
  }
  for (absl::string_view label : labels) {
    if (label.empty() || !AllOf(label, absl::StrCat(kLowerDigits, "-")) || label.front() == '-' ||
        label.back() == '-') {
      return false;
    }
  }
  return true;
}

// Matches, from the canonical pattern text alone.
bool ReferenceMatches(absl::string_view pattern, absl::string_view id) {
  if (pattern == "*") {
    return true;
  }
  if (absl::ConsumeSuffix(&pattern, "/*")) {
    bool whole_trust_domain = pattern.find('/', kScheme.size()) == absl::string_view::npos;
    return absl::StartsWith(id, absl::StrCat(pattern, "/")) ||
           (whole_trust_domain && id == pattern);
  }
  return id == pattern;
}

// --- Checks ---

void CheckError(const absl::Status& status, absl::string_view prefix) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  FUZZ_CHECK(absl::StartsWith(status.message(), prefix));
  FUZZ_CHECK(status.message().size() < 600);  // the input is quoted truncated
  for (char c : status.message()) {
    FUZZ_CHECK(absl::ascii_isprint(c));
  }
}

void CheckMatches(const SpiffeIdPattern& pattern, const SpiffeId& id) {
  FUZZ_CHECK(pattern.Matches(id) == ReferenceMatches(pattern.ToString(), id.ToString()));
}

void CheckValidId(absl::string_view text, const SpiffeId& id) {
  FUZZ_CHECK(id.ToString() == text);
  FUZZ_CHECK(id.ToString() == absl::StrCat(kScheme, id.trust_domain(), id.path()));
  FUZZ_CHECK(ValidateTrustDomain(id.trust_domain()).ok());
  FUZZ_CHECK(id.path().empty() || id.path()[0] == '/');

  absl::StatusOr<SpiffeId> again = SpiffeId::Parse(id.ToString());
  FUZZ_CHECK(again.ok() && *again == id && !(*again != id) && !(*again < id) && !(id < *again));
  FUZZ_CHECK(absl::Hash<SpiffeId>()(*again) == absl::Hash<SpiffeId>()(id));

  std::optional<std::string> ns = id.kubernetes_namespace();
  std::optional<std::string> sa = id.service_account();
  FUZZ_CHECK(ns.has_value() == sa.has_value());
  if (ns.has_value()) {
    FUZZ_CHECK(id.path() == absl::StrCat("/ns/", *ns, "/sa/", *sa));
    absl::StatusOr<SpiffeId> built =
        SpiffeId::ForKubernetesServiceAccount(id.trust_domain(), *ns, *sa);
    FUZZ_CHECK(!built.ok() || *built == id);
  }

  // Exact, trust domain (both spellings), any, and "<id>/*" (which must not match the ID itself
  // unless it is a trust domain pattern).
  for (const std::string& pattern_text :
       {std::string(id.ToString()), absl::StrCat(kScheme, id.trust_domain()),
        absl::StrCat(kScheme, id.trust_domain(), "/*"), std::string("*"),
        absl::StrCat(id.ToString(), "/*")}) {
    absl::StatusOr<SpiffeIdPattern> pattern = SpiffeIdPattern::Parse(pattern_text);
    FUZZ_CHECK(pattern.ok());
    FUZZ_CHECK(pattern->Matches(id) ==
               (pattern_text != absl::StrCat(id.ToString(), "/*") || id.path().empty()));
    CheckMatches(*pattern, id);
  }
}

void CheckPattern(absl::string_view text) {
  absl::StatusOr<SpiffeIdPattern> pattern = SpiffeIdPattern::Parse(text);
  if (!pattern.ok()) {
    CheckError(pattern.status(), "invalid SPIFFE ID pattern \"");
    return;
  }
  absl::StatusOr<SpiffeIdPattern> again = SpiffeIdPattern::Parse(pattern->ToString());
  FUZZ_CHECK(again.ok() && again->ToString() == pattern->ToString());
}

void CheckPatternAgainstId(absl::string_view pattern_text, absl::string_view id_text) {
  absl::StatusOr<SpiffeIdPattern> pattern = SpiffeIdPattern::Parse(pattern_text);
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(id_text);
  if (pattern.ok() && id.ok()) {
    CheckMatches(*pattern, *id);
  }
}

void CheckKubernetes(absl::string_view td, absl::string_view ns, absl::string_view sa) {
  absl::StatusOr<SpiffeId> id = SpiffeId::ForKubernetesServiceAccount(td, ns, sa);
  FUZZ_CHECK(id.ok() == (ReferenceTrustDomainValid(td) &&
                         ReferenceKubernetesNameValid(ns, 63, /*dots=*/false) &&
                         ReferenceKubernetesNameValid(sa, 253, /*dots=*/true)));
  if (!id.ok()) {
    CheckError(id.status(), "invalid ");
    return;
  }
  FUZZ_CHECK(ReferenceIdValid(id->ToString()));
  FUZZ_CHECK(id->trust_domain() == td);
  FUZZ_CHECK(id->kubernetes_namespace() == std::string(ns));
  FUZZ_CHECK(id->service_account() == std::string(sa));
  absl::StatusOr<SpiffeId> parsed = SpiffeId::Parse(id->ToString());
  FUZZ_CHECK(parsed.ok() && *parsed == *id);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);

  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(text);
  FUZZ_CHECK(id.ok() == ReferenceIdValid(text));
  if (id.ok()) {
    CheckValidId(text, *id);
  } else {
    CheckError(id.status(), "invalid SPIFFE ID \"");
  }

  absl::Status td_status = ValidateTrustDomain(text);
  FUZZ_CHECK(td_status.ok() == ReferenceTrustDomainValid(text));
  if (!td_status.ok()) {
    CheckError(td_status, "invalid trust domain \"");
  }

  CheckPattern(text);

  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (lines.size() == 2) {
    CheckPatternAgainstId(lines[0], lines[1]);
  } else if (lines.size() == 3) {
    CheckKubernetes(lines[0], lines[1], lines[2]);
  }
  return 0;
}
