#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/identity/spiffe_id.h"
#include "common/tls/deny_list.h"
#include "common/tls/tls_context.h"
#include "proxy/conn/endpoint.h"
#include "proxy/conn/failure_report.h"
#include "proxy/conn/relay_buffer.h"
#include "proxy/conn/socket_util.h"
#include "proxy/event/epoll_loop.h"
#include "proxy/stats/proxy_stats.h"

namespace trellis::proxy {

// Relays bytes between a plaintext socket and a mutual-TLS socket, in either orientation:
//   outbound: app (plaintext, accepted) -> connect -> TLS client handshake -> relay
//   inbound:  peer (TLS, accepted) -> TLS server handshake -> connect to the app -> relay
//
// Each direction has one bounded buffer of the worker's BufferPool block size; it holds a pooled
// block only while bytes wait in it (see relay_buffer.h). A side is not read while the buffer
// towards the other side is full, so a slow reader pushes back on the writer through TCP. A FIN or
// close_notify is carried across as close_notify+FIN or FIN; the connection ends when both
// directions have ended, or on the first error or timeout. Every failure is counted in the
// worker's WorkerStats and logged as one JSON line (see failure_report.h).
//
// Threading and lifetime: lives on one EpollLoop thread. The owner keeps it and is told through
// `on_closed` once it reached kClosed (possibly from inside Start()); the owner must then hand it
// to EpollLoop::DeferDelete(), never delete it directly.
class RelayConnection : public DeferredDeletable {
 public:
  enum class State { kNew, kConnecting, kHandshaking, kRelaying, kHalfClosed, kDraining, kClosed };
  static absl::string_view StateName(State state);

  struct Options {
    Direction direction = Direction::kOutbound;
    std::string listener_name;
    SocketAddress upstream;  // where to connect
    // Client context (outbound) or server context (inbound); null = no certificate yet, and the
    // connection fails at once with kNotReady.
    std::shared_ptr<const tls::TlsContext> context;
    // Replaces the context's allowed peers: the identities the destination may have (outbound),
    // or the clients this listener/port admits (inbound).
    std::optional<std::vector<identity::SpiffeIdPattern>> expected_peers;
    absl::Duration connect_timeout = absl::Seconds(5);
    absl::Duration handshake_timeout = absl::Seconds(10);
    absl::Duration idle_timeout = absl::Hours(1);
    // Close (kPeerExpired) when the verified peer leaf passes its notAfter.
    bool close_on_peer_expiry = false;
    // Close (kMaxAge) this long after Start(), +/-10% jitter; zero = never.
    absl::Duration max_connection_age = absl::ZeroDuration();
  };
  using ClosedCallback = std::function<void(RelayConnection*)>;

  // `downstream` is the accepted, non-blocking socket. Nothing happens until Start(). `pool`
  // (the worker's relay blocks) and `tls_record_pool` (blocks that gather the TLS records of one
  // write, see Endpoint::CoalesceTlsWrites) must outlive the connection.
  RelayConnection(EpollLoop* loop, WorkerStats* stats, BufferPool* pool,
                  BufferPool* tls_record_pool, Options options, UniqueFd downstream,
                  ClosedCallback on_closed);
  ~RelayConnection() override;

  void Start();

  // Closes the connection, counted as kDenied, if its verified TLS peer is on `deny`.
  bool CloseIfDenied(const tls::DenyList& deny);
  // Closes at once without counting a failure (the proxy is stopping).
  void Close();

  State state() const { return state_; }
  Direction direction() const { return options_.direction; }

 private:
  // One direction of the relay.
  struct Flow {
    Endpoint* src;
    Endpoint* dst;
    RelayBuffer buffer;
    bool src_eof = false;
    bool done = false;  // EOF forwarded: dst's sending side is shut down
    uint64_t read_bytes = 0;
    std::atomic<uint64_t>* bytes;
  };

  // The single place where state_ changes; arms and cancels the timers of each state and
  // tears the connection down on kClosed.
  void SetState(State next);

  void BeginConnect();
  void OnConnected();
  void BeginHandshake();
  void DoHandshake();
  void OnEvents(Endpoint* endpoint, uint32_t events);
  void Dispatch();
  void Pump();
  // One round of one flow; returns whether anything moved. May close the connection.
  bool PumpFlow(Flow& flow);
  void UpdateRelayState();
  void ArmIdleCheck();
  void OnIdleCheck();
  // Arms the peer-expiry timer for the verified TLS peer's leaf notAfter (handshake done).
  void ArmPeerExpiry();
  // Counts and logs `failure`, then ends both sides gracefully (close_notify/FIN) and closes.
  void CloseGracefully(ConnectionFailure failure, absl::string_view detail);
  bool Register(Endpoint* endpoint);

  void FailHandshake(tls::FailureReason reason, absl::string_view detail);
  void Fail(ConnectionFailure failure, absl::string_view detail);
  ConnectionInfo Info() const;
  Endpoint& tls_side() {
    return options_.direction == Direction::kOutbound ? upstream_ : downstream_;
  }

  EpollLoop* const loop_;
  WorkerStats* const stats_;
  BufferPool* const tls_record_pool_;
  const Options options_;
  ClosedCallback on_closed_;
  State state_ = State::kNew;
  bool started_ = false;
  std::string downstream_address_;

  Endpoint downstream_;
  Endpoint upstream_;
  std::array<Flow, 2> flows_;  // [0]: downstream -> upstream, [1]: upstream -> downstream

  TimerId connect_timer_ = kNoTimer;
  TimerId handshake_timer_ = kNoTimer;
  TimerId idle_timer_ = kNoTimer;
  // Not tied to a state: armed at Start() / handshake completion, cancelled on kClosed.
  TimerId peer_expiry_timer_ = kNoTimer;
  TimerId max_age_timer_ = kNoTimer;
  absl::Time handshake_started_;
  absl::Time last_activity_;
};

}  // namespace trellis::proxy
