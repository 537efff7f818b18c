#include "proxy/conn/endpoint.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "proxy/conn/socket_util.h"

namespace trellis::proxy {
namespace {

// Four full TLS records with their headers and the largest AEAD expansion.
constexpr size_t kTlsReadBufferBytes =
    4 * (SSL3_RT_HEADER_LENGTH + SSL3_RT_MAX_PLAIN_LENGTH + SSL3_RT_MAX_ENCRYPTED_OVERHEAD);

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

// The coalescing write BIO: records go into the endpoint's pending block; BIO_flush (which
// OpenSSL calls for a close_notify) and Endpoint::Flush send them.
int CoalescingBioWrite(BIO* bio, const char* data, int len) {
  BIO_clear_retry_flags(bio);
  auto* endpoint = static_cast<Endpoint*>(BIO_get_data(bio));
  if (endpoint == nullptr || len < 0) return -1;
  bool retry = false;
  const int r = endpoint->BufferTlsRecords(data, static_cast<size_t>(len), &retry);
  if (retry) BIO_set_retry_write(bio);
  return r;
}

long CoalescingBioCtrl(BIO* bio, int cmd, long /*num*/, void* /*ptr*/) {
  if (cmd != BIO_CTRL_FLUSH) return 0;
  BIO_clear_retry_flags(bio);
  auto* endpoint = static_cast<Endpoint*>(BIO_get_data(bio));
  if (endpoint == nullptr) return 1;
  std::string error;
  switch (endpoint->Flush(&error)) {
    case Endpoint::Io::kDone:
      return 1;
    case Endpoint::Io::kAgain:
      BIO_set_retry_write(bio);
      return 0;
    default:
      return -1;
  }
}

int CoalescingBioCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* CoalescingBioMethod() {
  // Created once and never freed: a process-lifetime table, like OpenSSL's own BIO methods.
  static const BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "trellis-coalesce");
    if (m == nullptr) return static_cast<BIO_METHOD*>(nullptr);
    BIO_meth_set_write(m, CoalescingBioWrite);
    BIO_meth_set_ctrl(m, CoalescingBioCtrl);
    BIO_meth_set_create(m, CoalescingBioCreate);
    return m;
  }();
  return method;
}

}  // namespace

Endpoint::~Endpoint() { Close(); }

size_t Endpoint::TlsRecordBlockBytes(size_t plaintext_bytes) {
  const size_t records =
      (plaintext_bytes + SSL3_RT_MAX_PLAIN_LENGTH - 1) / SSL3_RT_MAX_PLAIN_LENGTH;
  return plaintext_bytes +
         std::max<size_t>(records, 1) * (SSL3_RT_HEADER_LENGTH + SSL3_RT_MAX_ENCRYPTED_OVERHEAD);
}

void Endpoint::CoalesceTlsWrites(BufferPool* pool) {
  if (tls_ == nullptr || tls_out_ != nullptr || CoalescingBioMethod() == nullptr) return;
  BIO* bio = BIO_new(CoalescingBioMethod());
  if (bio == nullptr) return;  // keep writing through the socket BIO: slower, still correct
  BIO_set_data(bio, this);
  tls_out_ = std::make_unique<RelayBuffer>(pool);
  SSL_set0_wbio(tls_->ssl(), bio);  // the SSL owns it now
}

