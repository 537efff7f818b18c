#pragma once

// An in-process control plane for integration tests: a real CA directory (root + intermediate
// made with common/identity/ca.h, written with ca::WriteCaFiles) under TEST_TMPDIR, MeshState,
// CaManager, IssuanceAdmission, the offline Kubernetes JWT and join-token authenticators,
// IdentityService and ServingIdentity, served by a grpc::Server over real TLS on 127.0.0.1:0,
// wired exactly as control-plane/main.cc does. Plus real gRPC clients (TLS, optionally with a
// client certificate for renewal) and a Watch stream reader.

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "common/identity/certificate.h"
#include "common/identity/private_key.h"
#include "control-plane/auth/join_token_authenticator.h"
#include "control-plane/auth/kubernetes_jwt_authenticator.h"
#include "control-plane/ca/signer.h"
#include "control-plane/server/admission.h"
#include "control-plane/server/ca_manager.h"
#include "control-plane/server/identity_service.h"
#include "control-plane/server/mesh_state.h"
#include "control-plane/server/metrics.h"
#include "control-plane/server/serving_identity.h"
#include "tests/common/testing/test_pki.h"
#include "tests/control-plane/auth/jwt_test_util.h"
#include "trellis/identity/v1/identity.grpc.pb.h"

namespace trellis::control_plane::testing {

inline constexpr char kTrustDomain[] = "cluster.local";

// spiffe://cluster.local/ns/<ns>/sa/<sa>.
std::string KubernetesId(const std::string& ns, const std::string& sa);

struct CpTestServerOptions {
  // Generous by default so that tests not about admission never hit it.
  AdmissionOptions admission = [] {
    AdmissionOptions options;
    options.per_identity_rate_per_second = 1000;
    options.per_identity_burst = 1000;
    return options;
  }();
  // Lifetimes: default 1 h, allowed [1s, 24h] unless a test narrows them.
  ca::LocalSignerOptions signer = [] {
    ca::LocalSignerOptions options;
    options.min_ttl = absl::Seconds(1);
    return options;
  }();
  absl::Duration renew_spread = absl::Minutes(5);
  // SetMaxConnectionAge; zero: never.
  absl::Duration max_connection_age = absl::ZeroDuration();
  absl::Duration max_connection_age_grace = absl::Seconds(10);
};

// A TLS client identity (PEM), presented for renewal calls.
struct ClientCert {
  std::string key_pem;
  std::string chain_pem;  // leaf first
};

// The result of one IssueCertificate call.
struct IssueResult {
  grpc::Status status;
  trellis::identity::v1::IssueCertificateResponse response;
  std::multimap<std::string, std::string> trailers;
};

// A workload: its own key and a CSR for it.
struct Workload {
  std::shared_ptr<identity::PrivateKey> key;
  std::string csr_der;
  // The credential to renew with once `Issue` succeeded: `key` + the issued chain.
  ClientCert CertFrom(const trellis::identity::v1::IssueCertificateResponse& response) const;
};

// A fresh P-256 key and a CSR, with `uri_san` as its URI SAN when given.
Workload NewWorkload(const std::optional<std::string>& uri_san = std::nullopt);

// PEM of DER certificates, in order.
std::string PemOfDer(const google::protobuf::RepeatedPtrField<std::string>& ders);

class CpTestServer {
 public:
  // Starts a control plane; fails the test (and returns null) if anything cannot be set up.
  static std::unique_ptr<CpTestServer> Start(CpTestServerOptions options = {});
  ~CpTestServer();

  CpTestServer(const CpTestServer&) = delete;
  CpTestServer& operator=(const CpTestServer&) = delete;

  int port() const { return port_; }
  const std::string& ca_dir() const { return ca_dir_; }
  const std::string& dir() const { return dir_; }
  const ::trellis::testing::TestCa& root() const { return *root_; }
  // The CA that signs workload certificates (until a test rewrites the CA directory).
  const ::trellis::testing::TestCa& intermediate() const { return *intermediate_; }
  // The PEM roots clients trust for the server (the root the fixture started with).
  const std::string& client_roots_pem() const { return client_roots_pem_; }

  MeshState& mesh() { return *mesh_; }
  CaManager& ca() { return *ca_; }
  ControlPlaneMetrics& metrics() { return metrics_; }
  IssuanceAdmission& admission() { return *admission_; }
  IdentityService& service() { return *service_; }
  grpc::Server& server() { return *server_; }

