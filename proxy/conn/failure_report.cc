#include "proxy/conn/failure_report.h"

#include "common/log/json_log.h"

namespace trellis::proxy {
namespace {

nlohmann::json Fields(const ConnectionInfo& info, absl::string_view reason,
                      absl::string_view detail, absl::string_view hint) {
  nlohmann::json f = nlohmann::json::object();
  f["direction"] = std::string(kDirectionLabels[static_cast<size_t>(info.direction)]);
  f["listener"] = info.listener;
  // "peer" is the remote mesh party: who connected to us inbound, where we went outbound.
  f["peer"] = info.direction == Direction::kInbound ? info.downstream : info.upstream;
  f["downstream"] = info.downstream;
  f["upstream"] = info.upstream;
  f["local_identity"] =
      info.local_identity.empty() ? "none (no certificate yet)" : info.local_identity;
  if (!info.peer_identity.empty()) f["peer_identity"] = info.peer_identity;
  if (!info.peer_serial.empty()) f["peer_serial"] = info.peer_serial;
  f["state"] = info.state;
  f["reason"] = std::string(reason);
  f["detail"] = std::string(detail);
  f["hint"] = std::string(hint);
  return f;
}

}  // namespace

absl::string_view ConnectionFailureLabel(ConnectionFailure failure) {
  return kConnectionFailureLabels[static_cast<size_t>(failure)];
}

absl::string_view ConnectionFailureHint(ConnectionFailure failure) {
  switch (failure) {
    case ConnectionFailure::kUpstreamConnect:
      return "the destination refused the connection or is unreachable: is the app (or the "
             "remote proxy) listening on that address and port?";
    case ConnectionFailure::kConnectionLimit:
      return "the proxy is at --max_connections; raise the limit or add replicas";
    case ConnectionFailure::kIdleTimeout:
      return "no bytes flowed either way for the idle timeout; raise it for long-lived quiet "
             "connections";
    case ConnectionFailure::kConnectTimeout:
      return "the destination did not accept in time: check routing, firewalls and whether "
             "the destination is overloaded";
    case ConnectionFailure::kOriginalDst:
      return "SO_ORIGINAL_DST is unavailable: traffic reached the capture port without iptables "
             "redirection; check that trellis-init ran (nat table REDIRECT rules)";
    case ConnectionFailure::kReset:
      return "one side reset or abandoned the connection mid-stream";
    case ConnectionFailure::kDenied:
      return "the peer's certificate serial or SPIFFE ID was put on the deny-list (revoked)";
    case ConnectionFailure::kPeerExpired:
      return "the peer's certificate expired while the connection was open (close_on_peer_expiry); "
             "the peer reconnects with its rotated certificate, or check why it did not rotate";
    case ConnectionFailure::kMaxAge:
      return "the connection reached --max_connection_age and was closed so that clients "
             "reconnect (picking up rotated certificates and policy); raise it or set 0 to disable";
    case ConnectionFailure::kCount:
      break;
  }
  return "";
}

void ReportHandshakeFailure(WorkerStats* stats, const ConnectionInfo& info,
                            tls::FailureReason reason, absl::string_view detail) {
  stats->CountHandshakeFailure(info.direction, reason);
  log::Warn("mTLS handshake failed",
            Fields(info, tls::FailureReasonLabel(reason), detail, tls::FailureReasonHint(reason)));
}

void ReportConnectionFailure(WorkerStats* stats, const ConnectionInfo& info,
                             ConnectionFailure failure, absl::string_view detail) {
  stats->CountConnectionFailure(info.direction, failure);
  log::Warn("connection failed",
            Fields(info, ConnectionFailureLabel(failure), detail, ConnectionFailureHint(failure)));
}

}  // namespace trellis::proxy
