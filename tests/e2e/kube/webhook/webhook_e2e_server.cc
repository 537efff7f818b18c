// Serves the injection webhook (control-plane/inject/webhook_server.h) for webhook_e2e_test:
//   webhook_e2e_server --cert=FILE --key=FILE --port-file=FILE [--classic]
// Listens on 127.0.0.1 (a free port, written to --port-file) until SIGTERM/SIGINT.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <string>

#include "absl/strings/match.h"
#include "control-plane/inject/webhook_server.h"

namespace {
volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }
}  // namespace

int main(int argc, char** argv) {
  std::string cert, key, port_file;
  trellis::control_plane::inject::WebhookOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--cert=")) {
      cert = arg.substr(7);
    } else if (absl::StartsWith(arg, "--key=")) {
      key = arg.substr(6);
    } else if (absl::StartsWith(arg, "--port-file=")) {
      port_file = arg.substr(12);
    } else if (arg == "--classic") {
      options.inject.classic = true;
    } else {
      std::cerr << "usage: webhook_e2e_server --cert=FILE --key=FILE --port-file=FILE [--classic]\n";
      return 2;
    }
  }
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  trellis::control_plane::inject::WebhookServer server(options, cert, key);
  absl::StatusOr<int> port = server.Start("127.0.0.1", 0);
  if (!port.ok()) {
    std::cerr << port.status() << "\n";
    return 1;
  }
  {
    std::ofstream out(port_file + ".tmp");
    out << *port << "\n";
  }
  rename((port_file + ".tmp").c_str(), port_file.c_str());
  std::cerr << "webhook listening on 127.0.0.1:" << *port << "\n";
  while (!g_stop) usleep(100 * 1000);
  server.Stop();
  return 0;
}
