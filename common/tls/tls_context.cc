#include "common/tls/tls_context.h"

#include <openssl/ssl.h>

#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"
#include "common/identity/ca.h"
#include "common/tls/tls_session.h"

namespace trellis::tls {
namespace {

// Server-side ALPN selection: the first of the client's protocols that we accept. A client that
// offers ALPN but none of ours is refused (no_application_protocol); one that offers no ALPN at
// all is allowed, so that generic TLS clients (curl, openssl s_client) can still be diagnosed.
int SelectAlpn(SSL* /*ssl*/, const uint8_t** out, uint8_t* out_len, const uint8_t* in,
               unsigned int in_len, void* arg) {
  const auto* ours = static_cast<const std::string*>(arg);
  for (unsigned int i = 0; i < in_len;) {
    const uint8_t len = in[i];
    if (i + 1 + len > in_len) break;
    const absl::string_view offered(reinterpret_cast<const char*>(in + i + 1), len);
    for (size_t j = 0; j < ours->size();) {
      const uint8_t our_len = static_cast<uint8_t>((*ours)[j]);
      if (absl::string_view(ours->data() + j + 1, our_len) == offered) {
        *out = in + i + 1;
        *out_len = len;
        return SSL_TLSEXT_ERR_OK;
      }
      j += 1 + our_len;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

TlsContext::~TlsContext() = default;

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(TlsContextOptions options) {
  if (options.chain.empty()) {
    return absl::InvalidArgumentError("TLS context needs a certificate chain (leaf first)");
  }
  if (options.key == nullptr) {
    return absl::InvalidArgumentError("TLS context needs the leaf's private key");
  }
  if (!options.bundle.has_value()) {
    return absl::InvalidArgumentError("TLS context needs a trust bundle to verify peers");
  }
  const identity::Certificate& leaf = options.chain.front();
  if (!identity::KeyMatchesCertificate(*options.key, leaf)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the private key does not match the leaf certificate (serial ", leaf.serial_hex(),
        "); were the certificate and key files written by different renewals?"));
  }
  absl::StatusOr<identity::SpiffeId> id = leaf.GetSpiffeId();
  if (!id.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("our own leaf certificate is not an X.509-SVID: ", id.status().message()));
  }
  for (const std::string& protocol : options.alpn) {
    if (protocol.empty() || protocol.size() > 255) {
      return absl::InvalidArgumentError(
          absl::StrCat("ALPN protocol \"", protocol, "\" must be 1 to 255 bytes"));
    }
  }

  std::shared_ptr<TlsContext> ctx(new TlsContext(std::move(options)));
  const TlsContextOptions& opts = ctx->options_;
  ctx->spiffe_id_ = *std::move(id);
  ctx->not_after_ = leaf.not_after();
  ctx->allowed_peers_ = opts.allowed_peers;
  if (ctx->allowed_peers_.empty()) {
    absl::StatusOr<identity::SpiffeIdPattern> own_domain = identity::SpiffeIdPattern::Parse(
        absl::StrCat("spiffe://", ctx->spiffe_id_->trust_domain()));
    if (!own_domain.ok()) return own_domain.status();
    ctx->allowed_peers_.push_back(*std::move(own_domain));
  }
  for (const std::string& protocol : opts.alpn) {
    ctx->alpn_wire_.push_back(static_cast<char>(protocol.size()));
    ctx->alpn_wire_ += protocol;
  }
  absl::StatusOr<std::unique_ptr<PeerVerifier>> verifier =
      PeerVerifier::Create(*opts.bundle, opts.deny_list);
  if (!verifier.ok()) return verifier.status();
  ctx->verifier_ = *std::move(verifier);

  crypto::UniquePtr<SSL_CTX> ssl_ctx(SSL_CTX_new(TLS_method()));
  if (ssl_ctx == nullptr) return crypto::OpenSslInternalError("cannot allocate SSL_CTX");
  SSL_CTX* s = ssl_ctx.get();
  const uint16_t min_version = opts.allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION;
  if (SSL_CTX_set_min_proto_version(s, min_version) != 1 ||
      SSL_CTX_set_max_proto_version(s, TLS1_3_VERSION) != 1) {
    return crypto::OpenSslInternalError("cannot set the TLS versions");
  }
  // X25519 first; P-256 for peers that cannot do X25519.
  if (SSL_CTX_set1_curves_list(s, "X25519:P-256") != 1) {
    return crypto::OpenSslInternalError("cannot set the key-exchange groups");
  }
  // TLS 1.3 suites, AES-128-GCM first (as BoringSSL and Go order them on CPUs with AES
  // instructions): the same AEAD strength class for this purpose, and a quarter less CPU per byte
  // relayed than OpenSSL's default first choice, AES-256-GCM. Inbound, our order decides.
  // (BoringSSL already orders them so and has no setting for it.)
#ifndef OPENSSL_IS_BORINGSSL
  if (SSL_CTX_set_ciphersuites(
          s, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") != 1) {
    return crypto::OpenSslInternalError("cannot set the TLS 1.3 cipher suites");
  }
#endif
  SSL_CTX_set_options(s, SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (opts.allow_tls12 &&
      SSL_CTX_set_cipher_list(s,
                              "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                              "ECDHE-ECDSA-CHACHA20-POLY1305") != 1) {
    return crypto::OpenSslInternalError("cannot set the TLS 1.2 cipher suites");
  }
  // No resumption: every connection presents and verifies a certificate, so a revocation or a
  // root change applies to the next connection, and no ticket key needs rotating.
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
  // TLS 1.3 sends tickets after the handshake regardless of SSL_OP_NO_TICKET; with no cache they
  // are useless bytes and work on every connection.
  SSL_CTX_set_num_tickets(s, 0);
  // Partial writes and a moving buffer let the relay hand over what it has without copying.
  SSL_CTX_set_mode(s, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);

  if (SSL_CTX_use_certificate(s, leaf.get()) != 1 ||
      SSL_CTX_use_PrivateKey(s, opts.key->get()) != 1) {
    return crypto::OpenSslInternalError("cannot install the certificate and key");
  }
  for (size_t i = 1; i < opts.chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(s, opts.chain[i].get()) != 1) {
      return crypto::OpenSslInternalError("cannot install an intermediate certificate");
    }
  }
  const int verify_mode = opts.role == TlsRole::kServer
                              ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                              : SSL_VERIFY_PEER;
  SSL_CTX_set_verify(s, verify_mode, nullptr);
  // The whole peer check (chain, SVID rules, deny-list, identity) runs in one place.
  SSL_CTX_set_cert_verify_callback(s, VerifyPeerCallback, nullptr);
  if (!ctx->alpn_wire_.empty()) {
    if (opts.role == TlsRole::kClient) {
      // Note the inverted convention: 0 is success here.
      if (SSL_CTX_set_alpn_protos(s, reinterpret_cast<const uint8_t*>(ctx->alpn_wire_.data()),
                                  static_cast<unsigned>(ctx->alpn_wire_.size())) != 0) {
        return crypto::OpenSslInternalError("cannot set ALPN");
      }
    } else {
      SSL_CTX_set_alpn_select_cb(s, SelectAlpn, &ctx->alpn_wire_);
    }
  }
  ctx->ssl_ctx_ = std::move(ssl_ctx);
  return std::shared_ptr<const TlsContext>(std::move(ctx));
}

}  // namespace trellis::tls
