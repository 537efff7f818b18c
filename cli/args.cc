#include "cli/args.h"

#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace trellis::cli {

absl::Status ParseArgs(const std::vector<std::string>& args, const std::set<std::string>& valued,
                       const std::set<std::string>& boolean, ParsedArgs* out) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      out->help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg;
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    if (boolean.count(name) > 0 && !has_value) {
      out->switches.insert(name);
      continue;
    }
    if (valued.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag \"", name, "\""));
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag ", name, " needs a value"));
      }
      value = args[++i];
    }
    out->values[name] = value;
  }
  return absl::OkStatus();
}

int UsageError(const std::string& message, const char* usage) {
  std::cerr << "trellisctl: " << message << "\n\n" << usage;
  return kExitUsage;
}

}  // namespace trellis::cli
