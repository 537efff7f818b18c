#include "proxy/conn/endpoint.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "proxy/conn/socket_util.h"

namespace trellis::proxy {
namespace {

int EndpointIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// Records fatal and warning alerts the peer sends, so that a rejection after our side of the
// handshake finished (TLS 1.3 clients finish before the server checks their certificate) can
// be reported with the alert's name.
void InfoCallback(const SSL* ssl, int where, int ret) {
  if ((where & SSL_CB_ALERT) == 0 || (where & SSL_CB_READ) == 0) return;
  auto* endpoint = static_cast<Endpoint*>(SSL_get_ex_data(ssl, EndpointIndex()));
  if (endpoint != nullptr && (ret & 0xff) != SSL_AD_CLOSE_NOTIFY) {
    endpoint->set_received_alert(ret & 0xff);
  }
}

#ifndef OPENSSL_IS_BORINGSSL
// Sees the result of every read and write OpenSSL makes on the socket. A read that returns fewer
// bytes than asked (or EAGAIN, or EOF) means the kernel queue was empty at that moment; with
// edge-triggered epoll anything arriving later raises a new event, so the relay need not issue
// one more read only to collect EAGAIN. Likewise a short write means the send buffer is full.
// (BoringSSL has no BIO callbacks; there the relay simply reads and writes until EAGAIN.)
long SocketBioCallback(BIO* bio, int oper, const char* /*argp*/, size_t len, int /*argi*/,
                       long /*argl*/, int ret, size_t* processed) {
  const bool read = oper == (BIO_CB_READ | BIO_CB_RETURN);
  if (!read && oper != (BIO_CB_WRITE | BIO_CB_RETURN)) return ret;
  auto* endpoint = reinterpret_cast<Endpoint*>(BIO_get_callback_arg(bio));
  if (endpoint != nullptr) {
    endpoint->OnSocketIo(read, ret <= 0 || processed == nullptr || *processed < len);
  }
  return ret;
}
#endif

}  // namespace

Endpoint::~Endpoint() { Close(); }

void Endpoint::Attach(UniqueFd fd) {
  fd_ = std::move(fd);
  SetNoDelay(fd_.get());
}

void Endpoint::AttachTls(std::unique_ptr<tls::TlsSession> session) {
  tls_ = std::move(session);
  SSL* ssl = tls_->ssl();
  SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                        SSL_MODE_RELEASE_BUFFERS);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
  // A TCP FIN without close_notify ends the peer's stream like a plaintext EOF would.
  SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
  // Read-ahead: one socket read takes every record already queued (up to the buffer) instead of
  // one read for each record header and one for each body; buffered records are still returned
  // by later SSL_read calls, and the relay's short-read check below consults SSL_has_pending().
  SSL_set_read_ahead(ssl, 1);
  SSL_set_ex_data(ssl, EndpointIndex(), this);
  SSL_set_info_callback(ssl, InfoCallback);
#ifndef OPENSSL_IS_BORINGSSL
  // SSL_set_fd gave the SSL one socket BIO for both directions.
  if (BIO* bio = SSL_get_rbio(ssl); bio != nullptr && bio == SSL_get_wbio(ssl)) {
    BIO_set_callback_arg(bio, reinterpret_cast<char*>(this));
    BIO_set_callback_ex(bio, SocketBioCallback);
  }
#endif
}

void Endpoint::Close() {
  if (tls_ != nullptr) {
    SSL_set_ex_data(tls_->ssl(), EndpointIndex(), nullptr);
#ifndef OPENSSL_IS_BORINGSSL
    if (BIO* bio = SSL_get_rbio(tls_->ssl()); bio != nullptr) BIO_set_callback_ex(bio, nullptr);
#endif
  }
  tls_.reset();
  fd_.Reset();
}

void Endpoint::OnEvents(uint32_t events) {
  // An edge means something may have arrived (or room appeared) after the last socket read or
  // write OpenSSL made, so what that read or write showed is stale: a TLS read that is served
  // from OpenSSL's buffer must not mark the socket drained on its strength.
  if (events & kReadable) {
    readable_ = true;
    socket_read_drained_ = false;
  }
  if (events & kWritable) {
    writable_ = true;
    socket_write_full_ = false;
  }
  if (events & kClosedOrError) hangup_seen_ = true;
}

