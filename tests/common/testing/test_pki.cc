#include "tests/common/testing/test_pki.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <thread>

#include "gtest/gtest.h"

namespace trellis::testing {
namespace {

// OpenSSL's socket BIO writes with write(2); like the proxy's main(), the tests ignore SIGPIPE so
// that a peer closing first is an EPIPE error rather than the death of the process.
const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

template <typename T>
T Unwrap(absl::StatusOr<T> value) {
  if (!value.ok()) {
    ADD_FAILURE() << value.status();
    std::abort();
  }
  return *std::move(value);
}

void SetTimeouts(int fd) {
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// Drives one end of a blocking session: handshake, then send `out` and expect `in`.
EndResult RunEnd(std::unique_ptr<tls::TlsSession> session, bool send_first) {
  EndResult result;
  // The socket is blocking with a timeout, so "want read/write" only means the timeout expired.
  const tls::IoAction action = session->Handshake();
  if (action == tls::IoAction::kWantRead || action == tls::IoAction::kWantWrite) {
    result.reason = tls::FailureReason::kTimeout;
    result.detail = "handshake timed out in the test harness";
    return result;
  }
  if (action != tls::IoAction::kDone) {
    result.reason = session->failure_reason();
    result.detail = session->failure_detail();
    result.peer_id = session->peer().peer_id;
    return result;
  }
  result.handshake_ok = true;
  result.peer_id = session->peer().peer_id;
  result.alpn = session->alpn();
  const std::string mine = send_first ? "ping" : "pong";
  const std::string theirs = send_first ? "pong" : "ping";
  char buf[16];
  size_t n = 0;
  auto send = [&] { return session->Write(mine.data(), mine.size(), &n) == tls::IoAction::kDone; };
  auto receive = [&] {
    return session->Read(buf, sizeof(buf), &n) == tls::IoAction::kDone &&
           std::string(buf, n) == theirs;
  };
  result.data_exchanged = send_first ? send() && receive() : receive() && send();
  session->Shutdown();
  return result;
}

}  // namespace

TestCa MakeRoot(const std::string& name) {
  auto key =
      std::make_shared<identity::PrivateKey>(Unwrap(identity::PrivateKey::GenerateEcdsaP256()));
  identity::CaCertificateSpec spec;
  spec.common_name = name;
  spec.not_before = absl::Now() - absl::Hours(1);
  spec.not_after = absl::Now() + absl::Hours(24);
  identity::Certificate cert = Unwrap(identity::CreateRootCertificate(*key, spec));
  return TestCa{key, cert, {}};
}

TestCa MakeIntermediate(const TestCa& parent, const std::string& name) {
  auto key =
      std::make_shared<identity::PrivateKey>(Unwrap(identity::PrivateKey::GenerateEcdsaP256()));
  identity::CaCertificateSpec spec;
  spec.common_name = name;
  spec.not_before = absl::Now() - absl::Hours(1);
  spec.not_after = absl::Now() + absl::Hours(12);
  spec.path_length = 0;
  identity::Certificate cert =
      Unwrap(identity::CreateIntermediateCertificate(parent.cert, *parent.key, key->get(), spec));
  std::vector<identity::Certificate> chain_above = {cert};
  chain_above.insert(chain_above.end(), parent.chain_above.begin(), parent.chain_above.end());
  // chain_above lists what a leaf signed by this CA sends after itself: this CA, then its parents
  // that are not roots.
  return TestCa{key, cert, chain_above};
}

TestLeaf MakeLeaf(const TestCa& ca, const std::string& spiffe_id,
                  std::optional<absl::Time> not_before, std::optional<absl::Time> not_after) {
  auto key =
      std::make_shared<identity::PrivateKey>(Unwrap(identity::PrivateKey::GenerateEcdsaP256()));
  identity::LeafCertificateSpec spec{Unwrap(identity::SpiffeId::Parse(spiffe_id)),
                                     not_before.value_or(absl::Now() - absl::Minutes(5)),
                                     not_after.value_or(absl::Now() + absl::Hours(1)),
                                     {}};
  identity::Certificate leaf =
      Unwrap(identity::IssueLeafCertificate(ca.cert, *ca.key, key->get(), spec));
  std::vector<identity::Certificate> chain = {leaf};
  chain.insert(chain.end(), ca.chain_above.begin(), ca.chain_above.end());
  return TestLeaf{key, chain};
}

TestLeaf MakeLeafWithUris(const TestCa& ca, const std::vector<std::string>& uris) {
  TestLeaf leaf = MakeLeaf(ca, "spiffe://example.org/placeholder");
  crypto::UniquePtr<X509> cert(X509_dup(leaf.chain[0].get()));
  const int san_index = X509_get_ext_by_NID(cert.get(), NID_subject_alt_name, -1);
  X509_EXTENSION_free(X509_delete_ext(cert.get(), san_index));
  if (!uris.empty()) {
    crypto::UniquePtr<GENERAL_NAMES> names(GENERAL_NAMES_new());
    for (const std::string& uri : uris) {
      GENERAL_NAME* name = GENERAL_NAME_new();
      ASN1_IA5STRING* value = ASN1_IA5STRING_new();
      ASN1_STRING_set(value, uri.data(), static_cast<int>(uri.size()));
      GENERAL_NAME_set0_value(name, GEN_URI, value);
      sk_GENERAL_NAME_push(names.get(), name);
    }
    X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, names.get(), 1, X509V3_ADD_DEFAULT);
  }
  // A CN that looks like an identity: it must never be used as one.
  X509_NAME* subject = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("spiffe://example.org/cn"), -1,
                             -1, 0);
  X509_sign(cert.get(), ca.key->get(), EVP_sha256());
  leaf.chain[0] = identity::Certificate::FromX509(cert.get());
  return leaf;
}

