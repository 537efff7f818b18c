// trellis-proxy: the sidecar. Wires the credential source, the ContextStore, the workers and the
// admin endpoint together and owns the process lifecycle (signals, drain); logic lives in the
// libraries under proxy/.

#include <openssl/crypto.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/admin/http_admin.h"
#include "common/log/json_log.h"
#include "common/process/startup.h"
#include "proxy/admin/admin_endpoint.h"
#include "proxy/config/listener_spec.h"
#include "proxy/health/app_prober.h"
#include "proxy/identity/context_store.h"
#include "proxy/identity/file_credential_source.h"
#include "proxy/identity/identity_client.h"
#include "proxy/identity/transport_loader.h"
#include "proxy/server/proxy_server.h"
#include "proxy/stats/proxy_stats.h"

// Credentials, mode 1: files (cert-manager, Vault agent, a Secret volume).
ABSL_FLAG(std::string, cert_file, "", "File mode: PEM certificate chain, leaf first.");
ABSL_FLAG(std::string, key_file, "", "File mode: PEM private key of the leaf.");
ABSL_FLAG(std::string, bundle_file, "", "File mode: PEM trust bundle (one or more roots).");
ABSL_FLAG(std::string, deny_list_file, "",
          "File mode: revocation deny-list ('serial:<hex>' or 'spiffe://...' per line).");
// Credentials, mode 2: the control plane.
ABSL_FLAG(std::string, control_plane_address, "",
          "Control-plane mode: host:port of trellis-control-plane's gRPC endpoint.");
ABSL_FLAG(std::string, control_plane_name, "trellis-control-plane.trellis-system.svc",
          "The DNS name the control plane's serving certificate must carry.");
ABSL_FLAG(std::string, root_file, "",
          "Control-plane mode: the mesh root(s), PEM, trusted for the control plane.");
ABSL_FLAG(std::string, token_file, "",
          "Control-plane mode: projected service-account token (audience trellis); re-read on "
          "every use.");
ABSL_FLAG(std::string, join_token_file, "",
          "Control-plane mode: join token file, for workloads outside Kubernetes.");
ABSL_FLAG(absl::Duration, requested_ttl, absl::ZeroDuration(),
          "Control-plane mode: certificate lifetime to ask for; 0 lets the control plane decide.");
ABSL_FLAG(std::string, transport_library, "",
          "Control-plane mode: path of libtrellis-proxy-grpc.so (the gRPC client, loaded only in "
          "this mode); empty: the one beside the trellis-proxy executable.");
// Listeners.
ABSL_FLAG(std::string, listeners, "",
          "Explicit listeners, comma-separated: 'out:HOST:PORT=>HOST:PORT@PATTERN|PATTERN' "
          "(plaintext in, mTLS out, server identity must match) and "
          "'in:HOST:PORT=>HOST:PORT@PATTERN|...' (mTLS in from matching clients, plaintext out). "
          "Optional 'NAME=' prefix. Port 0 picks a free port (see the 'listening' log line).");
ABSL_FLAG(int, outbound_capture_port, 0,
          "Transparent mode: port iptables redirects outbound traffic to (15001 in a pod); 0 off.");
ABSL_FLAG(int, inbound_capture_port, 0,
          "Transparent mode: port iptables redirects inbound traffic to (15006 in a pod); 0 off.");
ABSL_FLAG(std::string, capture_bind_host, "0.0.0.0", "Address the capture listeners bind to.");
ABSL_FLAG(std::string, inbound_port_policy, "",
          "Transparent mode: allowed client identities per application port, "
          "'8080=spiffe://td/ns/a/*|spiffe://td/ns/b/sa/c;9090=...'. Ports not listed allow any "
          "identity of the trust domain.");
// Runtime.
ABSL_FLAG(int, workers, 0, "Worker threads, each with its own epoll loop; 0 = usable cores.");
ABSL_FLAG(std::string, admin_address, "127.0.0.1:15000",
          "Pod-local admin endpoint: /ready /live /stats/prometheus /certs /config_dump /drain.");
