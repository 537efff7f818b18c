// tokenreview_probe: runs TokenReviewAuthenticator once, for tokenreview_e2e_test.sh.
//
//   tokenreview_probe --url=https://127.0.0.1:PORT --ca=FILE --own-token-file=FILE
//                     --credential-file=FILE [--audience=trellis] [--trust-domain=cluster.local]
//
// The credential is read from a file so that it never appears on a command line. Prints one line,
// "OK <spiffe-id> detail=<detail>" or "<STATUS_CODE>: <message>", and exits 0 only for OK.

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "control-plane/auth/tokenreview_authenticator.h"

int main(int argc, char** argv) {
  trellis::control_plane::TokenReviewOptions options;
  std::string credential_file;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&](const char* flag, std::string* out) {
      const std::string prefix = std::string(flag) + "=";
      if (!absl::StartsWith(arg, prefix)) return false;
      *out = arg.substr(prefix.size());
      return true;
    };
    if (!value("--url", &options.api_server_url) && !value("--ca", &options.ca_file) &&
        !value("--own-token-file", &options.token_file) &&
        !value("--credential-file", &credential_file) && !value("--audience", &options.audience) &&
        !value("--trust-domain", &options.trust_domain)) {
      std::cerr << "tokenreview_probe: unknown argument " << arg << "\n";
      return 2;
    }
  }
  std::ifstream in(credential_file, std::ios::binary);
  if (!in) {
    std::cerr << "tokenreview_probe: cannot read --credential-file=" << credential_file << "\n";
    return 2;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string credential(absl::StripAsciiWhitespace(buffer.str()));

  auto authenticator = trellis::control_plane::TokenReviewAuthenticator::Create(options);
  if (!authenticator.ok()) {
    std::cout << authenticator.status() << "\n";
    return 2;
  }
  auto id = (*authenticator)->Authenticate(credential);
  if (!id.ok()) {
    std::cout << absl::StatusCodeToString(id.status().code()) << ": " << id.status().message()
              << "\n";
    return 1;
  }
  std::cout << "OK " << id->spiffe_id.ToString() << " detail=" << id->detail << "\n";
  return 0;
}
