#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tls/deny_list.h"
#include "proxy/conn/relay_buffer.h"
#include "proxy/conn/relay_connection.h"
#include "proxy/conn/socket_util.h"
#include "proxy/event/epoll_loop.h"
#include "proxy/identity/context_store.h"
#include "proxy/listener/acceptor.h"
#include "proxy/listener/listener_config.h"
#include "proxy/server/proxy_options.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

// A listener with its addresses parsed once, at ProxyServer::Create().
struct ResolvedListener {
  ListenerConfig config;
  SocketAddress bind;
  std::optional<SocketAddress> upstream;  // explicit kinds
};

// Counters shared by all workers: the only cross-worker state on the accept path (two relaxed
// atomics, no lock).
struct SharedCounters {
  std::atomic<size_t> active_connections{0};
  std::atomic<int> open_listeners{0};
};

// One worker thread: an EpollLoop, an Acceptor per listener (its own SO_REUSEPORT socket), the
// connections it accepted and their WorkerStats. Everything but the public methods below runs
// on the worker thread; the public methods post to it.
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Create(
      const ProxyOptions* options, const std::vector<ResolvedListener>* listeners,
      ContextStore* store, SharedCounters* shared);
  ~Worker();

  // Before Start(): the listening socket for listeners[index].
  void AddListenSocket(size_t index, UniqueFd fd);
  // Starts the thread, which registers its acceptors and runs the loop.
  void Start();
  // Closes this worker's listening sockets; returns once done (bounded by the loop's progress).
  void Drain();
  // Closes every connection and listener, stops the loop and joins the thread. Idempotent.
  void Stop();
  // Closes (as kDenied) the connections whose verified peer is on `deny`.
  void CloseDeniedPeers(std::shared_ptr<const tls::DenyList> deny);

  const WorkerStats* stats() const { return stats_.get(); }

 private:
  Worker(const ProxyOptions* options, const std::vector<ResolvedListener>* listeners,
         ContextStore* store, SharedCounters* shared, std::unique_ptr<EpollLoop> loop);

  // Runs `task` on the worker thread and waits for it.
  void RunAndWait(std::function<void()> task);
  void OnAccept(size_t index, UniqueFd fd);
  void OnClosed(RelayConnection* connection);
  void CloseListeners();

  const ProxyOptions* const options_;
  const std::vector<ResolvedListener>* const listeners_;
  ContextStore* const store_;
  SharedCounters* const shared_;
  std::unique_ptr<WorkerStats> stats_;
  // Relay blocks of this worker's connections; declared after stats_ (which it writes) and
  // before loop_ so that it outlives the connections the loop deletes last.
  BufferPool buffer_pool_;
  // Ciphertext of one write waiting for its single send (Endpoint::CoalesceTlsWrites).
  BufferPool tls_record_pool_;
  std::unique_ptr<EpollLoop> loop_;
  std::vector<std::pair<size_t, UniqueFd>> pending_sockets_;  // until the thread starts
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  absl::flat_hash_map<RelayConnection*, std::unique_ptr<RelayConnection>> connections_;
  std::thread thread_;
};

}  // namespace trellis::proxy
