#include "tests/control-plane/server/cp_test_server.h"

#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/identity/csr.h"
#include "common/identity/spiffe_id.h"
#include "common/tls/deny_list.h"
#include "control-plane/auth/join_token_store.h"
#include "control-plane/ca/ca_files.h"
#include "gtest/gtest.h"

namespace trellis::control_plane::testing {
namespace {

using trellis::identity::v1::IssueCertificateRequest;
using trellis::identity::v1::IssueCertificateResponse;
using trellis::identity::v1::WatchRequest;
using trellis::identity::v1::WatchResponse;

const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

#define CP_CHECK_OK(expr)                        \
  do {                                           \
    const absl::Status _status = (expr);         \
    if (!_status.ok()) {                         \
      ADD_FAILURE() << #expr << ": " << _status; \
      return false;                              \
    }                                            \
  } while (0)

std::string MakeTempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/cp.XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

}  // namespace

std::string KubernetesId(const std::string& ns, const std::string& sa) {
  return absl::StrCat("spiffe://", kTrustDomain, "/ns/", ns, "/sa/", sa);
}

ClientCert Workload::CertFrom(const IssueCertificateResponse& response) const {
  absl::StatusOr<std::string> pem = key->ToPem();
  EXPECT_TRUE(pem.ok()) << pem.status();
  return ClientCert{pem.ok() ? *pem : "", PemOfDer(response.cert_chain_der())};
}

Workload NewWorkload(const std::optional<std::string>& uri_san) {
  absl::StatusOr<identity::PrivateKey> key = identity::PrivateKey::GenerateEcdsaP256();
  EXPECT_TRUE(key.ok()) << key.status();
  Workload workload;
  workload.key = std::make_shared<identity::PrivateKey>(*std::move(key));
  std::optional<identity::SpiffeId> id;
  if (uri_san.has_value()) {
    absl::StatusOr<identity::SpiffeId> parsed = identity::SpiffeId::Parse(*uri_san);
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    if (parsed.ok()) id = *parsed;
  }
  absl::StatusOr<std::string> csr = identity::CreateCsrDer(*workload.key, id);
  EXPECT_TRUE(csr.ok()) << csr.status();
  if (csr.ok()) workload.csr_der = *csr;
  return workload;
}

std::string PemOfDer(const google::protobuf::RepeatedPtrField<std::string>& ders) {
  std::vector<identity::Certificate> certs;
  for (const std::string& der : ders) {
    absl::StatusOr<identity::Certificate> cert = identity::Certificate::FromDer(der);
    EXPECT_TRUE(cert.ok()) << cert.status();
    if (cert.ok()) certs.push_back(*cert);
  }
  return identity::ToPemChain(certs);
}

// === CpTestServer ===

std::unique_ptr<CpTestServer> CpTestServer::Start(CpTestServerOptions options) {
  std::unique_ptr<CpTestServer> server(new CpTestServer());
  if (!server->Init(std::move(options))) return nullptr;
  return server;
}

absl::Status CpTestServer::WriteCa(const ::trellis::testing::TestCa& signing,
                                   const std::vector<const ::trellis::testing::TestCa*>& roots) {
  std::vector<identity::Certificate> root_certs;
  for (const ::trellis::testing::TestCa* root : roots) root_certs.push_back(root->cert);
  absl::StatusOr<identity::TrustBundle> bundle = identity::TrustBundle::Create(root_certs);
  if (!bundle.ok()) return bundle.status();
  // chain.crt: the intermediates above the signing CA, excluding the root.
  std::vector<identity::Certificate> chain;
  for (size_t i = 1; i < signing.chain_above.size(); ++i) chain.push_back(signing.chain_above[i]);
  const ca::CaFiles files{signing.cert, signing.key, chain, *std::move(bundle)};
  return ca::WriteCaFiles(ca_dir_, files, ca::WriteOptions{/*overwrite=*/true});
}

bool CpTestServer::Init(CpTestServerOptions options) {
  dir_ = MakeTempDir();
  if (dir_.empty()) {
    ADD_FAILURE() << "cannot create a temporary directory";
    return false;
  }
  ca_dir_ = dir_ + "/ca";
  const std::string state_dir = dir_ + "/state";
  if (mkdir(ca_dir_.c_str(), 0700) != 0 || mkdir(state_dir.c_str(), 0700) != 0) {
    ADD_FAILURE() << "cannot create directories under " << dir_;
    return false;
  }

  // The CA: a root and a signing intermediate under it.
  root_ = ::trellis::testing::MakeRoot("Trellis Test Root");
  intermediate_ = ::trellis::testing::MakeIntermediate(*root_, "Trellis Test Intermediate");
  CP_CHECK_OK(WriteCa(*intermediate_, {&*root_}));
  client_roots_pem_ = root_->cert.ToPem();

  absl::StatusOr<ca::CaFiles> first = ca::LoadCaFiles(ca_dir_);
  CP_CHECK_OK(first.status());
  mesh_ = std::make_unique<MeshState>(first->roots, tls::DenyList());
  CaManager::Options ca_options;
  ca_options.ca_dir = ca_dir_;
  ca_options.signer = options.signer;
  ca_options.renew_spread = options.renew_spread;
  absl::StatusOr<std::unique_ptr<CaManager>> ca =
      CaManager::Create(std::move(ca_options), mesh_.get(), &metrics_);
  CP_CHECK_OK(ca.status());
  ca_ = *std::move(ca);

  // Kubernetes tokens, checked offline against a JWKS file.
  rsa_key_ = std::make_unique<TestSigningKey>(TestSigningKey::NewRsa("rsa-key-1"));
  ec_key_ = std::make_unique<TestSigningKey>(TestSigningKey::NewEc("ec-key-1"));
  const std::string jwks_path = dir_ + "/jwks.json";
  {
    std::ofstream out(jwks_path);
    out << JwksDocument({rsa_key_.get(), ec_key_.get()});
    if (!out.good()) {
      ADD_FAILURE() << "cannot write " << jwks_path;
      return false;
    }
  }
  KubernetesJwtAuthenticatorOptions k8s_options;
  k8s_options.trust_domain = kTrustDomain;
  k8s_options.audience = "trellis";
  k8s_options.issuers = {std::string(kTestIssuer)};
  k8s_options.jwks_path = jwks_path;
  auto kubernetes = KubernetesJwtAuthenticator::Create(std::move(k8s_options));
  CP_CHECK_OK(kubernetes.status());
  kubernetes_ = *std::move(kubernetes);

  // Join tokens: the file must exist before the authenticator starts.
  tokens_path_ = dir_ + "/join-tokens.json";
  absl::StatusOr<identity::SpiffeId> bootstrap_id =
      identity::SpiffeId::Parse(absl::StrCat("spiffe://", kTrustDomain, "/vm/bootstrap"));
  CP_CHECK_OK(bootstrap_id.status());
  CP_CHECK_OK(CreateJoinToken(tokens_path_, "bootstrap", *bootstrap_id, std::nullopt,
                              /*single_use=*/true)
                  .status());
  JoinTokenAuthenticatorOptions join_options;
  join_options.tokens_file = tokens_path_;
  auto join_tokens = JoinTokenAuthenticator::Create(std::move(join_options));
  CP_CHECK_OK(join_tokens.status());
  join_tokens_ = *std::move(join_tokens);

  admission_ = std::make_unique<IssuanceAdmission>(options.admission);
  IdentityServiceOptions service_options;
  service_options.trust_domain = kTrustDomain;
  service_options.kubernetes_authenticator = kubernetes_.get();
  service_options.join_token_authenticator = join_tokens_.get();
  service_ = std::make_unique<IdentityService>(service_options, ca_.get(), mesh_.get(),
                                               admission_.get(), &metrics_);

  // The serving certificate, from the mesh CA, watched by gRPC's file provider (as main.cc).
  absl::StatusOr<identity::SpiffeId> serving_id = identity::SpiffeId::Parse(
      absl::StrCat("spiffe://", kTrustDomain, "/ns/trellis-system/sa/trellis-control-plane"));
  CP_CHECK_OK(serving_id.status());
  serving_ = std::make_unique<ServingIdentity>(
      ServingIdentity::Options{state_dir, *serving_id, {"localhost"}, absl::Hours(24)}, ca_.get());
  CP_CHECK_OK(serving_->Refresh(absl::Now()));

  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      serving_->key_path(), serving_->cert_path(), /*refresh_interval_sec=*/1);
  grpc::experimental::TlsServerCredentialsOptions tls_options(provider);
  tls_options.watch_identity_key_cert_pairs();
  tls_options.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::experimental::TlsServerCredentials(tls_options),
                           &port_);
  builder.RegisterService(service_.get());
  PrepareIssuanceProcess();  // as control-plane/main.cc does
  SetMaxConnectionAge(&builder, options.max_connection_age, options.max_connection_age_grace);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    ADD_FAILURE() << "cannot start the gRPC server on 127.0.0.1:0";
    return false;
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  return true;
}

