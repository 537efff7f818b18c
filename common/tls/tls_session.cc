#include "common/tls/tls_session.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"

namespace trellis::tls {
namespace {

// The SSL ex_data slot that points back at the owning TlsSession.
int SessionIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// The X509_V_ERR code whose alert best tells the peer why we refused it.
int VerifyErrorFor(FailureReason reason) {
  switch (reason) {
    case FailureReason::kExpired:
      return X509_V_ERR_CERT_HAS_EXPIRED;
    case FailureReason::kNotYetValid:
      return X509_V_ERR_CERT_NOT_YET_VALID;
    case FailureReason::kUnknownCa:
      return X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY;
    case FailureReason::kRevoked:
      return X509_V_ERR_CERT_REVOKED;
    default:
      return X509_V_ERR_APPLICATION_VERIFICATION;
  }
}

// True for reasons OpenSSL/BoringSSL report when the bytes received are not a TLS record.
bool IsNotTlsReason(int reason) {
  switch (reason) {
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_UNKNOWN_PROTOCOL:
#ifdef SSL_R_PACKET_LENGTH_TOO_LONG
    case SSL_R_PACKET_LENGTH_TOO_LONG:
#endif
#ifdef SSL_R_RECORD_LAYER_FAILURE
    case SSL_R_RECORD_LAYER_FAILURE:
#endif
#ifdef SSL_R_UNEXPECTED_RECORD
    case SSL_R_UNEXPECTED_RECORD:
#endif
      return true;
    default:
      return false;
  }
}

// OpenSSL 3 reports a TCP close mid-handshake as an SSL error rather than SSL_ERROR_SYSCALL.
bool IsEofReason(int reason) {
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
  if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) return true;
#endif
  return false;
}

// Both backends report a received alert as reason 1000 + the alert code (SSL_AD_REASON_OFFSET).
constexpr int kAlertReasonOffset = 1000;

}  // namespace

int VerifyPeerCallback(X509_STORE_CTX* store_ctx, void* /*arg*/) {
  SSL* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* session =
      ssl == nullptr ? nullptr : static_cast<TlsSession*>(SSL_get_ex_data(ssl, SessionIndex()));
  if (session == nullptr) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return session->VerifyPeer(store_ctx);
}

absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::Create(
    std::shared_ptr<const TlsContext> context, int fd,
    std::optional<std::vector<identity::SpiffeIdPattern>> expected_peers) {
  if (context == nullptr) return absl::FailedPreconditionError("no TLS context");
  std::unique_ptr<TlsSession> session(
      new TlsSession(std::move(context), std::move(expected_peers)));
  session->ssl_.reset(SSL_new(session->context_->ssl_ctx()));
  SSL* ssl = session->ssl_.get();
  if (ssl == nullptr || SSL_set_fd(ssl, fd) != 1 ||
      SSL_set_ex_data(ssl, SessionIndex(), session.get()) != 1) {
    return crypto::OpenSslInternalError("cannot create a TLS session");
  }
  if (session->context_->role() == TlsRole::kServer) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
  }
  return session;
}

TlsSession::~TlsSession() = default;

int TlsSession::VerifyPeer(X509_STORE_CTX* store_ctx) {
  verify_ran_ = true;
  const PeerRole peer_role =
      context_->role() == TlsRole::kServer ? PeerRole::kClient : PeerRole::kServer;
  peer_ = context_->verifier().Verify(
      X509_STORE_CTX_get0_cert(store_ctx), X509_STORE_CTX_get0_untrusted(store_ctx), peer_role,
      context_->Now(), expected_peers_.has_value() ? *expected_peers_ : context_->allowed_peers());
  if (peer_.ok()) return 1;
  X509_STORE_CTX_set_error(store_ctx, VerifyErrorFor(*peer_.reason));
  return 0;
}

