#include "proxy/conn/endpoint.h"

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
  SSL_set_ex_data(ssl, EndpointIndex(), this);
  SSL_set_info_callback(ssl, InfoCallback);
}

void Endpoint::Close() {
  if (tls_ != nullptr) SSL_set_ex_data(tls_->ssl(), EndpointIndex(), nullptr);
  tls_.reset();
  fd_.Reset();
}

void Endpoint::OnEvents(uint32_t events) {
  if (events & kReadable) readable_ = true;
  if (events & kWritable) writable_ = true;
}

Endpoint::Io Endpoint::Read(char* buf, size_t len, size_t* n, std::string* error) {
  *n = 0;
  if (tls_ != nullptr) {
    errno = 0;
    switch (tls_->Read(buf, len, n)) {
      case tls::IoAction::kDone:
        read_needs_write_ = false;
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
