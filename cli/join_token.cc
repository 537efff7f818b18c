// trellisctl join-token create: a credential for a workload outside Kubernetes (VM, IoT device).

#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "common/identity/spiffe_id.h"
#include "control-plane/auth/join_token_store.h"

namespace trellis::cli {
namespace {

constexpr char kUsage[] = R"(Usage: trellisctl join-token create --file FILE --name NAME --spiffe-id ID [FLAGS]

Creates a join token bound to one SPIFFE ID and adds its SHA-256 hash (never the token) to the
control plane's join-token file (--join_tokens_file; created with mode 0600 if missing). The token
is printed once, on stdout: give it to the workload's proxy (--join_token_file) over a safe channel.
The control plane picks up the new entry within a second.

Flags:
  --file FILE         The control plane's join-token file. Required.
  --name NAME         A name for the token, for logs and revocation (letters, digits, . _ -). Required.
  --spiffe-id ID      The identity the token proves, e.g. spiffe://cluster.local/vm/billing-1. Required.
  --ttl DURATION      The token expires after this long, e.g. 24h. Default: never.
  --single-use        The token works for one first issuance only (renewals then use the certificate).
  -h, --help          Show this help.
)";

}  // namespace

int JoinTokenCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    if (args.empty()) return UsageError("join-token: missing subcommand", kUsage);
    std::cout << kUsage;
    return kExitOk;
  }
  if (args[0] != "create") {
    return UsageError(absl::StrCat("join-token: unknown subcommand \"", args[0], "\""), kUsage);
  }
  ParsedArgs parsed;
  if (absl::Status s = ParseArgs({args.begin() + 1, args.end()},
                                 {"--file", "--name", "--spiffe-id", "--ttl"}, {"--single-use"},
                                 &parsed);
      !s.ok()) {
    return UsageError(absl::StrCat("join-token create: ", s.message()), kUsage);
  }
  if (parsed.help) {
    std::cout << kUsage;
    return kExitOk;
  }
  for (const char* required : {"--file", "--name", "--spiffe-id"}) {
    if (parsed.Get(required).empty()) {
      return UsageError(absl::StrCat("join-token create: ", required, " is required"), kUsage);
    }
  }
  if (absl::Status s = control_plane::ValidateJoinTokenName(parsed.Get("--name")); !s.ok()) {
    return UsageError(absl::StrCat("join-token create: --name: ", s.message()), kUsage);
  }
  absl::StatusOr<identity::SpiffeId> id = identity::SpiffeId::Parse(parsed.Get("--spiffe-id"));
  if (!id.ok()) {
    return UsageError(absl::StrCat("join-token create: --spiffe-id: ", id.status().message()),
                      kUsage);
  }
  std::optional<absl::Time> expires;
  if (const std::string ttl_text = parsed.Get("--ttl"); !ttl_text.empty()) {
    absl::Duration ttl;
    if (!absl::ParseDuration(ttl_text, &ttl) || ttl <= absl::ZeroDuration()) {
      return UsageError(absl::StrCat("join-token create: --ttl \"", ttl_text,
                                     "\" is not a positive duration (e.g. 24h)"),
                        kUsage);
    }
    expires = absl::Now() + ttl;
  }
  absl::StatusOr<std::string> token = control_plane::CreateJoinToken(
      parsed.Get("--file"), parsed.Get("--name"), *id, expires, parsed.Has("--single-use"));
  if (!token.ok()) {
    std::cerr << "trellisctl: join-token create: " << token.status().message() << "\n";
    return kExitFailure;
  }
  std::cerr << "Created join token \"" << parsed.Get("--name") << "\" for " << id->ToString()
            << (expires ? absl::StrCat(", expires ", absl::FormatTime(*expires)) : "")
            << (parsed.Has("--single-use") ? ", single use" : "")
            << ". It is shown only now:\n";
  std::cout << *token << "\n";
  return kExitOk;
}

}  // namespace trellis::cli