IoAction TlsSession::Handshake() {
  if (handshake_done_) return IoAction::kDone;
  const int result = SSL_do_handshake(ssl_.get());
  if (result == 1) {
    if (!verify_ran_) {
      // Cannot happen with SSL_VERIFY_PEER, but a session that skipped verification must never
      // pass as verified.
      failure_reason_ = FailureReason::kNoPeerCertificate;
      failure_detail_ = "the peer's certificate was never verified";
      return IoAction::kFailed;
    }
    handshake_done_ = true;
    return IoAction::kDone;
  }
  return Fail(result);
}

IoAction TlsSession::Fail(int ssl_result) {
  const int error = SSL_get_error(ssl_.get(), ssl_result);
  if (error == SSL_ERROR_WANT_READ) return IoAction::kWantRead;
  if (error == SSL_ERROR_WANT_WRITE) return IoAction::kWantWrite;

  const unsigned long first = ERR_peek_error();  // NOLINT(runtime/int)
  if (verify_ran_ && !peer_.ok()) {
    failure_reason_ = *peer_.reason;
    failure_detail_ = peer_.detail;
  } else if (error == SSL_ERROR_SYSCALL || error == SSL_ERROR_ZERO_RETURN || first == 0) {
    failure_reason_ = FailureReason::kConnectionReset;
    failure_detail_ =
        errno != 0 && error == SSL_ERROR_SYSCALL
            ? absl::StrCat("connection closed during the handshake: ", std::strerror(errno))
            : "the peer closed the connection during the handshake";
  } else {
    const int reason = ERR_GET_REASON(first);
    const char* text = ERR_reason_error_string(first);
    const std::string reason_text = text != nullptr ? text : absl::StrCat("error ", reason);
    if (IsEofReason(reason)) {
      failure_reason_ = FailureReason::kConnectionReset;
      failure_detail_ = "the peer closed the connection during the handshake";
    } else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
      failure_reason_ = FailureReason::kNoPeerCertificate;
      failure_detail_ = "the peer sent no client certificate";
    } else if (IsNotTlsReason(reason)) {
      failure_reason_ = FailureReason::kNotTls;
      failure_detail_ = absl::StrCat("the peer did not speak TLS (", reason_text, ")");
    } else if (reason > kAlertReasonOffset && reason < kAlertReasonOffset + 256) {
      failure_reason_ = FailureReason::kPeerRejected;
      failure_detail_ = absl::StrCat("the peer sent TLS alert \"",
                                     SSL_alert_desc_string_long(reason - kAlertReasonOffset), "\"");
    } else {
      failure_reason_ = FailureReason::kProtocolError;
      failure_detail_ = reason_text;
    }
  }
  crypto::ClearOpenSslErrors();
  return IoAction::kFailed;
}

IoAction TlsSession::Read(char* buf, size_t len, size_t* n) {
  const int result = SSL_read(ssl_.get(), buf, static_cast<int>(len));
  if (result > 0) {
    *n = static_cast<size_t>(result);
    return IoAction::kDone;
  }
  *n = 0;
  switch (SSL_get_error(ssl_.get(), result)) {
    case SSL_ERROR_WANT_READ:
      return IoAction::kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return IoAction::kWantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return IoAction::kClosed;
    case SSL_ERROR_SYSCALL:
      // EOF without close_notify: the peer's TCP half-close. Treated as the end of its stream.
      if (ERR_peek_error() == 0 && errno == 0) return IoAction::kClosed;
      [[fallthrough]];
    default:
      crypto::ClearOpenSslErrors();
      return IoAction::kFailed;
  }
}

IoAction TlsSession::Write(const char* buf, size_t len, size_t* n) {
  const int result = SSL_write(ssl_.get(), buf, static_cast<int>(len));
  if (result > 0) {
    *n = static_cast<size_t>(result);
    return IoAction::kDone;
  }
  *n = 0;
  switch (SSL_get_error(ssl_.get(), result)) {
    case SSL_ERROR_WANT_READ:
      return IoAction::kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return IoAction::kWantWrite;
    default:
      crypto::ClearOpenSslErrors();
      return IoAction::kFailed;
  }
}

void TlsSession::Shutdown() {
  SSL_shutdown(ssl_.get());
  crypto::ClearOpenSslErrors();
}

std::string TlsSession::alpn() const {
  const uint8_t* data = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

}  // namespace trellis::tls
