#pragma once

// Test PKI: roots, intermediates and leaves minted by Trellis's own CA code (expired, not yet
// valid, wrong SANs, other roots), and a harness that runs a real TLS handshake over a socketpair.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/failure_reason.h"
#include "common/tls/peer_verifier.h"
#include "common/tls/tls_context.h"
#include "common/tls/tls_session.h"

namespace trellis::testing {

// A CA: its key and certificate, plus the chain a leaf it signs should carry (intermediates).
struct TestCa {
  std::shared_ptr<identity::PrivateKey> key;
  identity::Certificate cert;
  std::vector<identity::Certificate> chain_above;  // intermediates between a leaf and the root
};

// A workload credential.
struct TestLeaf {
  std::shared_ptr<const identity::PrivateKey> key;
  std::vector<identity::Certificate> chain;  // leaf first
};

// A root valid from an hour ago for a day.
TestCa MakeRoot(const std::string& name = "Test Root");

// An intermediate under `parent`.
TestCa MakeIntermediate(const TestCa& parent, const std::string& name = "Test Intermediate");

// A leaf for `spiffe_id` signed by `ca`, valid over [not_before, not_after] (defaults: from
// five minutes ago for an hour).
TestLeaf MakeLeaf(const TestCa& ca, const std::string& spiffe_id,
                  std::optional<absl::Time> not_before = std::nullopt,
                  std::optional<absl::Time> not_after = std::nullopt);

// A leaf whose subjectAltName holds exactly `uris` (zero, one or several) and a CN that looks
// like an identity, built with raw OpenSSL to break the X.509-SVID rules on purpose.
TestLeaf MakeLeafWithUris(const TestCa& ca, const std::vector<std::string>& uris);

identity::TrustBundle BundleOf(const std::vector<const TestCa*>& roots);

std::vector<identity::SpiffeIdPattern> Patterns(const std::vector<std::string>& patterns);

// Builds a server or client context; dies (test failure) on error.
std::shared_ptr<const tls::TlsContext> MakeContext(
    tls::TlsRole role, const TestLeaf& leaf, const identity::TrustBundle& bundle,
    std::vector<identity::SpiffeIdPattern> allowed = {}, tls::DenyList deny = {},
    bool allow_tls12 = false);

// What one end of a handshake saw.
struct EndResult {
  bool handshake_ok = false;
  tls::FailureReason reason = tls::FailureReason::kProtocolError;
  std::string detail;
  std::optional<identity::SpiffeId> peer_id;
  std::string alpn;
  // True if application data made it across both ways after the handshake ("ping"/"pong").
  bool data_exchanged = false;
};

struct HandshakeResult {
  EndResult server;
  EndResult client;
};

// Runs a real handshake between `server` and `client` over a connected socketpair, one thread per
// end, then exchanges a message each way. `client_expects` overrides the client's allowed server
// identities. Bounded: a stuck end is cut off by a socket timeout.
HandshakeResult RunHandshake(
    std::shared_ptr<const tls::TlsContext> server, std::shared_ptr<const tls::TlsContext> client,
    std::optional<std::vector<identity::SpiffeIdPattern>> client_expects = std::nullopt);

// Runs the server end against raw bytes written by a plain socket (a non-TLS client).
EndResult RunServerAgainstBytes(std::shared_ptr<const tls::TlsContext> server,
                                const std::string& bytes);

// Runs the server end against a bare OpenSSL client (no Trellis checks at all) that presents
// `leaf` as its certificate, or no certificate when `leaf` is null. Returns the server's result.
EndResult RunServerAgainstRawClient(std::shared_ptr<const tls::TlsContext> server,
                                    const TestLeaf* leaf);

}  // namespace trellis::testing