CpTestServer::~CpTestServer() {
  if (server_ != nullptr) {
    service_->CloseWatches();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_->Wait();
    server_.reset();
  }
  service_.reset();
  serving_.reset();
  admission_.reset();
  join_tokens_.reset();
  kubernetes_.reset();
  ca_.reset();
  mesh_.reset();
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

std::string CpTestServer::KubernetesToken(const std::string& ns, const std::string& sa,
                                          bool ec) const {
  return MintToken(ec ? *ec_key_ : *rsa_key_, ServiceAccountClaims(absl::Now(), ns, sa));
}

std::string CpTestServer::NewJoinToken(const std::string& spiffe_id, bool single_use) {
  absl::StatusOr<identity::SpiffeId> id = identity::SpiffeId::Parse(spiffe_id);
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return "";
  absl::StatusOr<std::string> token = CreateJoinToken(
      tokens_path_, absl::StrCat("token-", ++next_token_), *id, std::nullopt, single_use);
  EXPECT_TRUE(token.ok()) << token.status();
  const absl::Status reloaded = join_tokens_->Reload();
  EXPECT_TRUE(reloaded.ok()) << reloaded;
  return token.ok() ? *token : "";
}

std::shared_ptr<grpc::Channel> CpTestServer::NewChannel(const ClientCert* cert) const {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = client_roots_pem_;
  if (cert != nullptr) {
    ssl.pem_private_key = cert->key_pem;
    ssl.pem_cert_chain = cert->chain_pem;
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  // Never share a connection with another channel (they may present other client certificates).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_), grpc::SslCredentials(ssl),
                                   args);
}

std::unique_ptr<trellis::identity::v1::Identity::Stub> CpTestServer::NewStub(
    const ClientCert* cert) const {
  return trellis::identity::v1::Identity::NewStub(NewChannel(cert));
}

IssueResult CpTestServer::Issue(const IssueCertificateRequest& request,
                                const ClientCert* cert) const {
  auto stub = NewStub(cert);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  IssueResult result;
  result.status = stub->IssueCertificate(&context, request, &result.response);
  for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
    result.trailers.emplace(std::string(key.data(), key.size()),
                            std::string(value.data(), value.size()));
  }
  return result;
}

