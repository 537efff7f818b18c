// The Identity service end to end: a real gRPC server over TLS (as control-plane/main.cc wires
// it) and real TLS clients, checking what a workload would see: the certificate it gets, and the
// exact status code and message of every refusal.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <fstream>
#include <future>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/crypto/handles.h"
#include "common/identity/ca.h"
#include "common/identity/certificate.h"
#include "common/identity/csr.h"
#include "common/identity/trust_bundle.h"
#include "common/tls/deny_list.h"
#include "common/tls/peer_verifier.h"
#include "control-plane/auth/join_token_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/time_convert.h"
#include "tests/control-plane/server/cp_test_server.h"

namespace trellis::control_plane::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using trellis::identity::v1::IssueCertificateRequest;
using trellis::identity::v1::IssueCertificateResponse;

using ::trellis::proto::FromProto;

std::vector<identity::Certificate> ParseChain(const IssueCertificateResponse& response) {
  std::vector<identity::Certificate> chain;
  for (const std::string& der : response.cert_chain_der()) {
    absl::StatusOr<identity::Certificate> cert = identity::Certificate::FromDer(der);
    EXPECT_TRUE(cert.ok()) << cert.status();
    if (cert.ok()) chain.push_back(*cert);
  }
  return chain;
}

// Verifies the response's chain (leaf first) against the response's own trust bundle, as a peer
// would, expecting exactly `spiffe_id`.
::testing::AssertionResult ChainVerifies(const IssueCertificateResponse& response,
                                         const std::string& spiffe_id) {
  std::vector<identity::Certificate> chain = ParseChain(response);
  if (chain.empty()) return ::testing::AssertionFailure() << "empty chain";
  std::vector<std::string> roots(response.trust_bundle_der().begin(),
                                 response.trust_bundle_der().end());
  absl::StatusOr<identity::TrustBundle> bundle = identity::TrustBundle::FromDer(roots);
  if (!bundle.ok()) return ::testing::AssertionFailure() << bundle.status();
  absl::StatusOr<std::unique_ptr<tls::PeerVerifier>> verifier =
      tls::PeerVerifier::Create(*bundle, tls::DenyList());
  if (!verifier.ok()) return ::testing::AssertionFailure() << verifier.status();
  crypto::X509Stack intermediates(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    X509_up_ref(chain[i].get());
    sk_X509_push(intermediates.get(), chain[i].get());
  }
  absl::StatusOr<identity::SpiffeIdPattern> pattern = identity::SpiffeIdPattern::Parse(spiffe_id);
  if (!pattern.ok()) return ::testing::AssertionFailure() << pattern.status();
  for (tls::PeerRole role : {tls::PeerRole::kClient, tls::PeerRole::kServer}) {
    const tls::PeerVerification check =
        (*verifier)->Verify(chain[0].get(), intermediates.get(), role, absl::Now(), {*pattern});
    if (!check.ok()) {
      return ::testing::AssertionFailure()
             << "chain does not verify: " << tls::FailureReasonLabel(*check.reason) << ": "
             << check.detail;
    }
  }
  return ::testing::AssertionSuccess();
}

uint64_t HistogramCount(const ControlPlaneMetrics& metrics) {
  const std::string text = metrics.Render();
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    constexpr absl::string_view kName = "trellis_cp_issuance_duration_seconds_count ";
    if (absl::StartsWith(line, kName)) {
      uint64_t value = 0;
      EXPECT_TRUE(absl::SimpleAtoi(line.substr(kName.size()), &value)) << line;
      return value;
    }
  }
  ADD_FAILURE() << "no histogram count in:\n" << text;
  return 0;
}

// A well-formed join token that no tokens file knows.
std::string UnknownJoinToken() {
  return absl::StrCat(kJoinTokenPrefix, Base64Url(std::string(kJoinTokenRandomBytes, '\x5a')));
}

ClientCert ClientCertOf(const ::trellis::testing::TestLeaf& leaf) {
  absl::StatusOr<std::string> pem = leaf.key->ToPem();
  EXPECT_TRUE(pem.ok()) << pem.status();
  return ClientCert{pem.ok() ? *pem : "", identity::ToPemChain(leaf.chain)};
}

class IdentityServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Restart({}); }

  void Restart(CpTestServerOptions options) {
    server_.reset();
    server_ = CpTestServer::Start(std::move(options));
    ASSERT_NE(server_, nullptr);
  }

  // Issues a first certificate for `spiffe_id` with a join token; fails the test otherwise.
  IssueCertificateResponse IssueFirst(const Workload& workload, const std::string& spiffe_id) {
    IssueResult result = server_->IssueWithJoinToken(workload, server_->NewJoinToken(spiffe_id));
    EXPECT_TRUE(result.status.ok()) << result.status.error_message();
    return result.response;
  }

  std::unique_ptr<CpTestServer> server_;
};

TEST_F(IdentityServiceTest, IssuesWithJoinToken) {
  const std::string id = "spiffe://cluster.local/vm/edge-gw-1";
  const Workload workload = NewWorkload();
  const std::string token = server_->NewJoinToken(id);
  const absl::Time before = absl::Now();
  IssueResult result = server_->IssueWithJoinToken(workload, token);
  const absl::Time after = absl::Now();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();

  const IssueCertificateResponse& response = result.response;
  EXPECT_EQ(response.spiffe_id(), id);
  EXPECT_TRUE(ChainVerifies(response, id));
  std::vector<identity::Certificate> chain = ParseChain(response);
  ASSERT_EQ(chain.size(), 2u);  // leaf, then the signing intermediate; never the root
  EXPECT_EQ(chain[1], server_->intermediate().cert);
  ASSERT_EQ(response.trust_bundle_der_size(), 1);
  EXPECT_EQ(response.trust_bundle_der(0), server_->root().cert.ToDer());
  const identity::Certificate& leaf = chain[0];
  EXPECT_EQ(leaf.uri_sans(), std::vector<std::string>{id});
  EXPECT_FALSE(leaf.is_ca());
  EXPECT_TRUE(identity::KeyMatchesCertificate(*workload.key, leaf));

  // Default lifetime: one hour from now.
  const absl::Duration ttl = absl::Hours(1);
  EXPECT_GE(leaf.not_after(), before + ttl - absl::Seconds(1));
  EXPECT_LE(leaf.not_after(), after + ttl + absl::Seconds(1));
  EXPECT_EQ(absl::ToUnixSeconds(FromProto(response.not_after())),
            absl::ToUnixSeconds(leaf.not_after()));
  // Refresh at about half the lifetime, jittered within [40%, 60%].
  const absl::Time refresh = FromProto(response.refresh_after());
  EXPECT_GE(refresh, before + ttl * 0.4 - absl::Seconds(1));
  EXPECT_LE(refresh, after + ttl * 0.6 + absl::Seconds(1));

  EXPECT_EQ(server_->metrics().issuances("ok", "join_token"), 1u);
}

TEST_F(IdentityServiceTest, IssuesWithKubernetesTokenRs256) {
  const Workload workload = NewWorkload(KubernetesId("shop", "checkout"));
  IssueResult result =
      server_->IssueWithKubernetesToken(workload, server_->KubernetesToken("shop", "checkout"));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.response.spiffe_id(), KubernetesId("shop", "checkout"));
  EXPECT_TRUE(ChainVerifies(result.response, KubernetesId("shop", "checkout")));
  EXPECT_EQ(server_->metrics().issuances("ok", "kubernetes_jwt"), 1u);
}

TEST_F(IdentityServiceTest, IssuesWithKubernetesTokenEs256) {
  const Workload workload = NewWorkload();
  IssueResult result = server_->IssueWithKubernetesToken(
      workload, server_->KubernetesToken("payments", "ledger", /*ec=*/true));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.response.spiffe_id(), KubernetesId("payments", "ledger"));
  EXPECT_TRUE(ChainVerifies(result.response, KubernetesId("payments", "ledger")));
}

void ExpectRenewal(const CpTestServer& server, const Workload& first,
                   const IssueCertificateResponse& issued, const std::string& id) {
  const Workload next = NewWorkload();  // a fresh key, as a proxy rotating its key would
  IssueResult renewed = server.Renew(next, first.CertFrom(issued));
  ASSERT_TRUE(renewed.status.ok()) << renewed.status.error_message();
  EXPECT_EQ(renewed.response.spiffe_id(), id);
  EXPECT_TRUE(ChainVerifies(renewed.response, id));
  std::vector<identity::Certificate> old_chain = ParseChain(issued);
  std::vector<identity::Certificate> new_chain = ParseChain(renewed.response);
  ASSERT_FALSE(old_chain.empty());
  ASSERT_FALSE(new_chain.empty());
  EXPECT_NE(new_chain[0].serial_hex(), old_chain[0].serial_hex());
  EXPECT_TRUE(identity::KeyMatchesCertificate(*next.key, new_chain[0]));
}

