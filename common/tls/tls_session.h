#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "common/identity/spiffe_id.h"
#include "common/tls/failure_reason.h"
#include "common/tls/peer_verifier.h"
#include "common/tls/tls_context.h"

namespace trellis::tls {

// The verify callback TlsContext installs on every SSL_CTX; dispatches to the TlsSession.
int VerifyPeerCallback(X509_STORE_CTX* store_ctx, void* arg);

// What a non-blocking TLS step needs next. The session never touches epoll: the caller waits
// for the fd to become readable/writable and calls again.
enum class IoAction { kDone, kWantRead, kWantWrite, kClosed, kFailed };

// The TLS endpoint of one connection on one file descriptor (blocking or not). It keeps its
// TlsContext alive, so a context swap does not affect a connection already under way.
// Not thread-safe: one connection belongs to one thread. The process must ignore SIGPIPE
// (OpenSSL writes with write(2)), as trellis-proxy's main() does.
class TlsSession {
 public:
  // `fd` is not owned. `expected_peers`, when given, replaces the context's allowed peers for
  // this connection (e.g. the identity expected of one outbound destination).
  static absl::StatusOr<std::unique_ptr<TlsSession>> Create(
      std::shared_ptr<const TlsContext> context, int fd,
      std::optional<std::vector<identity::SpiffeIdPattern>> expected_peers = std::nullopt);

  ~TlsSession();

  // Advances the handshake. kDone: peer verified, peer() holds its identity. kFailed: see
  // failure_reason() and failure_detail(). kWantRead/kWantWrite: call again when the fd is ready.
  IoAction Handshake();

  // Reads decrypted bytes into `buf`; on kDone `*n` is the count (> 0). kClosed on a clean
  // close_notify or EOF from the peer.
  IoAction Read(char* buf, size_t len, size_t* n);

  // Writes `len` bytes; on kDone `*n` bytes were taken (all of them, or a partial write when the
  // SSL has SSL_MODE_ENABLE_PARTIAL_WRITE).
  IoAction Write(const char* buf, size_t len, size_t* n);

  // Sends close_notify (best effort, non-blocking).
  void Shutdown();

  bool handshake_done() const { return handshake_done_; }
  const PeerVerification& peer() const { return peer_; }
  FailureReason failure_reason() const { return failure_reason_; }
  const std::string& failure_detail() const { return failure_detail_; }

  // The negotiated ALPN protocol, or empty.
  std::string alpn() const;

  const TlsContext& context() const { return *context_; }
  SSL* ssl() const { return ssl_.get(); }

 private:
  TlsSession(std::shared_ptr<const TlsContext> context,
             std::optional<std::vector<identity::SpiffeIdPattern>> expected_peers)
      : context_(std::move(context)), expected_peers_(std::move(expected_peers)) {}

  // Called by OpenSSL during the handshake (see tls_context.cc).
  friend int VerifyPeerCallback(X509_STORE_CTX* store_ctx, void* arg);
  int VerifyPeer(X509_STORE_CTX* store_ctx);

  IoAction Fail(int ssl_result);

  std::shared_ptr<const TlsContext> context_;
  std::optional<std::vector<identity::SpiffeIdPattern>> expected_peers_;
  crypto::UniquePtr<SSL> ssl_;
  bool handshake_done_ = false;
  bool verify_ran_ = false;
  PeerVerification peer_;
  FailureReason failure_reason_ = FailureReason::kProtocolError;
  std::string failure_detail_;
};

}  // namespace trellis::tls