  // The issuer's signing keys (their JWKS is the authenticator's jwks file).
  const TestSigningKey& rsa_key() const { return *rsa_key_; }
  const TestSigningKey& ec_key() const { return *ec_key_; }
  // A projected service-account token for ns/sa signed with the RSA (or EC) key.
  std::string KubernetesToken(const std::string& ns, const std::string& sa, bool ec = false) const;

  // Creates a join token for `spiffe_id` in the tokens file and makes the authenticator see it.
  std::string NewJoinToken(const std::string& spiffe_id, bool single_use = true);

  // A channel to the server over TLS, trusting client_roots_pem(), presenting `cert` if given.
  std::shared_ptr<grpc::Channel> NewChannel(const ClientCert* cert = nullptr) const;
  std::unique_ptr<trellis::identity::v1::Identity::Stub> NewStub(
      const ClientCert* cert = nullptr) const;

  // One IssueCertificate call on a fresh channel (bounded by a 10 s deadline).
  IssueResult Issue(const trellis::identity::v1::IssueCertificateRequest& request,
                    const ClientCert* cert = nullptr) const;

  // Shortcuts: issue for a join token / a Kubernetes token, with `workload`'s CSR.
  IssueResult IssueWithJoinToken(const Workload& workload, const std::string& token,
                                 std::optional<absl::Duration> ttl = std::nullopt) const;
  IssueResult IssueWithKubernetesToken(const Workload& workload, const std::string& token) const;
  // Renewal: no credential, `cert` as the TLS client certificate.
  IssueResult Renew(const Workload& workload, const ClientCert& cert) const;

  // Rewrites the CA directory (overwrite) and returns the result of writing.
  absl::Status WriteCa(const ::trellis::testing::TestCa& signing,
                       const std::vector<const ::trellis::testing::TestCa*>& roots);

 private:
  CpTestServer() = default;
  bool Init(CpTestServerOptions options);

  std::string dir_;
  std::string ca_dir_;
  std::string client_roots_pem_;
  std::optional<::trellis::testing::TestCa> root_;
  std::optional<::trellis::testing::TestCa> intermediate_;
  std::unique_ptr<TestSigningKey> rsa_key_;
  std::unique_ptr<TestSigningKey> ec_key_;
  std::string tokens_path_;
  int next_token_ = 0;

  ControlPlaneMetrics metrics_;
  std::unique_ptr<MeshState> mesh_;
  std::unique_ptr<CaManager> ca_;
  std::unique_ptr<IssuanceAdmission> admission_;
  std::unique_ptr<KubernetesJwtAuthenticator> kubernetes_;
  std::unique_ptr<JoinTokenAuthenticator> join_tokens_;
  std::unique_ptr<IdentityService> service_;
  std::unique_ptr<ServingIdentity> serving_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Reads a Watch stream on its own thread and keeps every message. Cancels the call and joins the
// thread on destruction.
class WatchClient {
 public:
  explicit WatchClient(const CpTestServer& server, uint64_t known_version = 0);
  ~WatchClient();

  // Waits (at most `timeout`) until a message satisfying `predicate` has arrived; returns the
  // first such message, or nullopt on timeout.
  template <typename Predicate>
  std::optional<trellis::identity::v1::WatchResponse> WaitFor(Predicate predicate,
                                                              absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<trellis::identity::v1::WatchResponse> found;
    cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
      for (const auto& message : messages_) {
        if (predicate(message)) {
          found = message;
          return true;
        }
      }
      return false;
    });
    return found;
  }

  // Waits (at most `timeout`) for the stream to end; its status, or nullopt if still open.
  std::optional<grpc::Status> WaitForEnd(absl::Duration timeout);

  size_t message_count();

 private:
  std::unique_ptr<trellis::identity::v1::Identity::Stub> stub_;
  grpc::ClientContext context_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<trellis::identity::v1::WatchResponse> messages_;
  std::optional<grpc::Status> end_;
  std::thread thread_;
};

// Polls `condition` every 5 ms until it holds or `timeout` passes; returns its last value.
template <typename Condition>
bool PollUntil(Condition condition, absl::Duration timeout = absl::Seconds(5)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return condition();
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

}  // namespace trellis::control_plane::testing