// On the server side gRPC's x509_pem_cert_chain property holds the chain the client sent WITHOUT
// its leaf (OpenSSL's SSL_get_peer_cert_chain), and a gRPC client always sends more than its leaf;
// PeerChain takes the leaf from x509_pem_cert and only the rest from the chain, so a renewal with
// the issued chain (leaf + intermediate) succeeds.
TEST_F(IdentityServiceTest, RenewsWithTheIssuedCertificateAsClientCertificate) {
  const std::string id = "spiffe://cluster.local/vm/edge-gw-2";
  const Workload first = NewWorkload();
  const IssueCertificateResponse issued = IssueFirst(first, id);
  ASSERT_EQ(issued.cert_chain_der_size(), 2);  // leaf + intermediate
  ExpectRenewal(*server_, first, issued, id);
  EXPECT_EQ(server_->metrics().issuances("ok", "renewal"), 1u);
}

// The control plane keeps the parse of the last intermediates text a renewal presented; each
// renewal is still verified in full, so a foreign chain after a cached one is refused, and a good
// one after it is accepted.
TEST_F(IdentityServiceTest, RenewalsAfterOneAnotherAreEachVerified) {
  const Workload a = NewWorkload();
  const Workload b = NewWorkload();
  const IssueCertificateResponse issued_a = IssueFirst(a, "spiffe://cluster.local/vm/edge-gw-7");
  const IssueCertificateResponse issued_b = IssueFirst(b, "spiffe://cluster.local/vm/edge-gw-8");
  ExpectRenewal(*server_, a, issued_a, "spiffe://cluster.local/vm/edge-gw-7");
  ExpectRenewal(*server_, b, issued_b, "spiffe://cluster.local/vm/edge-gw-8");
  const ::trellis::testing::TestCa other = ::trellis::testing::MakeRoot("Somebody Else's Root");
  const ::trellis::testing::TestLeaf leaf =
      ::trellis::testing::MakeLeaf(other, "spiffe://cluster.local/vm/edge-gw-7");
  IssueResult foreign = server_->Renew(NewWorkload(), ClientCertOf(leaf));
  EXPECT_EQ(foreign.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ExpectRenewal(*server_, a, issued_a, "spiffe://cluster.local/vm/edge-gw-7");
  EXPECT_EQ(server_->metrics().issuances("ok", "renewal"), 3u);
}

// --- Kubernetes token refusals ---

struct JwtCase {
  std::string name;
  std::function<std::string(const CpTestServer&)> token;
  std::string message;
};

TEST_F(IdentityServiceTest, RefusesBadKubernetesTokens) {
  const std::vector<JwtCase> cases = {
      {"bad signature",
       [](const CpTestServer&) {
         // Same kid as the issuer's key, but another key signed it.
         const TestSigningKey impostor = TestSigningKey::NewRsa("rsa-key-1");
         return MintToken(impostor, ServiceAccountClaims(absl::Now(), "shop", "checkout"));
       },
       "token signature does not verify"},
      {"wrong audience",
       [](const CpTestServer& server) {
         nlohmann::json claims = ServiceAccountClaims(absl::Now(), "shop", "checkout");
         claims["aud"] = nlohmann::json::array({"vault"});
         return MintToken(server.rsa_key(), claims);
       },
       "does not include \"trellis\""},
      {"expired",
       [](const CpTestServer& server) {
         nlohmann::json claims =
             ServiceAccountClaims(absl::Now() - absl::Hours(3), "shop", "checkout");
         return MintToken(server.rsa_key(), claims);
       },
       "token expired at"},
      {"other issuer",
       [](const CpTestServer& server) {
         nlohmann::json claims = ServiceAccountClaims(absl::Now(), "shop", "checkout");
         claims["iss"] = "https://oidc.other-cluster.example";
         return MintToken(server.ec_key(), claims);
       },
       "is not trusted"},
  };
  for (const JwtCase& c : cases) {
    SCOPED_TRACE(c.name);
    IssueResult result = server_->IssueWithKubernetesToken(NewWorkload(), c.token(*server_));
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(
        result.status.error_message(),
        AllOf(HasSubstr("kubernetes service-account token rejected"), HasSubstr(c.message)));
    EXPECT_EQ(result.response.cert_chain_der_size(), 0);
  }
  EXPECT_EQ(server_->metrics().issuances("unauthenticated", "kubernetes_jwt"), cases.size());
  EXPECT_EQ(server_->metrics().issuances("ok", "kubernetes_jwt"), 0u);
}

// --- Join token refusals ---

TEST_F(IdentityServiceTest, RefusesUnknownJoinToken) {
  IssueResult result = server_->IssueWithJoinToken(NewWorkload(), UnknownJoinToken());
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(result.status.error_message(), HasSubstr("unknown join token"));
  EXPECT_EQ(server_->metrics().issuances("unauthenticated", "join_token"), 1u);
}

TEST_F(IdentityServiceTest, RefusesReusedSingleUseJoinToken) {
  const std::string token = server_->NewJoinToken("spiffe://cluster.local/vm/edge-gw-3");
  IssueResult first = server_->IssueWithJoinToken(NewWorkload(), token);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  IssueResult second = server_->IssueWithJoinToken(NewWorkload(), token);
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(second.status.error_message(), HasSubstr("was already used"));
}

// --- CSR refusals ---

TEST_F(IdentityServiceTest, RefusesCsrNamingAnotherIdentity) {
  const std::string mine = KubernetesId("shop", "checkout");
  const std::string other = KubernetesId("kube-system", "admin");
  IssueResult result = server_->IssueWithKubernetesToken(
      NewWorkload(other), server_->KubernetesToken("shop", "checkout"));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(result.status.error_message(), AllOf(HasSubstr(mine), HasSubstr(other)));
  EXPECT_EQ(server_->metrics().issuances("permission_denied", "kubernetes_jwt"), 1u);
}

crypto::UniquePtr<EVP_PKEY> GenerateRsa2048() {
  crypto::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr));
  EXPECT_NE(ctx, nullptr);
  EXPECT_EQ(EVP_PKEY_keygen_init(ctx.get()), 1);
  EXPECT_EQ(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048), 1);
  EVP_PKEY* key = nullptr;
  EXPECT_EQ(EVP_PKEY_keygen(ctx.get(), &key), 1);
  return crypto::UniquePtr<EVP_PKEY>(key);
}