ABSL_FLAG(int64_t, max_connections, 100000, "Connections open at once, over all listeners.");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(5), "Upstream TCP connect timeout.");
ABSL_FLAG(absl::Duration, handshake_timeout, absl::Seconds(10), "TLS handshake timeout.");
ABSL_FLAG(absl::Duration, idle_timeout, absl::Hours(1), "Close connections idle this long.");
ABSL_FLAG(int64_t, buffer_bytes, 65536,
          "Relay buffer per direction per connection, held only while bytes wait in it.");
ABSL_FLAG(bool, close_on_peer_expiry, false,
          "Close a connection when the peer certificate it was opened with passes its notAfter. "
          "Off by default: rotation must not cut connections that were verified when opened "
          "(the peer has long since rotated); turn on where policy demands it.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::ZeroDuration(),
          "Close connections older than this (+/-10% jitter); 0 = unlimited.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(20),
          "On SIGTERM or POST /drain: stop accepting, then wait this long for connections to end.");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error.");
ABSL_FLAG(std::string, app_probes, "",
          "The app's HTTP probes to serve on the admin port as /app-health/<container>/<kind>, "
          "JSON as the sidecar injector writes it. Empty: the env var TRELLIS_APP_PROBES.");

namespace trellis::proxy {
namespace {

// gRPC core's own log lines, from the transport library, as JSON lines like ours.
void TransportLog(int severity, const char* file, int line, const char* message) {
  const log::Level level = severity >= 2   ? log::Level::kError
                           : severity == 1 ? log::Level::kInfo
                                           : log::Level::kDebug;
  log::Log(level, message, {{"source", "grpc"}, {"file", file}, {"line", line}});
}

[[noreturn]] void Die(absl::string_view what, const absl::Status& status) {
  log::Error(what, {{"error", std::string(status.message())}});
  // _exit, not exit: threads already started (workers, file watchers, gRPC) may still be
  // running, and static destructors run under them crash the process instead of exiting 1.
  std::fflush(nullptr);
  _exit(1);
}

absl::StatusOr<std::map<uint16_t, std::vector<identity::SpiffeIdPattern>>> ParsePortPolicies(
    absl::string_view text) {
  std::map<uint16_t, std::vector<identity::SpiffeIdPattern>> out;
  for (absl::string_view entry : absl::StrSplit(text, ';', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(entry, absl::MaxSplits('=', 1));
    int port = 0;
    if (!absl::SimpleAtoi(kv.first, &port) || port < 1 || port > 65535 || kv.second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--inbound_port_policy entry \"", entry,
          "\" must be PORT=PATTERN|PATTERN, e.g. 8080=spiffe://cluster.local/ns/shop/*"));
    }
    for (absl::string_view pattern : absl::StrSplit(kv.second, '|')) {
      absl::StatusOr<identity::SpiffeIdPattern> parsed = identity::SpiffeIdPattern::Parse(pattern);
      if (!parsed.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--inbound_port_policy port ", port, ": ", parsed.status().message()));
      }
      out[static_cast<uint16_t>(port)].push_back(*std::move(parsed));
    }
  }
  return out;
}

absl::StatusOr<ProxyOptions> OptionsFromFlags() {
  ProxyOptions options;
  options.workers = absl::GetFlag(FLAGS_workers);
  options.max_connections = static_cast<size_t>(absl::GetFlag(FLAGS_max_connections));
  options.connect_timeout = absl::GetFlag(FLAGS_connect_timeout);
  options.handshake_timeout = absl::GetFlag(FLAGS_handshake_timeout);
  options.idle_timeout = absl::GetFlag(FLAGS_idle_timeout);
  options.buffer_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_buffer_bytes));
  options.close_on_peer_expiry = absl::GetFlag(FLAGS_close_on_peer_expiry);
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  absl::StatusOr<std::vector<ListenerSpec>> specs =
      ParseListenerSpecs(absl::GetFlag(FLAGS_listeners));
  if (!specs.ok()) return specs.status();
  for (const ListenerSpec& spec : *specs) {
    ListenerConfig config;
    config.kind = spec.kind == ListenerSpec::Kind::kOutbound
                      ? ListenerConfig::Kind::kExplicitOutbound
                      : ListenerConfig::Kind::kExplicitInbound;
    config.name = spec.name;
    config.bind_host = spec.bind_host;
    config.bind_port = spec.bind_port;
    config.upstream_host = spec.upstream_host;
    config.upstream_port = spec.upstream_port;
    config.peers = spec.peers;
    options.listeners.push_back(std::move(config));
  }
  if (const int port = absl::GetFlag(FLAGS_outbound_capture_port); port > 0) {
    ListenerConfig config;
    config.kind = ListenerConfig::Kind::kOutboundCapture;
    config.name = "outbound-capture";
    config.bind_host = absl::GetFlag(FLAGS_capture_bind_host);
    config.bind_port = static_cast<uint16_t>(port);
    options.listeners.push_back(std::move(config));
  }
  if (const int port = absl::GetFlag(FLAGS_inbound_capture_port); port > 0) {
    ListenerConfig config;
    config.kind = ListenerConfig::Kind::kInboundCapture;
    config.name = "inbound-capture";
    config.bind_host = absl::GetFlag(FLAGS_capture_bind_host);
    config.bind_port = static_cast<uint16_t>(port);
    absl::StatusOr<std::map<uint16_t, std::vector<identity::SpiffeIdPattern>>> policies =
        ParsePortPolicies(absl::GetFlag(FLAGS_inbound_port_policy));
    if (!policies.ok()) return policies.status();
    config.port_policies = *std::move(policies);
    options.listeners.push_back(std::move(config));
  }
  if (options.listeners.empty()) {
    return absl::InvalidArgumentError(
        "no listeners: give --listeners (explicit mode) or --outbound_capture_port / "
        "--inbound_capture_port (transparent mode)");
  }
  return options;
}

