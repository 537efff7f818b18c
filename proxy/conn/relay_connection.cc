#include "proxy/conn/relay_connection.h"

#include <openssl/asn1.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/crypto/handles.h"
#include "common/tls/tls_session.h"

namespace trellis::proxy {
namespace {

// Fairness: a busy connection yields to the others after this many rounds (each round moves at
// most one buffer per direction) and continues in the next loop iteration.
constexpr int kRoundsPerEvent = 16;

size_t Dir(Direction d) { return static_cast<size_t>(d); }

// `age` scaled by a uniform factor in [0.9, 1.1], so that connections opened together (a fleet
// restarting) do not all close and reconnect at the same moment.
absl::Duration Jittered(absl::Duration age) {
  thread_local std::minstd_rand rng{std::random_device{}()};
  std::uniform_real_distribution<double> factor(0.9, 1.1);
  return age * factor(rng);
}

// The notAfter of the verified peer's leaf, or nullopt when there is none. ASN1_TIME_diff is the
// conversion both OpenSSL 3 and BoringSSL offer.
std::optional<absl::Time> PeerNotAfter(SSL* ssl) {
  crypto::UniquePtr<X509> leaf(SSL_get_peer_certificate(ssl));
  if (leaf == nullptr) return std::nullopt;
  crypto::UniquePtr<ASN1_STRING> epoch(ASN1_TIME_set(nullptr, 0));
  const ASN1_TIME* not_after = X509_get0_notAfter(leaf.get());
  int days = 0;
  int seconds = 0;
  if (epoch == nullptr || not_after == nullptr ||
      ASN1_TIME_diff(&days, &seconds, epoch.get(), not_after) != 1) {
    return std::nullopt;
  }
  return absl::FromUnixSeconds(static_cast<int64_t>(days) * 86400 + seconds);
}

}  // namespace

absl::string_view RelayConnection::StateName(State state) {
  switch (state) {
    case State::kNew:
      return "new";
    case State::kConnecting:
      return "connecting";
    case State::kHandshaking:
      return "handshaking";
    case State::kRelaying:
      return "relaying";
    case State::kHalfClosed:
      return "half_closed";
    case State::kDraining:
      return "draining";
    case State::kClosed:
      return "closed";
  }
  return "unknown";
}

RelayConnection::RelayConnection(EpollLoop* loop, WorkerStats* stats, BufferPool* pool,
                                 BufferPool* tls_record_pool, Options options, UniqueFd downstream,
                                 ClosedCallback on_closed)
    : loop_(loop),
      stats_(stats),
      tls_record_pool_(tls_record_pool),
      options_(std::move(options)),
      on_closed_(std::move(on_closed)),
      flows_{Flow{&downstream_, &upstream_, RelayBuffer(pool)},
             Flow{&upstream_, &downstream_, RelayBuffer(pool)}} {
  downstream_address_ = PeerAddress(downstream.get()).ToString();
  downstream_.Attach(std::move(downstream));
  // Byte counters are seen from the local app: towards the remote mesh peer is "sent".
  const size_t d = Dir(options_.direction);
  const bool outbound = options_.direction == Direction::kOutbound;
  flows_[0].bytes = outbound ? &stats_->bytes_sent[d] : &stats_->bytes_received[d];
  flows_[1].bytes = outbound ? &stats_->bytes_received[d] : &stats_->bytes_sent[d];
}

RelayConnection::~RelayConnection() {
  // Owners close before deleting; this only guards against a forgotten Close().
  if (state_ != State::kClosed) {
    on_closed_ = nullptr;
    SetState(State::kClosed);
  }
}

// === Lifecycle ===

void RelayConnection::SetState(State next) {
  if (state_ == State::kClosed || state_ == next) return;
  const State previous = state_;
  state_ = next;
  // Timers belong to a state; half-closed and draining keep the relay's idle check.
  if (next != State::kHalfClosed && next != State::kDraining) {
    loop_->CancelTimer(connect_timer_);
    loop_->CancelTimer(handshake_timer_);
    loop_->CancelTimer(idle_timer_);
    connect_timer_ = handshake_timer_ = idle_timer_ = kNoTimer;
  }
  switch (next) {
    case State::kNew:
      break;
    case State::kConnecting:
      connect_timer_ = loop_->AddTimer(options_.connect_timeout, [this] {
        connect_timer_ = kNoTimer;
        Fail(ConnectionFailure::kConnectTimeout,
             absl::StrCat("no answer from ", options_.upstream.ToString(), " within ",
                          absl::FormatDuration(options_.connect_timeout)));
      });
      break;
    case State::kHandshaking:
      handshake_started_ = absl::Now();
      handshake_timer_ = loop_->AddTimer(options_.handshake_timeout, [this] {
        handshake_timer_ = kNoTimer;
        FailHandshake(tls::FailureReason::kTimeout,
                      absl::StrCat("the TLS handshake did not finish within ",
                                   absl::FormatDuration(options_.handshake_timeout)));
      });
      break;
    case State::kRelaying:
      // Readiness was not tracked for relaying while connecting/handshaking: find out.
      downstream_.AssumeReady();
      upstream_.AssumeReady();
      last_activity_ = loop_->Now();
      ArmIdleCheck();
      break;
    case State::kHalfClosed:
    case State::kDraining:
      break;
    case State::kClosed:
      loop_->CancelTimer(peer_expiry_timer_);
      loop_->CancelTimer(max_age_timer_);
      peer_expiry_timer_ = max_age_timer_ = kNoTimer;
      if (previous != State::kNew || started_) {
        stats_->connections_active[Dir(options_.direction)].fetch_sub(1, std::memory_order_relaxed);
      }
      if (downstream_.token != 0) loop_->RemoveFd(downstream_.token);
      if (upstream_.token != 0) loop_->RemoveFd(upstream_.token);
      downstream_.token = upstream_.token = 0;
      downstream_.Close();
      upstream_.Close();
      for (Flow& flow : flows_) flow.buffer.Release();
      if (on_closed_) {
        ClosedCallback callback = std::move(on_closed_);
        on_closed_ = nullptr;
        callback(this);
      }
      break;
  }
}

void RelayConnection::Start() {
  const size_t d = Dir(options_.direction);
  stats_->connections_total[d].fetch_add(1, std::memory_order_relaxed);
  stats_->connections_active[d].fetch_add(1, std::memory_order_relaxed);
  started_ = true;
  if (options_.max_connection_age > absl::ZeroDuration()) {
    const absl::Duration age = Jittered(options_.max_connection_age);
    max_age_timer_ = loop_->AddTimer(age, [this, age] {
      max_age_timer_ = kNoTimer;
      CloseGracefully(
          ConnectionFailure::kMaxAge,
          absl::StrCat("the connection is ", absl::FormatDuration(age), " old (max_connection_age ",
                       absl::FormatDuration(options_.max_connection_age), " with jitter)"));
    });
  }
  if (!Register(&downstream_)) return;
  if (options_.context == nullptr) {
    FailHandshake(tls::FailureReason::kNotReady,
                  "the proxy has no workload certificate yet (identity not issued)");
    return;
  }
  if (options_.direction == Direction::kInbound) {
    BeginHandshake();
  } else {
    BeginConnect();
  }
}

void RelayConnection::Close() { SetState(State::kClosed); }

bool RelayConnection::CloseIfDenied(const tls::DenyList& deny) {
  tls::TlsSession* session = tls_side().tls();
  if (state_ == State::kClosed || session == nullptr || !session->handshake_done()) return false;
  const tls::PeerVerification& peer = session->peer();
  if (!peer.peer_id.has_value() || !deny.IsDenied(peer.peer_serial_hex, *peer.peer_id)) {
    return false;
  }
  Fail(ConnectionFailure::kDenied,
       absl::StrCat("closed an established connection: the peer ", peer.peer_id->ToString(),
                    " (serial ", peer.peer_serial_hex, ") is now on the deny-list"));
  return true;
}

bool RelayConnection::Register(Endpoint* endpoint) {
  absl::StatusOr<FdToken> token =
      loop_->AddFd(endpoint->fd(), [this, endpoint](uint32_t ev) { OnEvents(endpoint, ev); });
  if (!token.ok()) {
    Fail(ConnectionFailure::kReset, token.status().message());
    return false;
  }
  endpoint->token = *token;
  return true;
}

void RelayConnection::BeginConnect() {
  bool in_progress = false;
  absl::StatusOr<UniqueFd> fd = StartConnect(options_.upstream, &in_progress);
  if (!fd.ok()) {
    Fail(ConnectionFailure::kUpstreamConnect, fd.status().message());
    return;
  }
  upstream_.Attach(*std::move(fd));
  if (!Register(&upstream_)) return;
  SetState(State::kConnecting);
  if (!in_progress) OnConnected();
}

void RelayConnection::OnConnected() {
  if (options_.direction == Direction::kOutbound) {
    BeginHandshake();
  } else {
    SetState(State::kRelaying);
    Pump();
  }
}

void RelayConnection::BeginHandshake() {
  Endpoint& side = tls_side();
  absl::StatusOr<std::unique_ptr<tls::TlsSession>> session =
      tls::TlsSession::Create(options_.context, side.fd(), options_.expected_peers);
  if (!session.ok()) {
    FailHandshake(tls::FailureReason::kProtocolError, session.status().message());
    return;
  }
  side.AttachTls(*std::move(session));
  SetState(State::kHandshaking);
  DoHandshake();
}

void RelayConnection::DoHandshake() {
  tls::TlsSession* session = tls_side().tls();
  switch (session->Handshake()) {
    case tls::IoAction::kDone:
      stats_->ObserveHandshake(options_.direction, absl::Now() - handshake_started_);
      tls_side().CoalesceTlsWrites(tls_record_pool_);
      if (options_.close_on_peer_expiry) ArmPeerExpiry();
      if (options_.direction == Direction::kInbound) {
        BeginConnect();
      } else {
        SetState(State::kRelaying);
        Pump();
      }
      return;
    case tls::IoAction::kWantRead:
    case tls::IoAction::kWantWrite:
      return;  // edge-triggered: the next event on the TLS socket resumes the handshake
    default:
      FailHandshake(session->failure_reason(), session->failure_detail());
      return;
  }
}

// === Events and relaying ===

void RelayConnection::OnEvents(Endpoint* endpoint, uint32_t events) {
  endpoint->OnEvents(events);
  Dispatch();
}

void RelayConnection::Dispatch() {
  switch (state_) {
    case State::kConnecting:
      if (upstream_.writable()) {
        const int error = ConnectResult(upstream_.fd());
        if (error != 0) {
          Fail(ConnectionFailure::kUpstreamConnect,
               absl::StrCat("connect to ", options_.upstream.ToString(), ": ",
                            std::strerror(error)));
          return;
        }
        OnConnected();
      }
      return;
    case State::kHandshaking:
      DoHandshake();
      return;
    case State::kRelaying:
    case State::kHalfClosed:
    case State::kDraining:
      Pump();
      return;
    case State::kNew:
    case State::kClosed:
      return;
  }
}

void RelayConnection::Pump() {
  for (int round = 0; round < kRoundsPerEvent; ++round) {
    bool progress = false;
    for (Flow& flow : flows_) {
      progress |= PumpFlow(flow);
      if (state_ == State::kClosed) return;
    }
    UpdateRelayState();
    if (state_ == State::kClosed || !progress) return;
  }
  // Still busy: let the other connections of this worker run, and continue next iteration.
  loop_->Activate(downstream_.token, 0);
}

bool RelayConnection::PumpFlow(Flow& flow) {
  bool progress = false;
  std::string error;
  // Fill the buffer before writing: a TLS source yields one record (16 KB at most) per read, and
  // one large write costs the kernel far less per byte than several small ones.
  bool source_may_have_more = true;
  while (source_may_have_more && !flow.src_eof && !flow.buffer.full() && flow.src->CanRead()) {
    char* into = flow.buffer.WritePtr();
    size_t n = 0;
    switch (flow.src->Read(into, flow.buffer.WritableBytes(), &n, &error)) {
      case Endpoint::Io::kDone:
        flow.buffer.Commit(n);
        flow.read_bytes += n;
        progress = true;
        break;
      case Endpoint::Io::kEof:
        flow.src_eof = true;
        progress = true;
        break;
      case Endpoint::Io::kAgain:
        source_may_have_more = false;
        break;
      case Endpoint::Io::kError: {
        const bool from_tls = flow.src->is_tls();
        // A TLS 1.3 client finishes its handshake before the server checks the client's
        // certificate; a rejection then arrives as an alert on the first read.
        if (from_tls && flow.src->received_alert() >= 0 && flow.read_bytes == 0 &&
            options_.direction == Direction::kOutbound) {
          FailHandshake(tls::FailureReason::kPeerRejected,
                        absl::StrCat(error, " right after the handshake"));
        } else {
          Fail(ConnectionFailure::kReset,
               absl::StrCat(&flow == &flows_[0] ? "downstream " : "upstream ", error));
        }
        return false;
      }
    }
  }
  if (flow.buffer.empty() && flow.dst->has_pending_output() && flow.dst->CanWrite()) {
    // Records gathered by an earlier write wait for a socket that was full.
    switch (flow.dst->Flush(&error)) {
      case Endpoint::Io::kDone:
        progress = true;
        break;
      case Endpoint::Io::kError:
        Fail(ConnectionFailure::kReset,
             absl::StrCat(&flow == &flows_[0] ? "upstream " : "downstream ", error));
        return false;
      default:
        break;
    }
  }
  if (!flow.buffer.empty() && flow.dst->CanWrite()) {
    size_t n = 0;
    switch (flow.dst->Write(flow.buffer.ReadPtr(), flow.buffer.size(), &n, &error)) {
      case Endpoint::Io::kDone:
        flow.buffer.Consume(n);
        flow.bytes->fetch_add(n, std::memory_order_relaxed);
        progress = true;
        break;
      case Endpoint::Io::kAgain:
      case Endpoint::Io::kEof:
        break;
      case Endpoint::Io::kError:
        Fail(ConnectionFailure::kReset,
             absl::StrCat(&flow == &flows_[0] ? "upstream " : "downstream ", error));
        return false;
    }
  }
  // A read that found nothing leaves an empty block; it serves other connections meanwhile.
  flow.buffer.Release();
  if (flow.src_eof && flow.buffer.empty() && !flow.done) {
    if (flow.dst->ShutdownWrite() == Endpoint::Io::kDone) {
      flow.done = true;
      progress = true;
    }
  }
  if (progress) last_activity_ = loop_->Now();
  return progress;
}

void RelayConnection::UpdateRelayState() {
  if (flows_[0].done && flows_[1].done) {
    SetState(State::kClosed);
  } else if (flows_[0].src_eof && flows_[1].src_eof) {
    SetState(State::kDraining);
  } else if (flows_[0].done || flows_[1].done) {
    SetState(State::kHalfClosed);
  }
}

void RelayConnection::ArmIdleCheck() {
  // Relay buffers need no idle release: they hold pooled blocks only while bytes wait in them.
  const absl::Duration remaining = options_.idle_timeout - (loop_->Now() - last_activity_);
  idle_timer_ = loop_->AddTimer(std::max(remaining, absl::Milliseconds(1)), [this] {
    idle_timer_ = kNoTimer;
    OnIdleCheck();
  });
}

void RelayConnection::OnIdleCheck() {
  const absl::Duration idle = absl::Now() - last_activity_;
  if (idle >= options_.idle_timeout) {
    Fail(ConnectionFailure::kIdleTimeout,
         absl::StrCat("no bytes either way for ", absl::FormatDuration(idle), " (idle timeout ",
                      absl::FormatDuration(options_.idle_timeout), ")"));
    return;
  }
  ArmIdleCheck();
}

// === Expiry and age ===

void RelayConnection::ArmPeerExpiry() {
  const tls::TlsSession* session = tls_side().tls();
  if (session == nullptr) return;
  const std::optional<absl::Time> not_after = PeerNotAfter(session->ssl());
  if (!not_after.has_value()) return;
  const absl::Time at = *not_after;
  // Fires just after notAfter (a certificate is valid through its notAfter second).
  const absl::Duration delay =
      std::max(at - absl::Now(), absl::ZeroDuration()) + absl::Milliseconds(1);
  peer_expiry_timer_ = loop_->AddTimer(delay, [this, at] {
    peer_expiry_timer_ = kNoTimer;
    CloseGracefully(ConnectionFailure::kPeerExpired,
                    absl::StrCat("closed an established connection: the peer certificate expired "
                                 "at ",
                                 absl::FormatTime(absl::RFC3339_sec, at, absl::UTCTimeZone()),
                                 " (close_on_peer_expiry)"));
  });
}

void RelayConnection::CloseGracefully(ConnectionFailure failure, absl::string_view detail) {
  if (state_ == State::kClosed) return;
  ReportConnectionFailure(stats_, Info(), failure, detail);
  // Best effort, never blocking: close_notify + FIN on the TLS side and FIN on the plaintext
  // side, so both ends see an orderly end of stream rather than a reset. Bytes still buffered
  // in the relay are dropped.
  const bool relaying =
      state_ == State::kRelaying || state_ == State::kHalfClosed || state_ == State::kDraining;
  if (relaying) {
    for (Flow& flow : flows_) {
      if (!flow.done) (void)flow.dst->ShutdownWrite();
    }
  } else {
    Endpoint& side = tls_side();
    if (side.tls() != nullptr && side.tls()->handshake_done()) (void)side.ShutdownWrite();
  }
  SetState(State::kClosed);
}

// === Failures ===

ConnectionInfo RelayConnection::Info() const {
  ConnectionInfo info;
  info.direction = options_.direction;
  info.listener = options_.listener_name;
  info.downstream = downstream_address_;
  info.upstream = options_.upstream.ToString();
  if (options_.context != nullptr) info.local_identity = options_.context->spiffe_id().ToString();
  const tls::TlsSession* session =
      options_.direction == Direction::kOutbound ? upstream_.tls() : downstream_.tls();
  if (session != nullptr) {
    if (session->peer().peer_id.has_value()) {
      info.peer_identity = session->peer().peer_id->ToString();
    }
    info.peer_serial = session->peer().peer_serial_hex;
  }
  info.state = std::string(StateName(state_));
  return info;
}

void RelayConnection::FailHandshake(tls::FailureReason reason, absl::string_view detail) {
  if (state_ == State::kClosed) return;
  ReportHandshakeFailure(stats_, Info(), reason, detail);
  SetState(State::kClosed);
}

void RelayConnection::Fail(ConnectionFailure failure, absl::string_view detail) {
  if (state_ == State::kClosed) return;
  ReportConnectionFailure(stats_, Info(), failure, detail);
  SetState(State::kClosed);
}

}  // namespace trellis::proxy
