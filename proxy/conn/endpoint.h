#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/tls/tls_session.h"
#include "proxy/conn/relay_buffer.h"
#include "proxy/event/epoll_loop.h"
#include "proxy/event/unique_fd.h"

namespace trellis::proxy {

// One side of a relayed connection: a non-blocking socket, plaintext or TLS, and what the
// edge-triggered loop last told us about it. Reads and writes never block; they report
// kAgain and remember which readiness the retry waits for (a TLS read may need the socket to be
// writable, and a TLS write readable). Not thread-safe; owned by one RelayConnection.
class Endpoint {
 public:
  enum class Io { kDone, kAgain, kEof, kError };

  Endpoint() = default;
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;
  ~Endpoint();

  // Takes the socket. Turns on TCP_NODELAY.
  void Attach(UniqueFd fd);
  // Wraps the socket in TLS; from now on reads and writes are TLS records. Sets the modes a
  // relay needs (partial writes, moving write buffer, release of idle buffers) and records
  // alerts received from the peer.
  void AttachTls(std::unique_ptr<tls::TlsSession> session);

  // After the handshake: the TLS records of one write (several for a large one) are gathered in
  // a block of `pool` and go to the socket in one send, instead of one send per record; the
  // kernel's cost per byte falls steeply with the size of a send. The block is held only while
  // ciphertext waits for the socket. `pool` must outlive the endpoint, and its blocks should
  // hold a full relay buffer's records (see TlsRecordBlockBytes).
  void CoalesceTlsWrites(BufferPool* pool);
  // Bytes a block needs to hold the records of `plaintext_bytes` written at once.
  static size_t TlsRecordBlockBytes(size_t plaintext_bytes);
  // Ciphertext is waiting for the socket; Flush() sends it when writable.
  bool has_pending_output() const { return tls_out_ != nullptr && !tls_out_->empty(); }
  // Sends waiting ciphertext. kDone: nothing waits. kAgain: the socket is full.
  Io Flush(std::string* error);
  // Called by the coalescing write BIO (see endpoint.cc); returns what BIO_write returns.
  int BufferTlsRecords(const char* data, size_t len, bool* retry);

  int fd() const { return fd_.get(); }
  tls::TlsSession* tls() const { return tls_.get(); }
  bool is_tls() const { return tls_ != nullptr; }

  // Records readiness reported by the loop.
  void OnEvents(uint32_t events);
  // Called from the TLS socket BIO's callback after every socket read/write (see endpoint.cc).
  void OnSocketIo(bool read, bool short_or_failed) {
    (read ? socket_read_drained_ : socket_write_full_) = short_or_failed;
  }
  // Assumes the socket is ready both ways; the next operation finds out (after a state change
  // during which events were not tracked).
  void AssumeReady() {
    readable_ = writable_ = true;
    socket_read_drained_ = socket_write_full_ = false;
  }

  bool CanRead() const { return read_needs_write_ ? writable_ : readable_; }
  bool CanWrite() const { return write_needs_read_ ? readable_ : writable_; }
  bool writable() const { return writable_; }

  // kDone: *n > 0 bytes. kEof: the peer finished sending (FIN or close_notify). kError: see
  // *error (reset, TLS failure).
  Io Read(char* buf, size_t len, size_t* n, std::string* error);
  // kDone: *n > 0 bytes taken. kError: the peer is gone (EPIPE, ECONNRESET) or TLS failed.
  Io Write(const char* buf, size_t len, size_t* n, std::string* error);
  // Ends our sending direction: TLS close_notify then TCP FIN. kAgain: call again when
  // writable. Failures are ignored (the peer is gone, so nothing is left to tell it).
  Io ShutdownWrite();

  // The last TLS alert the peer sent, or -1.
  int received_alert() const { return received_alert_; }
  void set_received_alert(int alert) { received_alert_ = alert; }

  FdToken token = 0;  // the loop registration, owned by the RelayConnection

  // Drops TLS state and closes the socket.
  void Close();

 private:
  Io WriteCoalesced(const char* buf, size_t len, size_t* n, std::string* error);

  UniqueFd fd_;
  std::unique_ptr<tls::TlsSession> tls_;
  bool readable_ = false;
  bool writable_ = false;
  bool read_needs_write_ = false;
  bool write_needs_read_ = false;
  bool close_notify_sent_ = false;
  // The loop reported EPOLLRDHUP/HUP/ERR: a FIN or error is queued behind the data, and no
  // further edge will announce it, so reads go on until EOF/EAGAIN.
  bool hangup_seen_ = false;
  // The last socket read (TLS) returned fewer bytes than asked or failed, and no readable edge
  // came since: the kernel queue was empty then, and an edge announces anything arriving later.
  bool socket_read_drained_ = false;
  // The last socket write (TLS) took fewer bytes than offered or failed: the send buffer is full.
  bool socket_write_full_ = false;
  int received_alert_ = -1;
  // Ciphertext not yet sent (see CoalesceTlsWrites); null when not coalescing.
  std::unique_ptr<RelayBuffer> tls_out_;
  // errno of the send that failed while flushing, for the error message.
  int send_errno_ = 0;
};

}  // namespace trellis::proxy
