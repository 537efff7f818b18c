#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "proxy/identity/control_plane_transport.h"

namespace trellis::proxy {

// Loads the library from `path`, or when empty from beside the executable (the directory of
// /proc/self/exe, then that of `argv0`, which differs when the binary is reached through a
// symlink). The library stays loaded for the life of the process.
absl::StatusOr<TransportFactory> LoadTransport(const std::string& path, const std::string& argv0);

}  // namespace trellis::proxy
