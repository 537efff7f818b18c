#pragma once

#include <string>
#include <vector>

namespace trellis::cli {

// `trellisctl ca rotate {prepare,activate,retire,status} --dir DIR ...`; returns the exit code.
int CaRotateCommand(const std::vector<std::string>& args);

// `trellisctl join-token create --file FILE --name NAME --spiffe-id ID ...`.
int JoinTokenCommand(const std::vector<std::string>& args);

// `trellisctl inject -f FILE|- [--classic] ...`: offline sidecar injection of YAML.
int InjectCommand(const std::vector<std::string>& args);

}  // namespace trellis::cli