identity::TrustBundle BundleOf(const std::vector<const TestCa*>& roots) {
  std::vector<identity::Certificate> certs;
  for (const TestCa* ca : roots) certs.push_back(ca->cert);
  return Unwrap(identity::TrustBundle::Create(certs));
}

std::vector<identity::SpiffeIdPattern> Patterns(const std::vector<std::string>& patterns) {
  std::vector<identity::SpiffeIdPattern> out;
  for (const std::string& p : patterns) out.push_back(Unwrap(identity::SpiffeIdPattern::Parse(p)));
  return out;
}

std::shared_ptr<const tls::TlsContext> MakeContext(tls::TlsRole role, const TestLeaf& leaf,
                                                   const identity::TrustBundle& bundle,
                                                   std::vector<identity::SpiffeIdPattern> allowed,
                                                   tls::DenyList deny, bool allow_tls12) {
  tls::TlsContextOptions options;
  options.role = role;
  options.chain = leaf.chain;
  options.key = leaf.key;
  options.bundle = bundle;
  options.allowed_peers = std::move(allowed);
  options.deny_list = std::move(deny);
  options.allow_tls12 = allow_tls12;
  return Unwrap(tls::TlsContext::Create(std::move(options)));
}

HandshakeResult RunHandshake(std::shared_ptr<const tls::TlsContext> server,
                             std::shared_ptr<const tls::TlsContext> client,
                             std::optional<std::vector<identity::SpiffeIdPattern>> client_expects) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) std::abort();
  SetTimeouts(fds[0]);
  SetTimeouts(fds[1]);
  auto server_session = Unwrap(tls::TlsSession::Create(server, fds[0]));
  auto client_session = Unwrap(tls::TlsSession::Create(client, fds[1], std::move(client_expects)));
  HandshakeResult result;
  std::thread server_thread([&] {
    result.server = RunEnd(std::move(server_session), /*send_first=*/false);
    // Closing promptly lets a client blocked on a read see the failure instead of a timeout.
    shutdown(fds[0], SHUT_RDWR);
  });
  result.client = RunEnd(std::move(client_session), /*send_first=*/true);
  shutdown(fds[1], SHUT_RDWR);
  server_thread.join();
  close(fds[0]);
  close(fds[1]);
  return result;
}

EndResult RunServerAgainstBytes(std::shared_ptr<const tls::TlsContext> server,
                                const std::string& bytes) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) std::abort();
  SetTimeouts(fds[0]);
  if (write(fds[1], bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    std::abort();
  }
  shutdown(fds[1], SHUT_WR);  // the "client" has said all it will say
  EndResult result = RunEnd(Unwrap(tls::TlsSession::Create(server, fds[0])), false);
  close(fds[0]);
  close(fds[1]);
  return result;
}

EndResult RunServerAgainstRawClient(std::shared_ptr<const tls::TlsContext> server,
                                    const TestLeaf* leaf) {
  crypto::UniquePtr<SSL_CTX> raw(SSL_CTX_new(TLS_method()));
  SSL_CTX_set_verify(raw.get(), SSL_VERIFY_NONE, nullptr);
  if (leaf != nullptr) {
    SSL_CTX_use_certificate(raw.get(), leaf->chain[0].get());
    SSL_CTX_use_PrivateKey(raw.get(), leaf->key->get());
  }
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) std::abort();
  SetTimeouts(fds[0]);
  SetTimeouts(fds[1]);
  crypto::UniquePtr<SSL> client(SSL_new(raw.get()));
  SSL_set_fd(client.get(), fds[1]);
  std::thread client_thread([&] {
    if (SSL_connect(client.get()) == 1) {
      char buf[8];
      SSL_read(client.get(), buf, sizeof(buf));  // receives the server's verdict
    }
    ERR_clear_error();
  });
  EndResult result = RunEnd(Unwrap(tls::TlsSession::Create(server, fds[0])), false);
  shutdown(fds[0], SHUT_RDWR);
  client_thread.join();
  close(fds[0]);
  close(fds[1]);
  return result;
}

}  // namespace trellis::testing