std::string ReadFixture(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

TEST_F(IdentityServiceTest, RefusesBadCsrs) {
  absl::StatusOr<identity::PrivateKey> rsa = identity::PrivateKey::FromEvpPkey(GenerateRsa2048());
  ASSERT_TRUE(rsa.ok()) << rsa.status();
  absl::StatusOr<std::string> rsa_csr = identity::CreateCsrDer(*rsa);
  ASSERT_TRUE(rsa_csr.ok()) << rsa_csr.status();
  const std::string p192_csr = ReadFixture("tests/common/identity/testdata/csr_p192.der");
  ASSERT_FALSE(p192_csr.empty());

  struct Case {
    std::string name;
    std::string csr_der;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"RSA key", *rsa_csr, "CSR key is RSA"},
      {"P-192 key", p192_csr, "only ECDSA P-256 or P-384"},
      {"garbage", "this is not a certificate signing request",
       "CSR is not a DER-encoded PKCS#10 request"},
      {"empty", "", "CSR is empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    IssueCertificateRequest request;
    request.set_csr_der(c.csr_der);
    request.set_kubernetes_token(server_->KubernetesToken("shop", "checkout"));
    IssueResult result = server_->Issue(request);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(result.status.error_message(), HasSubstr(c.message));
  }
  EXPECT_EQ(server_->metrics().issuances("invalid_argument", "kubernetes_jwt"), cases.size());
}

TEST_F(IdentityServiceTest, RefusesCallWithNoCredentialAndNoClientCertificate) {
  IssueCertificateRequest request;
  request.set_csr_der(NewWorkload().csr_der);
  IssueResult result = server_->Issue(request);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(
      result.status.error_message(),
      AllOf(HasSubstr("no credential"), HasSubstr("kubernetes_token"), HasSubstr("join_token")));
  EXPECT_EQ(server_->metrics().issuances("unauthenticated", "renewal"), 1u);
}

// --- Revocation ---

// Disabled by the PeerChain bug: see RenewsWithTheIssuedCertificateAsClientCertificate.
TEST_F(IdentityServiceTest, RefusesRenewalWithDeniedSerial) {
  const std::string id = "spiffe://cluster.local/vm/edge-gw-4";
  const Workload workload = NewWorkload();
  const IssueCertificateResponse issued = IssueFirst(workload, id);
  std::vector<identity::Certificate> chain = ParseChain(issued);
  ASSERT_FALSE(chain.empty());
  const std::string serial = chain[0].serial_hex();

  // The operator's deny-list file, as DenyListFile in main.cc reads and publishes it.
  const std::string path = server_->dir() + "/deny-list.txt";
  {
    std::ofstream out(path);
    out << "# compromised VM\nserial:" << serial << "\n";
  }
  absl::StatusOr<std::string> text = identity::ReadFileToString(path);
  ASSERT_TRUE(text.ok()) << text.status();
  absl::StatusOr<tls::DenyList> list = tls::DenyList::Parse(*text);
  ASSERT_TRUE(list.ok()) << list.status();
  server_->mesh().SetDenyList(*list);

  IssueResult result = server_->Renew(NewWorkload(), workload.CertFrom(issued));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(result.status.error_message(), HasSubstr("renewal refused"));
  EXPECT_THAT(result.status.error_message(), HasSubstr(serial));
  EXPECT_EQ(server_->metrics().issuances("permission_denied", "renewal"), 1u);
}

// The control plane keeps the parse of a renewing client's certificate (OpenSSL 3 parses slowly),
// never a decision: a certificate that renewed once is refused on its next renewal once its
// serial is on the deny-list.
TEST_F(IdentityServiceTest, CertificateSeenBeforeIsStillCheckedAgainstTheDenyList) {
  const std::string id = "spiffe://cluster.local/vm/edge-gw-9";
  const Workload workload = NewWorkload();
  const IssueCertificateResponse issued = IssueFirst(workload, id);
  ExpectRenewal(*server_, workload, issued, id);  // the leaf's parse is now kept
  std::vector<identity::Certificate> chain = ParseChain(issued);
  ASSERT_FALSE(chain.empty());
  absl::StatusOr<tls::DenyList> list =
      tls::DenyList::Parse(absl::StrCat("serial:", chain[0].serial_hex(), "\n"));
  ASSERT_TRUE(list.ok()) << list.status();
  server_->mesh().SetDenyList(*list);

  IssueResult result = server_->Renew(NewWorkload(), workload.CertFrom(issued));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(result.status.error_message(), HasSubstr("renewal refused"));
}

TEST_F(IdentityServiceTest, RefusesRenewalWithCertificateFromAnotherCa) {
  const ::trellis::testing::TestCa other = ::trellis::testing::MakeRoot("Somebody Else's Root");
  const ::trellis::testing::TestLeaf leaf =
      ::trellis::testing::MakeLeaf(other, "spiffe://cluster.local/vm/edge-gw-5");
  IssueResult result = server_->Renew(NewWorkload(), ClientCertOf(leaf));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(result.status.error_message(),
              AllOf(HasSubstr("renewal certificate refused (unknown_ca)"),
                    HasSubstr("authenticate with a token instead")));
}

TEST_F(IdentityServiceTest, RefusesDeniedIdentityEvenWithValidToken) {
  absl::StatusOr<tls::DenyList> list =
      tls::DenyList::Create({}, {KubernetesId("shop", "compromised")});
  ASSERT_TRUE(list.ok()) << list.status();
  server_->mesh().SetDenyList(*list);
  IssueResult result = server_->IssueWithKubernetesToken(
      NewWorkload(), server_->KubernetesToken("shop", "compromised"));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(result.status.error_message(), AllOf(HasSubstr(KubernetesId("shop", "compromised")),
                                                   HasSubstr("is on the revocation deny-list")));
  // Another identity is not affected.
  IssueResult other = server_->IssueWithKubernetesToken(
      NewWorkload(), server_->KubernetesToken("shop", "checkout"));
  EXPECT_TRUE(other.status.ok()) << other.status.error_message();
}

// --- Lifetimes ---

TEST_F(IdentityServiceTest, RequestedTtlOutsideRangeIsRefusedNamingTheRange) {
  CpTestServerOptions options;
  options.signer.min_ttl = absl::Minutes(1);
  options.signer.default_ttl = absl::Hours(1);
  options.signer.max_ttl = absl::Hours(2);
  Restart(options);
  for (absl::Duration ttl : {absl::Seconds(10), absl::Hours(3)}) {
    SCOPED_TRACE(absl::FormatDuration(ttl));
    IssueCertificateRequest request;
    request.set_csr_der(NewWorkload().csr_der);
    request.set_kubernetes_token(server_->KubernetesToken("shop", "checkout"));
    request.mutable_requested_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
    IssueResult result = server_->Issue(request);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(result.status.error_message(),
                AllOf(HasSubstr("requested TTL"), HasSubstr("[1m, 2h]")));
  }
}

TEST_F(IdentityServiceTest, RequestedTtlWithinRangeIsHonoured) {
  const absl::Duration ttl = absl::Minutes(30);
  IssueCertificateRequest request;
  request.set_csr_der(NewWorkload().csr_der);
  request.set_kubernetes_token(server_->KubernetesToken("shop", "checkout"));
  request.mutable_requested_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
  const absl::Time before = absl::Now();
  IssueResult result = server_->Issue(request);
  const absl::Time after = absl::Now();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  std::vector<identity::Certificate> chain = ParseChain(result.response);
  ASSERT_FALSE(chain.empty());
  EXPECT_GE(chain[0].not_after(), before + ttl - absl::Seconds(1));
  EXPECT_LE(chain[0].not_after(), after + ttl + absl::Seconds(1));
  const absl::Time refresh = FromProto(result.response.refresh_after());
  EXPECT_GE(refresh, before + ttl * 0.4 - absl::Seconds(1));
  EXPECT_LE(refresh, after + ttl * 0.6 + absl::Seconds(1));
}

// --- Admission ---

TEST_F(IdentityServiceTest, PerIdentityRateLimitRefusesWithRetryHint) {
  CpTestServerOptions options;
  options.admission.per_identity_burst = 2;
  options.admission.per_identity_rate_per_second = 0.001;
  Restart(options);
  const std::string token = server_->KubernetesToken("shop", "loop");
  for (int i = 0; i < 2; ++i) {
    IssueResult ok = server_->IssueWithKubernetesToken(NewWorkload(), token);
    ASSERT_TRUE(ok.status.ok()) << i << ": " << ok.status.error_message();
  }
  IssueResult limited = server_->IssueWithKubernetesToken(NewWorkload(), token);
  EXPECT_EQ(limited.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(limited.status.error_message(),
              AllOf(HasSubstr(KubernetesId("shop", "loop")), HasSubstr("too often")));
  auto hint = limited.trailers.find(kRetryAfterMetadataKey);
  ASSERT_NE(hint, limited.trailers.end()) << "no retry-after-ms trailer";
  int64_t ms = 0;
  ASSERT_TRUE(absl::SimpleAtoi(hint->second, &ms)) << hint->second;
  EXPECT_GT(ms, 0);
  EXPECT_EQ(server_->metrics().issuances("resource_exhausted", "kubernetes_jwt"), 1u);

  // Another identity has its own bucket.
  IssueResult other = server_->IssueWithKubernetesToken(
      NewWorkload(), server_->KubernetesToken("shop", "checkout"));
  EXPECT_TRUE(other.status.ok()) << other.status.error_message();
}

// Polls `condition` for up to 10 s.
bool Eventually(const std::function<bool()>& condition) {
  for (int i = 0; i < 1000; ++i) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return condition();
}

// Overload through real gRPC. The only signing slot is held by the test: a first issuance waits
// in the admission queue (costing no gRPC thread) and starts as soon as the slot frees; with the
// slot kept, callers are told UNAVAILABLE with a retry hint, after their bounded wait or at once
// when the waiting room is full, instead of being left to time out.
TEST_F(IdentityServiceTest, OverloadIsAnsweredWithRetryHintsNotTimeouts) {
  CpTestServerOptions options;
  options.admission.max_concurrent = 1;
  options.admission.reserved_for_first_issuance = 0;
  options.admission.first_issuance_wait = absl::Seconds(2);
  options.admission.max_waiting = 4;
  Restart(options);
  IssuanceAdmission& admission = server_->admission();

  // A waiting call starts when the slot frees.
  ASSERT_TRUE(admission.AcquireSlot(false).status.ok());
  const std::string first_token = server_->NewJoinToken("spiffe://cluster.local/vm/queued");
  auto queued = std::async(std::launch::async,
                           [&] { return server_->IssueWithJoinToken(NewWorkload(), first_token); });
  ASSERT_TRUE(Eventually([&] { return admission.waiting() == 1; }));
  admission.Release();
  IssueResult started = queued.get();
  EXPECT_TRUE(started.status.ok()) << started.status.error_message();

  // Twelve callers while the slot stays taken: four wait their two seconds, eight find the
  // waiting room full.
  ASSERT_TRUE(admission.AcquireSlot(false).status.ok());
  std::vector<std::string> tokens;
  for (int i = 0; i < 12; ++i) {
    tokens.push_back(server_->NewJoinToken(absl::StrCat("spiffe://cluster.local/vm/over", i)));
  }
  std::vector<std::future<IssueResult>> calls;
  for (const std::string& token : tokens) {
    calls.push_back(std::async(std::launch::async, [&, token] {
      return server_->IssueWithJoinToken(NewWorkload(), token);
    }));
  }
  int waited = 0;
  int turned_away = 0;
  for (auto& call : calls) {
    IssueResult r = call.get();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    auto hint = r.trailers.find(kRetryAfterMetadataKey);
    ASSERT_NE(hint, r.trailers.end()) << "no retry-after-ms trailer: " << r.status.error_message();
    int64_t ms = 0;
    EXPECT_TRUE(absl::SimpleAtoi(hint->second, &ms) && ms > 0) << hint->second;
    if (absl::StrContains(r.status.error_message(), "no signing slot within 2s")) ++waited;
    if (absl::StrContains(r.status.error_message(), "4 waiting")) ++turned_away;
  }
  EXPECT_EQ(waited, 4);
  EXPECT_EQ(turned_away, 8);
  EXPECT_EQ(server_->metrics().issuances("unavailable", "none"), 12u);
  admission.Release();

  // The refused tokens were not spent: a caller that comes back as told gets its certificate.
  IssueResult retried = server_->IssueWithJoinToken(NewWorkload(), tokens[0]);
  EXPECT_TRUE(retried.status.ok()) << retried.status.error_message();
}

// --- Metrics and health ---

TEST_F(IdentityServiceTest, MetricsCountIssuancesByResultAndAuthenticator) {
  ControlPlaneMetrics& metrics = server_->metrics();
  const uint64_t histogram_before = HistogramCount(metrics);

  IssueResult ok = server_->IssueWithJoinToken(
      NewWorkload(), server_->NewJoinToken("spiffe://cluster.local/vm/metrics"));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  IssueResult k8s = server_->IssueWithKubernetesToken(
      NewWorkload(), server_->KubernetesToken("shop", "checkout", /*ec=*/true));
  ASSERT_TRUE(k8s.status.ok()) << k8s.status.error_message();
  IssueResult refused = server_->IssueWithJoinToken(NewWorkload(), UnknownJoinToken());
  ASSERT_FALSE(refused.status.ok());

  EXPECT_EQ(metrics.issuances("ok", "join_token"), 1u);
  EXPECT_EQ(metrics.issuances("ok", "kubernetes_jwt"), 1u);
  EXPECT_EQ(metrics.issuances("unauthenticated", "join_token"), 1u);
  EXPECT_EQ(metrics.issuances("ok", "renewal"), 0u);
  // The latency histogram observes successful issuances only.
  EXPECT_EQ(HistogramCount(metrics), histogram_before + 2);
  const std::string text = metrics.Render();
  EXPECT_THAT(text, HasSubstr("trellis_cp_issuances_total{result=\"ok\",authenticator=\"join_"
                              "token\"} 1\n"));
}

TEST_F(IdentityServiceTest, HealthCheckAnswersServing) {
  grpc::GenericStub stub(server_->NewChannel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  // grpc.health.v1.HealthCheckRequest{service: ""} serializes to no bytes at all.
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(status); });
  std::future<grpc::Status> result = done.get_future();
  ASSERT_EQ(result.wait_for(std::chrono::seconds(15)), std::future_status::ready);
  const grpc::Status status = result.get();
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  // HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

}  // namespace
}  // namespace trellis::control_plane::testing