nlohmann::json ConfigDump(const ProxyOptions& options, const ProxyServer& server) {
  nlohmann::json listeners = nlohmann::json::array();
  for (const ListenerConfig& l : options.listeners) {
    nlohmann::json peers = nlohmann::json::array();
    for (const auto& p : l.peers) peers.push_back(p.ToString());
    nlohmann::json entry = {{"name", l.name},
                            {"kind", static_cast<int>(l.kind)},
                            {"bind", absl::StrCat(l.bind_host, ":", server.BoundPort(l.name))},
                            {"peers", peers}};
    if (!l.upstream_host.empty()) {
      entry["upstream"] = absl::StrCat(l.upstream_host, ":", l.upstream_port);
    }
    listeners.push_back(entry);
  }
  return {{"listeners", listeners},
          {"workers", options.workers},
          {"max_connections", options.max_connections},
          {"connect_timeout", absl::FormatDuration(options.connect_timeout)},
          {"handshake_timeout", absl::FormatDuration(options.handshake_timeout)},
          {"idle_timeout", absl::FormatDuration(options.idle_timeout)},
          {"buffer_bytes", options.buffer_bytes},
          {"cert_file", absl::GetFlag(FLAGS_cert_file)},
          {"bundle_file", absl::GetFlag(FLAGS_bundle_file)},
          {"deny_list_file", absl::GetFlag(FLAGS_deny_list_file)},
          {"control_plane_address", absl::GetFlag(FLAGS_control_plane_address)},
          {"drain_timeout", absl::FormatDuration(absl::GetFlag(FLAGS_drain_timeout))},
          {"tls_library", OpenSSL_version(OPENSSL_VERSION)}};
}

