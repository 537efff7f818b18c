#include "proxy/server/worker.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/log/json_log.h"
#include "proxy/conn/endpoint.h"
#include "proxy/conn/failure_report.h"
#include "proxy/listener/original_dst.h"

namespace trellis::proxy {
namespace {

// Empty relay blocks a worker keeps for reuse (16 x 16 KiB by default). Blocks are held only
// while bytes wait in them, so this covers every connection that is mid-write at once under
// ordinary load; a burst of backpressured connections beyond it allocates, and frees on return.
constexpr size_t kFreeRelayBlocks = 16;

}  // namespace

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    const ProxyOptions* options, const std::vector<ResolvedListener>* listeners,
    ContextStore* store, SharedCounters* shared) {
  absl::StatusOr<std::unique_ptr<EpollLoop>> loop = EpollLoop::Create();
  if (!loop.ok()) return loop.status();
  return std::unique_ptr<Worker>(new Worker(options, listeners, store, shared, *std::move(loop)));
}

Worker::Worker(const ProxyOptions* options, const std::vector<ResolvedListener>* listeners,
               ContextStore* store, SharedCounters* shared, std::unique_ptr<EpollLoop> loop)
    : options_(options),
      listeners_(listeners),
      store_(store),
      shared_(shared),
      stats_(std::make_unique<WorkerStats>()),
      buffer_pool_(options->buffer_bytes, kFreeRelayBlocks, &stats_->relay_buffer_bytes),
      tls_record_pool_(Endpoint::TlsRecordBlockBytes(options->buffer_bytes), kFreeRelayBlocks,
                       &stats_->tls_record_buffer_bytes),
      loop_(std::move(loop)) {}

Worker::~Worker() { Stop(); }

void Worker::AddListenSocket(size_t index, UniqueFd fd) {
  pending_sockets_.emplace_back(index, std::move(fd));
}

void Worker::Start() {
  thread_ = std::thread([this] {
    for (auto& [index, fd] : pending_sockets_) {
      auto acceptor = std::make_unique<Acceptor>(
          loop_.get(), std::move(fd), [this, i = index](UniqueFd c) { OnAccept(i, std::move(c)); });
      if (absl::Status status = acceptor->Listen(); !status.ok()) {
        log::Error("cannot watch a listening socket",
                   {{"listener", (*listeners_)[index].config.name},
                    {"error", std::string(status.message())}});
        continue;
      }
      shared_->open_listeners.fetch_add(1);
      acceptors_.push_back(std::move(acceptor));
    }
    pending_sockets_.clear();
    loop_->Run();
  });
}

void Worker::RunAndWait(std::function<void()> task) {
  if (!thread_.joinable()) return;
  absl::Notification done;
  loop_->Post([&] {
    task();
    done.Notify();
  });
  done.WaitForNotification();
}

void Worker::CloseListeners() {
  for (auto& acceptor : acceptors_) {
    if (acceptor->open()) shared_->open_listeners.fetch_sub(1);
    acceptor->Close();
  }
}

void Worker::Drain() {
  RunAndWait([this] { CloseListeners(); });
}

void Worker::Stop() {
  if (!thread_.joinable()) return;
  loop_->Post([this] {
    CloseListeners();
    std::vector<RelayConnection*> open;
    for (auto& [connection, owned] : connections_) open.push_back(connection);
    for (RelayConnection* connection : open) connection->Close();
    acceptors_.clear();
    loop_->Stop();
  });
  thread_.join();
}

void Worker::CloseDeniedPeers(std::shared_ptr<const tls::DenyList> deny) {
  if (!thread_.joinable()) return;
  loop_->Post([this, deny] {
    std::vector<RelayConnection*> open;
    for (auto& [connection, owned] : connections_) open.push_back(connection);
    for (RelayConnection* connection : open) connection->CloseIfDenied(*deny);
  });
}

void Worker::OnAccept(size_t index, UniqueFd fd) {
  const ResolvedListener& listener = (*listeners_)[index];
  const ListenerConfig::Kind kind = listener.config.kind;
  const bool inbound = IsInbound(kind);

  ConnectionInfo info;  // for failures before a RelayConnection exists
  info.direction = inbound ? Direction::kInbound : Direction::kOutbound;
  info.listener = listener.config.name;
  info.downstream = PeerAddress(fd.get()).ToString();
  info.upstream = listener.upstream ? listener.upstream->ToString() : "-";
  info.state = "accepted";

  if (shared_->active_connections.fetch_add(1) >= options_->max_connections) {
    shared_->active_connections.fetch_sub(1);
    ReportConnectionFailure(stats_.get(), info, ConnectionFailure::kConnectionLimit,
                            absl::StrCat("refused: ", options_->max_connections,
                                         " connections are open (max_connections)"));
    return;
  }

  RelayConnection::Options options;
  options.direction = info.direction;
  options.listener_name = listener.config.name;
  options.connect_timeout = options_->connect_timeout;
  options.handshake_timeout = options_->handshake_timeout;
  options.idle_timeout = options_->idle_timeout;
  options.close_on_peer_expiry = options_->close_on_peer_expiry;
  options.max_connection_age = options_->max_connection_age;
  const std::vector<identity::SpiffeIdPattern>* peers = &listener.config.peers;

  if (IsCapture(kind)) {
    absl::StatusOr<SocketAddress> original = OriginalDestination(fd.get());
    if (!original.ok()) {
      shared_->active_connections.fetch_sub(1);
      ReportConnectionFailure(
          stats_.get(), info, ConnectionFailure::kOriginalDst,
          absl::StrCat(original.status().message(),
                       "; is the iptables redirection (trellis-init) missing?"));
      return;
    }
    if (inbound) {
      // Terminate mTLS here and hand the app plaintext on loopback at the port it was sent to.
      const bool v6 = original->storage.ss_family == AF_INET6;
      options.upstream = *ParseSocketAddress(v6 ? "::1" : "127.0.0.1", original->port());
      auto policy = listener.config.port_policies.find(original->port());
      if (policy != listener.config.port_policies.end()) peers = &policy->second;
    } else {
      options.upstream = *original;
    }
  } else {
    options.upstream = *listener.upstream;
  }
  if (!peers->empty()) options.expected_peers = *peers;
  // Read once per connection; the connection keeps this context for life.
  options.context = inbound ? store_->server_context() : store_->client_context();

  auto connection = std::make_unique<RelayConnection>(
      loop_.get(), stats_.get(), &buffer_pool_, &tls_record_pool_, std::move(options),
      std::move(fd), [this](RelayConnection* closed) { OnClosed(closed); });
  RelayConnection* raw = connection.get();
  connections_.emplace(raw, std::move(connection));
  raw->Start();
}

void Worker::OnClosed(RelayConnection* connection) {
  auto it = connections_.find(connection);
  if (it == connections_.end()) return;
  loop_->DeferDelete(std::move(it->second));
  connections_.erase(it);
  shared_->active_connections.fetch_sub(1);
}

}  // namespace trellis::proxy
