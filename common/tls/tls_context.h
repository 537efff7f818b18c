#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/deny_list.h"
#include "common/tls/peer_verifier.h"

namespace trellis::tls {

// The ALPN protocol that marks Trellis mesh traffic.
inline constexpr absl::string_view kMeshAlpn = "trellis-mtls/1";

enum class TlsRole { kServer, kClient };

struct TlsContextOptions {
  TlsRole role = TlsRole::kServer;
  // Our certificate chain, leaf first (intermediates after; the root is not sent).
  std::vector<identity::Certificate> chain;
  // The leaf's private key. Shared, because server and client contexts use the same key.
  std::shared_ptr<const identity::PrivateKey> key;
  // Roots we trust for peers, and peers we refuse whatever their chain.
  std::optional<identity::TrustBundle> bundle;
  DenyList deny_list;
  // Peer identities accepted by default (a session may override). Empty means "any identity in
  // our own trust domain".
  std::vector<identity::SpiffeIdPattern> allowed_peers;
  // ALPN protocols offered (client) or accepted (server), in preference order.
  std::vector<std::string> alpn = {std::string(kMeshAlpn)};
  // TLS 1.3 only unless set; then TLS 1.2 is the minimum.
  bool allow_tls12 = false;
  // The clock used for certificate validity checks; absl::Now when unset.
  std::function<absl::Time()> clock;
};

// One immutable mutual-TLS configuration: an SSL_CTX with our chain and key, the trust bundle,
// deny-list and default peer policy, built whole and validated, then never changed. Publishing a
// new certificate means building a new TlsContext and swapping a shared_ptr; each connection keeps
// the context it started with, so an old context lives until its last connection closes.
//
// Server contexts require and verify a client certificate; client contexts verify the server's.
// Both use TLS 1.3 by default, X25519 first, ALPN, no session resumption (every connection proves
// its identity afresh), and check the peer's SPIFFE ID after the chain.
class TlsContext {
 public:
  // Validates (the key matches the leaf, the leaf is an X.509-SVID, the bundle is present) and
  // builds. Errors say which input is wrong.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(TlsContextOptions options);

  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  ~TlsContext();

  TlsRole role() const { return options_.role; }
  // Our own identity (the leaf's SPIFFE ID).
  const identity::SpiffeId& spiffe_id() const { return *spiffe_id_; }
  const std::vector<identity::Certificate>& chain() const { return options_.chain; }
  const identity::TrustBundle& bundle() const { return verifier_->bundle(); }
  const DenyList& deny_list() const { return verifier_->deny_list(); }
  const std::vector<identity::SpiffeIdPattern>& allowed_peers() const { return allowed_peers_; }
  absl::Time not_after() const { return not_after_; }
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  const PeerVerifier& verifier() const { return *verifier_; }
  SSL_CTX* ssl_ctx() const { return ssl_ctx_.get(); }

 private:
  explicit TlsContext(TlsContextOptions options) : options_(std::move(options)) {}

  TlsContextOptions options_;
  std::optional<identity::SpiffeId> spiffe_id_;  // always set once Create() succeeds
  absl::Time not_after_;
  std::vector<identity::SpiffeIdPattern> allowed_peers_;
  std::string alpn_wire_;  // ALPN list in wire format, for the server's selection
  std::unique_ptr<PeerVerifier> verifier_;
  crypto::UniquePtr<SSL_CTX> ssl_ctx_;
};

}  // namespace trellis::tls
