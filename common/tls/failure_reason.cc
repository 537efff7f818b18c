#include "common/tls/failure_reason.h"

namespace trellis::tls {

absl::string_view FailureReasonLabel(FailureReason reason) {
  switch (reason) {
    case FailureReason::kNoPeerCertificate:
      return "no_peer_certificate";
    case FailureReason::kUnknownCa:
      return "unknown_ca";
    case FailureReason::kExpired:
      return "expired";
    case FailureReason::kNotYetValid:
      return "not_yet_valid";
    case FailureReason::kRevoked:
      return "revoked";
    case FailureReason::kIdentityNotAllowed:
      return "identity_not_allowed";
    case FailureReason::kMalformedCertificate:
      return "malformed_certificate";
    case FailureReason::kNotTls:
      return "not_tls";
    case FailureReason::kPeerRejected:
      return "peer_rejected";
    case FailureReason::kProtocolError:
      return "protocol_error";
    case FailureReason::kTimeout:
      return "timeout";
    case FailureReason::kNotReady:
      return "not_ready";
    case FailureReason::kConnectionReset:
      return "connection_reset";
  }
  return "unknown";
}

absl::string_view FailureReasonHint(FailureReason reason) {
  switch (reason) {
    case FailureReason::kNoPeerCertificate:
      return "the peer presented no client certificate; is it outside the mesh or not injected?";
    case FailureReason::kUnknownCa:
      return "the peer's certificate is not signed by a root in our trust bundle; check that "
             "both sides share the mesh root (or that a root rotation has reached both)";
    case FailureReason::kExpired:
      return "the peer's certificate has expired; check its proxy can reach the control plane";
    case FailureReason::kNotYetValid:
      return "the peer's certificate is not valid yet; check the clocks of both hosts";
    case FailureReason::kRevoked:
      return "the peer's certificate or identity is on the revocation deny-list";
    case FailureReason::kIdentityNotAllowed:
      return "the peer's identity is valid but not allowed by policy for this destination";
    case FailureReason::kMalformedCertificate:
      return "the peer's certificate is not a valid X.509-SVID (exactly one SPIFFE URI SAN)";
    case FailureReason::kNotTls:
      return "the peer did not speak TLS; is it sending plaintext to an mTLS port?";
    case FailureReason::kPeerRejected:
      return "the peer refused our certificate or identity; see its logs for the reason";
    case FailureReason::kProtocolError:
      return "no common TLS version, cipher suite, group or ALPN protocol";
    case FailureReason::kTimeout:
      return "the handshake did not complete in time";
    case FailureReason::kNotReady:
      return "no workload certificate yet; the proxy is still getting one from the control plane";
    case FailureReason::kConnectionReset:
      return "the peer closed the connection during the handshake";
  }
  return "";
}

}  // namespace trellis::tls
