#include "common/process/startup.h"

#include <iostream>
#include <string>

#include "absl/flags/internal/program_name.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"

namespace trellis::process {

bool ParseFlagsOrPrintHelp(int argc, char** argv, absl::string_view usage) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view) { return true; };
  config.contains_helpshort_flags = [](absl::string_view) { return true; };
  absl::SetFlagsUsageConfig(config);
  absl::flags_internal::SetProgramInvocationName(argv[0]);
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "--helpfull" || arg == "-h") {
      absl::flags_internal::FlagsHelp(std::cout, "",
                                      absl::flags_internal::HelpFormat::kHumanReadable,
                                      absl::ProgramUsageMessage());
      return false;
    }
  }
  absl::ParseCommandLine(argc, argv);
  return true;
}

}  // namespace trellis::process
