// trellisctl ca rotate: drives a root rotation of a CA directory (control-plane/ca/rotation.h).

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "control-plane/ca/rotation.h"

namespace trellis::cli {
namespace {

constexpr char kUsage[] = R"(Usage: trellisctl ca rotate STEP --dir DIR [FLAGS]

Rotates the mesh root CA with no downtime, in steps; the control plane reloads DIR after each one
(every second, or at once on SIGHUP) and pushes the trust bundle to every proxy.

Steps:
  status     Show the roots, the signing CA, which root it chains to, and the step reached.
  prepare    Create a new root and intermediate (kept in DIR/next/) and publish the new root
             by adding it to roots.crt. Proxies then trust both roots.
  activate   When every proxy has the new root: sign with the new intermediate from now on.
             The old CA is kept in DIR/previous/; proxies are told to renew soon.
  retire     When every old leaf has expired (--max-ttl after activate): remove the old root.

Flags:
  --dir DIR                 The CA directory (as written by `trellisctl ca init`). Required.
  --max-ttl DURATION        retire: the control plane's --max_ttl. Default: 24h
  --root-ttl DURATION       prepare: lifetime of the new root. Default: 87600h
  --intermediate-ttl DURATION
                            prepare: lifetime of the new intermediate. Default: 8760h
  --force                   retire: do not wait for --max-ttl after activation.
  -h, --help                Show this help.

In Kubernetes, run the steps on a copy of the CA Secret and apply it after each step:
  kubectl -n trellis-system create secret generic trellis-ca --from-file=DIR \
    --dry-run=client -o yaml | kubectl apply -f -
)";

}  // namespace

int CaRotateCommand(const std::vector<std::string>& args) {
  if (args.empty()) return UsageError("ca rotate: missing step", kUsage);
  const std::string step = args[0];
  if (step == "-h" || step == "--help") {
    std::cout << kUsage;
    return kExitOk;
  }
  ParsedArgs parsed;
  if (absl::Status s = ParseArgs({args.begin() + 1, args.end()},
                                 {"--dir", "--max-ttl", "--root-ttl", "--intermediate-ttl"},
                                 {"--force"}, &parsed);
      !s.ok()) {
    return UsageError(absl::StrCat("ca rotate ", step, ": ", s.message()), kUsage);
  }
  if (parsed.help) {
    std::cout << kUsage;
    return kExitOk;
  }
  control_plane::ca::RotationOptions options;
  options.dir = parsed.Get("--dir");
  options.now = absl::Now();
  options.force = parsed.Has("--force");
  if (options.dir.empty()) return UsageError("ca rotate: --dir is required", kUsage);
  for (auto [flag, target] : {std::pair<const char*, absl::Duration*>{"--max-ttl", &options.max_leaf_ttl},
                              {"--root-ttl", &options.root_ttl},
                              {"--intermediate-ttl", &options.intermediate_ttl}}) {
    const std::string text = parsed.Get(flag);
    if (!text.empty() && (!absl::ParseDuration(text, target) || *target <= absl::ZeroDuration())) {
      return UsageError(absl::StrCat("ca rotate: ", flag, " \"", text,
                                     "\" is not a positive duration (e.g. 24h, 90m)"),
                        kUsage);
    }
  }

  absl::StatusOr<std::string> summary;
  if (step == "status") {
    absl::StatusOr<control_plane::ca::RotationStatus> status =
        control_plane::ca::GetRotationStatus(options.dir);
    if (!status.ok()) {
      summary = status.status();
    } else {
      std::string text = absl::StrCat("step:         ", status->step, "\n",
                                      "signing CA:   ", status->signing_ca, "\n",
                                      "chains to:    ", status->signing_root, "\n", "roots:\n");
      for (const std::string& root : status->roots) absl::StrAppend(&text, "  ", root, "\n");
      if (status->step == "activated") {
        absl::StrAppend(&text, "activated at: ", absl::FormatTime(status->activated_at), "\n");
      }
      summary = text;
    }
  } else if (step == "prepare") {
    summary = control_plane::ca::PrepareRotation(options);
  } else if (step == "activate") {
    summary = control_plane::ca::ActivateRotation(options);
  } else if (step == "retire") {
    summary = control_plane::ca::RetireOldRoots(options);
  } else {
    return UsageError(absl::StrCat("ca rotate: unknown step \"", step, "\""), kUsage);
  }
  if (!summary.ok()) {
    std::cerr << "trellisctl: ca rotate " << step << ": " << summary.status().message() << "\n";
    return kExitFailure;
  }
  std::cout << *summary;
  return kExitOk;
}

}  // namespace trellis::cli
