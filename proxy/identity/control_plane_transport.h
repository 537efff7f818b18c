#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace trellis::proxy {

// The wire to the control plane, as the identity client needs it: one IssueCertificate call, and
// a Watch stream. Plain data in and out (no protobuf or gRPC types), so that the gRPC
// implementation can live in a library the proxy loads only when it talks to a control plane
// (see transport_loader.h): a proxy in file mode never maps gRPC, protobuf and their
// dependencies, about a quarter of its memory.

// What each new connection presents and trusts.
struct ChannelCredentials {
  std::string roots_pem;  // to verify the control plane's serving certificate
  std::string key_pem;    // our client certificate (a renewal); empty for none
  std::string chain_pem;  // leaf first
};

struct IssueCall {
  std::string csr_der;
  std::string kubernetes_token;  // at most one of the two tokens; none for a renewal
  std::string join_token;
  absl::Duration requested_ttl = absl::ZeroDuration();  // zero: the control plane decides
  absl::Duration timeout = absl::Seconds(10);
};

struct IssueReply {
  std::vector<std::string> chain_der;   // leaf first
  std::vector<std::string> bundle_der;  // trust bundle roots
  std::string spiffe_id;
  // Relative times (correct whatever our clock says), when the control plane sent them.
  std::optional<absl::Duration> valid_for;
  std::optional<absl::Duration> refresh_in;
  std::optional<absl::Time> refresh_after;
};

struct IssueOutcome {
  absl::Status status;                                // the call's status, gRPC codes as absl codes
  absl::Duration retry_after = absl::ZeroDuration();  // the server's retry hint, if it gave one
  IssueReply reply;                                   // meaningful when status is OK
};

struct WatchSnapshot {
  uint64_t version = 0;
  std::vector<std::string> bundle_der;
  std::vector<std::string> denied_serials;
  std::vector<std::string> denied_spiffe_ids;
  std::optional<absl::Time> renew_before;
};

// One open Watch stream. Next() blocks for the next snapshot; false once the stream ended, and
// Finish() then says why. Cancel() may be called from any thread to end a blocked Next().
class WatchStream {
 public:
  virtual ~WatchStream() = default;
  virtual bool Next(WatchSnapshot* snapshot) = 0;
  virtual absl::Status Finish() = 0;
  virtual void Cancel() = 0;
};

// Where the transport's own diagnostics go (gRPC core's log lines): the library has no logger of
// its own. severity: 0 debug, 1 info, 2 error.
using TransportLogSink = void (*)(int severity, const char* file, int line, const char* message);

struct TransportOptions {
  std::string address;                  // host:port
  std::string server_name;              // the DNS name the control plane's certificate must carry
  TransportLogSink log_sink = nullptr;  // null: the transport's default (stderr)
};

// Calls with the same credentials share a connection (in token mode: the Watch stream and every
// renewal); new credentials (a renewal presenting the current certificate, trust that followed a
// root rotation) get a new one. The identity client's retry schedule decides when to try again;
// a connection's own reconnect backoff is capped at 2 s.
class ControlPlaneTransport {
 public:
  virtual ~ControlPlaneTransport() = default;
  virtual IssueOutcome Issue(const ChannelCredentials& credentials, const IssueCall& call) = 0;
  virtual std::unique_ptr<WatchStream> Watch(const ChannelCredentials& credentials,
                                             uint64_t known_version) = 0;
};

using TransportFactory =
    std::function<std::unique_ptr<ControlPlaneTransport>(const TransportOptions&)>;

// The gRPC transport lives in its own shared library, loaded only when the proxy talks to a
// control plane: gRPC, protobuf and their dependencies are then mapped; in file mode they never
// are. The library's one entry point:
//   extern "C" const TransportPlugin* trellis_proxy_transport_plugin();
inline constexpr char kTransportLibraryName[] = "libtrellis-proxy-grpc.so";
inline constexpr char kTransportPluginSymbol[] = "trellis_proxy_transport_plugin";
// Raised whenever the interface in control_plane_transport.h changes, so that a library built
// from other sources is refused instead of misread.
inline constexpr int kTransportPluginAbiVersion = 1;

struct TransportPlugin {
  int abi_version;
  std::unique_ptr<ControlPlaneTransport> (*create)(const TransportOptions& options);
};

}  // namespace trellis::proxy
