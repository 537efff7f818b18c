#include "proxy/server/proxy_server.h"

#include <sched.h>

#include <csignal>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/log/json_log.h"
#include "proxy/conn/socket_util.h"
#include "proxy/listener/listen_socket.h"

namespace trellis::proxy {
namespace {

int UsableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  const int count = CPU_COUNT(&set);
  return count > 0 ? count : 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProxyServer>> ProxyServer::Create(ProxyOptions options,
                                                                 ContextStore* store) {
  if (store == nullptr) return absl::InvalidArgumentError("no ContextStore");
  if (options.buffer_bytes < 1024) {
    return absl::InvalidArgumentError("buffer_bytes must be at least 1024");
  }
  if (options.workers <= 0) options.workers = UsableCores();
  std::vector<ResolvedListener> listeners;
  std::set<std::string> names;
  for (const ListenerConfig& config : options.listeners) {
    if (config.name.empty()) return absl::InvalidArgumentError("a listener has no name");
    if (!names.insert(config.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("two listeners are named ", config.name));
    }
    ResolvedListener resolved;
    resolved.config = config;
    absl::StatusOr<SocketAddress> bind = ParseSocketAddress(config.bind_host, config.bind_port);
    if (!bind.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("listener ", config.name, ": bind_host: ", bind.status().message()));
    }
    resolved.bind = *bind;
    if (!IsCapture(config.kind)) {
      if (config.upstream_port == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("listener ", config.name, ": explicit listeners need upstream_port"));
      }
      absl::StatusOr<SocketAddress> upstream =
          ParseSocketAddress(config.upstream_host, config.upstream_port);
      if (!upstream.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "listener ", config.name, ": upstream_host: ", upstream.status().message()));
      }
      resolved.upstream = *upstream;
    }
    listeners.push_back(std::move(resolved));
  }
  std::unique_ptr<ProxyServer> server(
      new ProxyServer(std::move(options), std::move(listeners), store));
  for (int i = 0; i < server->options_.workers; ++i) {
    absl::StatusOr<std::unique_ptr<Worker>> worker =
        Worker::Create(&server->options_, &server->listeners_, store, &server->shared_);
    if (!worker.ok()) return worker.status();
    server->workers_.push_back(*std::move(worker));
  }
  return server;
}

ProxyServer::~ProxyServer() { Stop(); }

absl::Status ProxyServer::Start() {
  if (started_) return absl::FailedPreconditionError("already started");
  std::signal(SIGPIPE, SIG_IGN);
  for (size_t i = 0; i < listeners_.size(); ++i) {
    SocketAddress address = listeners_[i].bind;
    for (auto& worker : workers_) {
      absl::StatusOr<UniqueFd> fd = OpenListenSocket(address);
      if (!fd.ok()) {
        return absl::UnavailableError(
            absl::StrCat("listener ", listeners_[i].config.name, ": ", fd.status().message()));
      }
      if (address.port() == 0) {
        // The first worker's bind chose the port; the others join it.
        address = LocalAddress(fd->get());
      }
      worker->AddListenSocket(i, *std::move(fd));
    }
    bound_ports_[listeners_[i].config.name] = address.port();
    log::Info("listener bound", {{"listener", listeners_[i].config.name},
                                 {"address", address.ToString()},
                                 {"workers", workers_.size()}});
  }
  for (auto& worker : workers_) worker->Start();
  started_ = true;
  // Listening sockets are already open (the kernel queues connections), so the proxy is up once
  // every worker registered its acceptors; wait briefly for that so listeners_up() is exact.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!listeners_up() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  return absl::OkStatus();
}

uint16_t ProxyServer::BoundPort(const std::string& listener_name) const {
  auto it = bound_ports_.find(listener_name);
  return it == bound_ports_.end() ? 0 : it->second;
}

bool ProxyServer::listeners_up() const {
  return started_ &&
         shared_.open_listeners.load() == static_cast<int>(workers_.size() * listeners_.size());
}

void ProxyServer::Drain() {
  for (auto& worker : workers_) worker->Drain();
}

size_t ProxyServer::active_connections() const { return shared_.active_connections.load(); }

void ProxyServer::Stop() {
  for (auto& worker : workers_) worker->Stop();
}

std::vector<const WorkerStats*> ProxyServer::worker_stats() const {
  std::vector<const WorkerStats*> out;
  for (const auto& worker : workers_) out.push_back(worker->stats());
  return out;
}

void ProxyServer::CloseDeniedPeers(const tls::DenyList& deny) {
  auto shared = std::make_shared<const tls::DenyList>(deny);
  for (auto& worker : workers_) worker->CloseDeniedPeers(shared);
}

}  // namespace trellis::proxy
