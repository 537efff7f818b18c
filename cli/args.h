#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace trellis::cli {

// Exit codes shared by every trellisctl command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Parsed `--name value`, `--name=value` and boolean `--name` flags of one command.
struct ParsedArgs {
  std::map<std::string, std::string> values;
  std::set<std::string> switches;
  bool help = false;

  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
  bool Has(const std::string& name) const { return switches.count(name) > 0; }
};

// Parses `args` against the flags a command accepts. InvalidArgument naming the flag for an
// unknown flag, a missing value or a stray argument.
absl::Status ParseArgs(const std::vector<std::string>& args, const std::set<std::string>& valued,
                       const std::set<std::string>& boolean, ParsedArgs* out);

// Prints "trellisctl: MESSAGE" and the usage text to stderr; returns kExitUsage.
int UsageError(const std::string& message, const char* usage);

}  // namespace trellis::cli