IssueResult CpTestServer::IssueWithJoinToken(const Workload& workload, const std::string& token,
                                             std::optional<absl::Duration> ttl) const {
  IssueCertificateRequest request;
  request.set_csr_der(workload.csr_der);
  request.set_join_token(token);
  if (ttl.has_value()) {
    request.mutable_requested_ttl()->set_seconds(absl::ToInt64Seconds(*ttl));
  }
  return Issue(request);
}

IssueResult CpTestServer::IssueWithKubernetesToken(const Workload& workload,
                                                   const std::string& token) const {
  IssueCertificateRequest request;
  request.set_csr_der(workload.csr_der);
  request.set_kubernetes_token(token);
  return Issue(request);
}

IssueResult CpTestServer::Renew(const Workload& workload, const ClientCert& cert) const {
  IssueCertificateRequest request;
  request.set_csr_der(workload.csr_der);
  return Issue(request, &cert);
}

// === WatchClient ===

WatchClient::WatchClient(const CpTestServer& server, uint64_t known_version)
    : stub_(server.NewStub()) {
  WatchRequest request;
  request.set_known_version(known_version);
  thread_ = std::thread([this, request] {
    std::unique_ptr<grpc::ClientReader<WatchResponse>> reader = stub_->Watch(&context_, request);
    WatchResponse response;
    while (reader->Read(&response)) {
      std::lock_guard<std::mutex> lock(mu_);
      messages_.push_back(response);
      cv_.notify_all();
    }
    grpc::Status status = reader->Finish();
    std::lock_guard<std::mutex> lock(mu_);
    end_ = status;
    cv_.notify_all();
  });
}

WatchClient::~WatchClient() {
  context_.TryCancel();
  thread_.join();
}

std::optional<grpc::Status> WatchClient::WaitForEnd(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] { return end_.has_value(); });
  return end_;
}

size_t WatchClient::message_count() {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_.size();
}

}  // namespace trellis::control_plane::testing