int Run(const sigset_t& signals, const std::string& argv0) {
  log::SetComponent("proxy");
  log::Level level;
  if (!log::ParseLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    Die("bad --log_level", absl::InvalidArgumentError("use debug, info, warn or error"));
  }
  log::SetMinLevel(level);
  absl::StatusOr<ProxyOptions> options = OptionsFromFlags();
  if (!options.ok()) Die("bad configuration", options.status());
  std::string app_probes_json = absl::GetFlag(FLAGS_app_probes);
  if (const char* env = std::getenv("TRELLIS_APP_PROBES"); app_probes_json.empty() && env) {
    app_probes_json = env;
  }
  constexpr char kBadProbes[] = "bad app probes (--app_probes or env TRELLIS_APP_PROBES)";
  absl::StatusOr<std::vector<health::AppProbe>> app_probes =
      health::ParseAppProbes(app_probes_json);
  if (!app_probes.ok()) Die(kBadProbes, app_probes.status());
  absl::StatusOr<std::unique_ptr<health::AppProber>> app_prober =
      health::AppProber::Create(*std::move(app_probes));
  if (!app_prober.ok()) Die(kBadProbes, app_prober.status());

  const bool file_mode = !absl::GetFlag(FLAGS_cert_file).empty();
  const bool control_plane_mode = !absl::GetFlag(FLAGS_control_plane_address).empty();
  if (file_mode == control_plane_mode) {
    Die("bad configuration",
        absl::InvalidArgumentError(
            "choose one credential source: --cert_file/--key_file/--bundle_file (files) or "
            "--control_plane_address with --root_file and --token_file or --join_token_file"));
  }

  ContextStore store;
  ProxyStats stats;
  absl::StatusOr<std::unique_ptr<ProxyServer>> server = ProxyServer::Create(*options, &store);
  if (!server.ok()) Die("bad configuration", server.status());
  // A deny-list change closes existing connections with newly denied peers.
  store.OnPublish(
      [&](const Credentials& credentials) { (*server)->CloseDeniedPeers(credentials.deny_list); });

  std::unique_ptr<FileCredentialSource> files;
  std::unique_ptr<IdentityClient> identity;
  if (file_mode) {
    FileCredentialSource::Options file_options;
    file_options.cert_file = absl::GetFlag(FLAGS_cert_file);
    file_options.key_file = absl::GetFlag(FLAGS_key_file);
    file_options.bundle_file = absl::GetFlag(FLAGS_bundle_file);
    file_options.deny_list_file = absl::GetFlag(FLAGS_deny_list_file);
    absl::StatusOr<std::unique_ptr<FileCredentialSource>> created =
        FileCredentialSource::Create(file_options, &store, &stats);
    if (!created.ok()) Die("bad credential files", created.status());
    files = *std::move(created);
    // Not fatal: the files may appear later (cert-manager); until then /ready says why.
    if (absl::Status s = files->LoadNow(); !s.ok()) {
      log::Warn("no usable certificate yet; waiting for the files",
                {{"error", std::string(s.message())}});
    }
    files->Start();
  } else {
    IdentityClientOptions client_options;
    client_options.control_plane_address = absl::GetFlag(FLAGS_control_plane_address);
    client_options.control_plane_name = absl::GetFlag(FLAGS_control_plane_name);
    client_options.root_file = absl::GetFlag(FLAGS_root_file);
    client_options.token_file = absl::GetFlag(FLAGS_token_file);
    client_options.join_token_file = absl::GetFlag(FLAGS_join_token_file);
    client_options.requested_ttl = absl::GetFlag(FLAGS_requested_ttl);
    absl::StatusOr<TransportFactory> transport =
        LoadTransport(absl::GetFlag(FLAGS_transport_library), argv0);
    if (!transport.ok()) Die("cannot talk to the control plane", transport.status());
    client_options.transport = *std::move(transport);
    client_options.transport_log_sink = TransportLog;
    absl::StatusOr<std::unique_ptr<IdentityClient>> created =
        IdentityClient::Create(client_options, &store, &stats);
    if (!created.ok()) Die("bad control-plane settings", created.status());
    identity = *std::move(created);
    identity->Start();
  }

  if (absl::Status s = (*server)->Start(); !s.ok()) Die("cannot start the listeners", s);

  AdminEndpoint::Options admin_options;
  admin_options.store = &store;
  admin_options.stats = &stats;
  admin_options.workers = [&] { return (*server)->worker_stats(); };
  admin_options.listeners_up = [&] { return (*server)->listeners_up(); };
  admin_options.drain = [&] { (*server)->Drain(); };
  admin_options.config_dump = [&] { return ConfigDump(*options, **server); };
  admin_options.app_prober = app_prober->get();
  if (identity != nullptr) {
    admin_options.rotation = [&] {
      const IdentityClientStatus status = identity->status();
      AdminEndpoint::RotationInfo info;
      if (status.next_rotation != absl::InfinitePast()) info.next_rotation = status.next_rotation;
      info.last_error = status.last_error;
      return info;
    };
  }
  absl::StatusOr<std::unique_ptr<AdminEndpoint>> admin = AdminEndpoint::Create(admin_options);
  if (!admin.ok()) Die("cannot set up the admin endpoint", admin.status());
  admin::HttpAdmin http;
  (*admin)->Register(&http);
  std::string admin_host;
  int admin_port = 0;
  if (absl::Status s =
          admin::ParseHostPort(absl::GetFlag(FLAGS_admin_address), &admin_host, &admin_port);
      !s.ok()) {
    Die("bad --admin_address", s);
  }
  absl::StatusOr<int> bound_admin = http.Start(admin_host, admin_port);
  if (!bound_admin.ok()) Die("cannot start the admin endpoint", bound_admin.status());

  nlohmann::json ports = nlohmann::json::object();
  for (const ListenerConfig& l : options->listeners) ports[l.name] = (*server)->BoundPort(l.name);
  log::Info("listening", {{"admin_port", *bound_admin},
                          {"listeners", ports},
                          {"workers", (*server)->worker_stats().size()},
                          {"credentials", file_mode ? "files" : "control-plane"},
                          // Linked into the binary: a library update needs a rebuild.
                          {"tls_library", OpenSSL_version(OPENSSL_VERSION)}});

  // The main thread only waits for signals (blocked in every thread, so none interrupts a
  // worker); SIGHUP is ignored: credentials reload on their own.
  while (true) {
    int signal = 0;
    if (sigwait(&signals, &signal) != 0) continue;
    if (signal == SIGHUP) continue;
    log::Info("draining", {{"signal", signal},
                           {"active_connections", (*server)->active_connections()},
                           {"timeout", absl::FormatDuration(absl::GetFlag(FLAGS_drain_timeout))}});
    break;
  }
  (*admin)->Drain();
  const absl::Time deadline = absl::Now() + absl::GetFlag(FLAGS_drain_timeout);
  while ((*server)->active_connections() > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  const size_t left = (*server)->active_connections();
  (*server)->Stop();
  if (files != nullptr) files->Stop();
  if (identity != nullptr) identity->Stop();
  http.Stop();
  log::Info("stopped", {{"connections_cut_at_deadline", left}});
  return 0;
}

}  // namespace
}  // namespace trellis::proxy

int main(int argc, char** argv) {
  if (!trellis::process::ParseFlagsOrPrintHelp(
          argc, argv,
          "the Trellis sidecar proxy.\n"
          "Wraps every connection between meshed workloads in mutual TLS and checks the peer's "
          "SPIFFE\n"
          "identity on both ends; certificates come from files or from trellis-control-plane and\n"
          "rotate with no restart.\n\n"
          "Usage: trellis-proxy (--cert_file=... --key_file=... --bundle_file=... |\n"
          "                      --control_plane_address=HOST:PORT --root_file=... "
          "--token_file=...)\n"
          "                     (--listeners=SPECS | --outbound_capture_port=15001 "
          "--inbound_capture_port=15006) [flags]\n"
          "       trellis-proxy --flagfile=FILE   (a config file: one --flag=value per line)\n"
          "Signals: SIGTERM/SIGINT drain gracefully (stop accepting, finish connections, exit).")) {
    return 0;
  }
  // Block the signals we wait for before any thread starts, so that every thread inherits it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return trellis::proxy::Run(signals, argv[0]);
}
