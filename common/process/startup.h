#pragma once

// Process start-up shared by the Trellis binaries.

#include "absl/strings/string_view.h"

namespace trellis::process {

// Sets the usage text and parses the flags (--flagfile included). Returns false after printing
// the help when it was asked for (--help, -help, --helpfull, -h): the caller exits 0. Debian's
// abseil would exit 1 after --help, but an operator asking for help has not made an error.
bool ParseFlagsOrPrintHelp(int argc, char** argv, absl::string_view usage);

}  // namespace trellis::process
