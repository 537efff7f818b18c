#pragma once

#include <array>

#include "absl/strings/string_view.h"

namespace trellis::tls {

// Why a mutual-TLS connection was refused or failed. The set is fixed so that metrics have a
// bounded `reason` label and an operator can tell at once what to fix.
enum class FailureReason {
  kNoPeerCertificate,     // the peer sent no certificate (a client without mTLS)
  kUnknownCa,             // the peer's chain does not lead to a root in our trust bundle
  kExpired,               // a certificate in the peer's chain is past its notAfter
  kNotYetValid,           // a certificate in the peer's chain is before its notBefore
  kRevoked,               // the peer's serial or SPIFFE ID is on the deny-list
  kIdentityNotAllowed,    // valid chain, but the peer's SPIFFE ID is not what policy allows
  kMalformedCertificate,  // the peer's certificate is not a valid X.509-SVID (SANs, usage, ...)
  kNotTls,                // the peer did not speak TLS (plaintext, HTTP, garbage)
  kPeerRejected,          // the peer refused us: it sent a TLS alert (see the detail)
  kProtocolError,         // TLS-level failure: no common version, cipher, group or ALPN
  kTimeout,               // the handshake did not finish in time
  kNotReady,              // we have no certificate yet, so we cannot handshake
  kConnectionReset,       // the peer closed or reset the connection mid-handshake
};

inline constexpr std::array<FailureReason, 13> kAllFailureReasons = {
    FailureReason::kNoPeerCertificate,
    FailureReason::kUnknownCa,
    FailureReason::kExpired,
    FailureReason::kNotYetValid,
    FailureReason::kRevoked,
    FailureReason::kIdentityNotAllowed,
    FailureReason::kMalformedCertificate,
    FailureReason::kNotTls,
    FailureReason::kPeerRejected,
    FailureReason::kProtocolError,
    FailureReason::kTimeout,
    FailureReason::kNotReady,
    FailureReason::kConnectionReset,
};

// A stable snake_case label, e.g. "no_peer_certificate", for metrics and JSON logs.
absl::string_view FailureReasonLabel(FailureReason reason);

// One sentence for operators saying what the reason usually means and what to check.
absl::string_view FailureReasonHint(FailureReason reason);

}  // namespace trellis::tls