Endpoint::Io Endpoint::Read(char* buf, size_t len, size_t* n, std::string* error) {
  *n = 0;
  if (tls_ != nullptr) {
    errno = 0;
    switch (tls_->Read(buf, len, n)) {
      case tls::IoAction::kDone:
        read_needs_write_ = false;
        // Drained: the socket had nothing more and OpenSSL holds no further record.
        if (socket_read_drained_ && !hangup_seen_ && SSL_has_pending(tls_->ssl()) == 0) {
          readable_ = false;
        }
        return Io::kDone;
      case tls::IoAction::kWantRead:
        read_needs_write_ = false;
        readable_ = false;
        return Io::kAgain;
      case tls::IoAction::kWantWrite:
        read_needs_write_ = true;
        writable_ = false;
        return Io::kAgain;
      case tls::IoAction::kClosed:
        return Io::kEof;
      default:
        *error = received_alert_ >= 0
                     ? absl::StrCat("the peer sent TLS alert \"",
                                    SSL_alert_desc_string_long(received_alert_), "\"")
                     : absl::StrCat("TLS read failed",
                                    errno != 0 ? absl::StrCat(": ", std::strerror(errno)) : "");
        return Io::kError;
    }
  }
  for (;;) {
    const ssize_t r = recv(fd_.get(), buf, len, 0);
    if (r > 0) {
      *n = static_cast<size_t>(r);
      // A short read emptied the queue; the next arrival raises a new edge. Not after a hangup
      // report: the FIN behind the data has had its edge already.
      if (static_cast<size_t>(r) < len && !hangup_seen_) readable_ = false;
      return Io::kDone;
    }
    if (r == 0) return Io::kEof;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      readable_ = false;
      return Io::kAgain;
    }
    *error = absl::StrCat("read: ", std::strerror(errno));
    return Io::kError;
  }
}

Endpoint::Io Endpoint::Write(const char* buf, size_t len, size_t* n, std::string* error) {
  *n = 0;
  if (tls_ != nullptr) {
    errno = 0;
    switch (tls_->Write(buf, len, n)) {
      case tls::IoAction::kDone:
        write_needs_read_ = false;
        if (socket_write_full_) writable_ = false;  // the next write would only see EAGAIN
        return Io::kDone;
      case tls::IoAction::kWantWrite:
        write_needs_read_ = false;
        writable_ = false;
        return Io::kAgain;
      case tls::IoAction::kWantRead:
        write_needs_read_ = true;
        readable_ = false;
        return Io::kAgain;
      default:
        *error = absl::StrCat("TLS write failed",
                              errno != 0 ? absl::StrCat(": ", std::strerror(errno)) : "");
        return Io::kError;
    }
  }
  for (;;) {
    // MSG_NOSIGNAL: a peer that is gone is an EPIPE here, never a SIGPIPE.
    const ssize_t r = send(fd_.get(), buf, len, MSG_NOSIGNAL);
    if (r >= 0) {
      *n = static_cast<size_t>(r);
      // A partial send means the send buffer is full; EPOLLOUT announces room again.
      if (static_cast<size_t>(r) < len) writable_ = false;
      return r > 0 ? Io::kDone : Io::kAgain;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      writable_ = false;
      return Io::kAgain;
    }
    *error = absl::StrCat("write: ", std::strerror(errno));
    return Io::kError;
  }
}

Endpoint::Io Endpoint::ShutdownWrite() {
  if (tls_ != nullptr && !close_notify_sent_) {
    const int r = SSL_shutdown(tls_->ssl());
    if (r < 0 && SSL_get_error(tls_->ssl(), r) == SSL_ERROR_WANT_WRITE) {
      ERR_clear_error();
      writable_ = false;
      return Io::kAgain;
    }
    ERR_clear_error();
    close_notify_sent_ = true;
  }
  ::shutdown(fd_.get(), SHUT_WR);
  return Io::kDone;
}

}  // namespace trellis::proxy
