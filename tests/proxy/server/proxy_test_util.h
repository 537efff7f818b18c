#pragma once

// Helpers for proxy tests over real sockets on 127.0.0.1: a backend (echo / send-and-close /
// stalled sink) on its own EpollLoop thread, blocking clients with bounded waits, a proxy pair
// (explicit outbound -> explicit inbound -> backend) with credentials from test_pki, log capture
// and stats sums.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "proxy/event/epoll_loop.h"
#include "proxy/event/unique_fd.h"
#include "proxy/identity/context_store.h"
#include "proxy/server/proxy_server.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::proxy::testing {

// Polls `predicate` every millisecond for at most `timeout`.
bool WaitUntil(const std::function<bool()>& predicate, absl::Duration timeout = absl::Seconds(10));

// A TCP server on 127.0.0.1:0 run by one EpollLoop thread.
class Backend {
 public:
  enum class Mode {
    kEcho,          // echoes; after the client's EOF, sends the rest then closes
    kSendAndClose,  // sends `send_bytes` of Pattern() then closes, reading nothing
    kStall,         // reads nothing until Resume(), then sinks (counts) until EOF
  };
  explicit Backend(Mode mode, size_t send_bytes = 0);
  ~Backend();
  uint16_t port() const { return port_; }
  void Resume();
  uint64_t sunk_bytes() const { return sunk_.load(); }
  bool sink_done() const { return sink_done_.load(); }
  int accepted() const { return accepted_.load(); }

 private:
  struct Conn;
  void OnAccept();
  void Service(Conn* conn);
  void Close(Conn* conn);

  Mode mode_;
  size_t send_bytes_;
  std::unique_ptr<EpollLoop> loop_;
  UniqueFd listen_fd_;
  uint16_t port_ = 0;
  std::vector<std::unique_ptr<Conn>> conns_;
  bool resumed_ = false;
  std::atomic<uint64_t> sunk_{0};
  std::atomic<bool> sink_done_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// Deterministic test data: byte i of the stream.
char Pattern(uint64_t i);

// A blocking TCP connection to 127.0.0.1:port with send/receive timeouts; invalid on failure.
UniqueFd ConnectTo(uint16_t port, absl::Duration timeout = absl::Seconds(10));

// Reads until EOF, error or timeout. Returns the bytes; *eof tells whether EOF was seen.
std::string ReadAll(int fd, bool* eof);
bool WriteAll(int fd, const std::string& data);

// SHA-256 hex of a byte stream fed in pieces.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  void Update(const char* data, size_t n);
  std::string Hex();

 private:
  void* ctx_;
};

// Captures the process's JSON log lines into a temporary file.
class LogCapture {
 public:
  LogCapture();
  std::string Text() const;
  // Waits until one line contains every one of `parts`.
  bool WaitForLine(const std::vector<std::string>& parts,
                   absl::Duration timeout = absl::Seconds(10)) const;

 private:
  std::string path_;
};

uint64_t HandshakeFailures(const ProxyServer& server, Direction d, tls::FailureReason reason);
uint64_t ConnectionFailures(const ProxyServer& server, Direction d, ConnectionFailure failure);

// The mesh used by the tests: one root, a client workload and a server workload.
struct TestMesh {
  TestMesh();
  trellis::testing::TestCa root;
  trellis::testing::TestLeaf client_leaf;  // spiffe://cluster.local/ns/a/sa/client
  trellis::testing::TestLeaf server_leaf;  // spiffe://cluster.local/ns/b/sa/server
  Credentials CredentialsFor(const trellis::testing::TestLeaf& leaf) const;
};

inline constexpr char kClientId[] = "spiffe://cluster.local/ns/a/sa/client";
inline constexpr char kServerId[] = "spiffe://cluster.local/ns/b/sa/server";

ListenerConfig Explicit(ListenerConfig::Kind kind, const std::string& name, uint16_t upstream_port,
                        std::vector<std::string> peers = {});

// Explicit outbound ("out") -> explicit inbound ("in") -> 127.0.0.1:backend_port.
struct ProxyPair {
  // `tweak` adjusts the options of both proxies before they start.
  ProxyPair(const TestMesh& mesh, uint16_t backend_port,
            const std::function<void(ProxyOptions&)>& tweak = nullptr,
            std::vector<std::string> inbound_peers = {},
            std::vector<std::string> outbound_peers = {});
  uint16_t out_port() const { return outbound->BoundPort("out"); }
  uint16_t in_port() const { return inbound->BoundPort("in"); }

  ContextStore out_store;
  ContextStore in_store;
  std::unique_ptr<ProxyServer> inbound;
  std::unique_ptr<ProxyServer> outbound;
};

}  // namespace trellis::proxy::testing
