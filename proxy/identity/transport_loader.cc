#include "proxy/identity/transport_loader.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace trellis::proxy {
namespace {

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<std::string> Candidates(const std::string& argv0) {
  std::vector<std::string> out;
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0)
    out.push_back(absl::StrCat(DirectoryOf(std::string(exe, n)), "/", kTransportLibraryName));
  if (!argv0.empty() && argv0.find('/') != std::string::npos) {
    std::string beside = absl::StrCat(DirectoryOf(argv0), "/", kTransportLibraryName);
    if (out.empty() || out.front() != beside) out.push_back(std::move(beside));
  }
  return out;
}

}  // namespace

absl::StatusOr<TransportFactory> LoadTransport(const std::string& path, const std::string& argv0) {
  const std::vector<std::string> candidates =
      path.empty() ? Candidates(argv0) : std::vector<std::string>{path};
  std::vector<std::string> errors;
  for (const std::string& candidate : candidates) {
    // RTLD_LOCAL: the library's symbols (gRPC, protobuf) stay its own. Never closed: the
    // transport's objects and gRPC's threads live as long as the process.
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* error = dlerror();
      errors.push_back(error != nullptr ? error : candidate);
      continue;
    }
    using Entry = const TransportPlugin* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(handle, kTransportPluginSymbol));
    const TransportPlugin* plugin = entry != nullptr ? entry() : nullptr;
    if (plugin == nullptr || plugin->create == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(candidate, " is not a trellis-proxy transport library (no ",
                       kTransportPluginSymbol, "); install the one built with this trellis-proxy"));
    }
    if (plugin->abi_version != kTransportPluginAbiVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(candidate, " was built for another trellis-proxy (interface version ",
                       plugin->abi_version, ", this binary needs ", kTransportPluginAbiVersion,
                       "); install the one built with this trellis-proxy"));
    }
    auto create = plugin->create;
    return TransportFactory([create](const TransportOptions& options) { return create(options); });
  }
  return absl::NotFoundError(
      absl::StrCat("cannot load the control-plane client library ", kTransportLibraryName,
                   " (it ships beside trellis-proxy; --transport_library names another path): ",
                   absl::StrJoin(errors, "; ")));
}

}  // namespace trellis::proxy
