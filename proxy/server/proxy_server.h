#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tls/deny_list.h"
#include "proxy/identity/context_store.h"
#include "proxy/listener/listener_config.h"
#include "proxy/server/proxy_options.h"
#include "proxy/server/worker.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

// The proxy's data plane: N worker threads, each with its own EpollLoop, its own SO_REUSEPORT
// socket per listener, its own connections and WorkerStats. Workers share no lock on the hot
// path: TLS contexts are read from the ContextStore once per new connection, and the connection
// limit is one relaxed atomic counter.
//
// Threading: every method is called from a control thread (never from a worker). The
// ContextStore must outlive the server.
class ProxyServer {
 public:
  // Validates `options` (listener names unique and non-empty, numeric addresses, an upstream for
  // explicit kinds) and creates the workers' loops; nothing is bound yet.
  static absl::StatusOr<std::unique_ptr<ProxyServer>> Create(ProxyOptions options,
                                                             ContextStore* store);
  ~ProxyServer();

  // Binds every listener once per worker with SO_REUSEPORT (port 0: the first bind picks the
  // port, the other workers join it) and starts the worker threads. Also makes the process
  // ignore SIGPIPE (OpenSSL writes with write(2)).
  absl::Status Start();

  // The port a listener is bound to (after Start), 0 for an unknown name.
  uint16_t BoundPort(const std::string& listener_name) const;
  // True while every worker's listening sockets are open.
  bool listeners_up() const;

  // Stops accepting: closes every listening socket and returns once they are closed. Existing
  // connections go on until they end.
  void Drain();
  size_t active_connections() const;
  // Closes everything and joins the workers. Idempotent; the destructor calls it.
  void Stop();

  std::vector<const WorkerStats*> worker_stats() const;

  // Asynchronously, on every worker: closes established connections whose verified peer serial
  // or SPIFFE ID is on `deny`, each counted as ConnectionFailure::kDenied.
  void CloseDeniedPeers(const tls::DenyList& deny);

 private:
  ProxyServer(ProxyOptions options, std::vector<ResolvedListener> listeners, ContextStore* store)
      : options_(std::move(options)), listeners_(std::move(listeners)), store_(store) {}

  const ProxyOptions options_;
  const std::vector<ResolvedListener> listeners_;
  ContextStore* const store_;
  SharedCounters shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<std::string, uint16_t> bound_ports_;
  bool started_ = false;
};

}  // namespace trellis::proxy