int Endpoint::BufferTlsRecords(const char* data, size_t len, bool* retry) {
  RelayBuffer& out = *tls_out_;
  if (!out.empty()) {
    out.WritePtr();
    if (out.WritableBytes() < len) {
      // No room behind what waits: send it first, and take the record only once all is gone,
      // so the socket sees the records in order.
      std::string error;
      const Io flushed = Flush(&error);
      if (flushed == Io::kAgain) *retry = true;
      if (flushed != Io::kDone) return -1;
    }
  }
  if (len > out.capacity()) {
    // Only with a block smaller than a record (a tiny --buffer_bytes): send it as it is.
    for (;;) {
      const ssize_t r = send(fd_.get(), data, len, MSG_NOSIGNAL);
      if (r >= 0) {
        if (static_cast<size_t>(r) < len) socket_write_full_ = true;
        if (r == 0) *retry = true;
        return r > 0 ? static_cast<int>(r) : -1;
      }
      if (errno == EINTR) continue;
      socket_write_full_ = true;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        *retry = true;
      } else {
        send_errno_ = errno;
      }
      return -1;
    }
  }
  std::memcpy(out.WritePtr(), data, len);
  out.Commit(len);
  return static_cast<int>(len);
}

Endpoint::Io Endpoint::Flush(std::string* error) {
  while (has_pending_output()) {
    const ssize_t r = send(fd_.get(), tls_out_->ReadPtr(), tls_out_->size(), MSG_NOSIGNAL);
    if (r > 0) {
      const bool partial = static_cast<size_t>(r) < tls_out_->size();
      tls_out_->Consume(static_cast<size_t>(r));
      if (partial) {
        // The send buffer is full; EPOLLOUT announces room again.
        socket_write_full_ = true;
        writable_ = false;
        return Io::kAgain;
      }
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
      socket_write_full_ = true;
      writable_ = false;
      return Io::kAgain;
    }
    send_errno_ = errno;
    *error = absl::StrCat("write: ", std::strerror(errno));
    return Io::kError;
  }
  return Io::kDone;
}

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
#ifndef OPENSSL_IS_BORINGSSL
  // Room for several full records, so one socket read can fill a large relay buffer. With
  // SSL_MODE_RELEASE_BUFFERS the buffer exists only while it holds bytes.
  SSL_set_default_read_buffer_len(ssl, kTlsReadBufferBytes);
#endif
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
  tls_.reset();  // frees the coalescing BIO, which points at this endpoint
  tls_out_.reset();
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
  if (tls_ != nullptr && tls_out_ != nullptr) return WriteCoalesced(buf, len, n, error);
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

Endpoint::Io Endpoint::WriteCoalesced(const char* buf, size_t len, size_t* n, std::string* error) {
  // Records left from an earlier write go first.
  if (const Io flushed = Flush(error); flushed != Io::kDone) return flushed;
  // SSL_write returns after each record in partial-write mode: take records until the block is
  // full (the BIO then asks for a retry) or the plaintext is used up, then send them at once.
  size_t total = 0;
  Io result = Io::kDone;
  while (total < len) {
    errno = 0;
    size_t k = 0;
    const tls::IoAction action = tls_->Write(buf + total, len - total, &k);
    if (action == tls::IoAction::kDone) {
      total += k;
      continue;
    }
    if (action == tls::IoAction::kWantWrite) {
      write_needs_read_ = false;
      if (total == 0) {
        writable_ = false;
        result = Io::kAgain;
      }
    } else if (action == tls::IoAction::kWantRead) {
      if (total == 0) {
        write_needs_read_ = true;
        readable_ = false;
        result = Io::kAgain;
      }
    } else {
      const int saved = send_errno_ != 0 ? send_errno_ : errno;
      *error = absl::StrCat("TLS write failed",
                            saved != 0 ? absl::StrCat(": ", std::strerror(saved)) : "");
      return Io::kError;
    }
    break;
  }
  *n = total;
  if (total > 0) {
    write_needs_read_ = false;
    result = Io::kDone;
  }
  // Send what was gathered. A full socket keeps the rest for the next writable edge.
  if (const Io flushed = Flush(error); flushed == Io::kError) return Io::kError;
  return result;
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
  // The FIN must follow every record, the close_notify included.
  std::string ignored;
  if (Flush(&ignored) == Io::kAgain) return Io::kAgain;
  ::shutdown(fd_.get(), SHUT_WR);
  return Io::kDone;
}

}  // namespace trellis::proxy
