// Unit tests for TokenReviewAuthenticator against a fake API server.
//
// The fake below is a loopback HTTPS server with a throwaway self-signed certificate that answers
// canned TokenReview JSON. It stands in for kube-apiserver ONLY to pin down how each kind of
// answer (authenticated, refused, 401/403, 5xx, garbage, too slow) maps to a status, plus the
// cache and the token-file handling. That the real API server produces these answers for real
// tokens is checked by tests/e2e/kube:tokenreview_e2e_test against a real kube-apiserver.

#include "control-plane/auth/tokenreview_authenticator.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kWorkloadToken[] = "workload-token-Zq81x";
constexpr char kOwnToken[] = "control-plane-token-1";

std::string TestDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

// A self-signed P-256 certificate for 127.0.0.1 / localhost: key and certificate in PEM.
struct TestCert {
  std::string key_pem;
  std::string cert_pem;
};

std::string BioToString(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(n));
}

TestCert MakeSelfSignedCert(const std::string& cn) {
  TestCert out;
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert),
                   static_cast<long>(std::hash<std::string>{}(cn)&0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  for (const auto& [nid, value] : std::vector<std::pair<int, const char*>>{
           {NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"},
           {NID_basic_constraints, "critical,CA:TRUE"},
           {NID_key_usage, "critical,digitalSignature,keyCertSign"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(cert, key, EVP_sha256());
  BIO* kb = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(kb, key, nullptr, nullptr, 0, nullptr, nullptr);
  out.key_pem = BioToString(kb);
  BIO_free(kb);
  BIO* cb = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(cb, cert);
  out.cert_pem = BioToString(cb);
  BIO_free(cb);
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

struct FakeRequest {
  std::string method;
  std::string path;
  std::string authorization;
  std::string body;
};

struct FakeResponse {
  int status = 201;
  std::string body;
  absl::Duration delay = absl::ZeroDuration();
};

// The fake API server: HTTPS on 127.0.0.1:<ephemeral>, one thread per connection, one request
// per connection (Connection: close). Every wait is bounded.
class FakeApiServer {
 public:
  explicit FakeApiServer(const TestCert& cert) {
    // The fake answers clients that gave up (the timeout test): a write to a closed socket must
    // fail with EPIPE, not kill the test. (libcurl itself sends with MSG_NOSIGNAL.)
    signal(SIGPIPE, SIG_IGN);
    ctx_ = SSL_CTX_new(TLS_server_method());
    BIO* cb = BIO_new_mem_buf(cert.cert_pem.data(), static_cast<int>(cert.cert_pem.size()));
    X509* x = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
    BIO_free(cb);
    BIO* kb = BIO_new_mem_buf(cert.key_pem.data(), static_cast<int>(cert.key_pem.size()));
    EVP_PKEY* k = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
    BIO_free(kb);
    SSL_CTX_use_certificate(ctx_, x);
    SSL_CTX_use_PrivateKey(ctx_, k);
    X509_free(x);
    EVP_PKEY_free(k);

    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 16);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakeApiServer() {
    stop_ = true;
    accept_thread_.join();
    std::vector<std::thread> workers;
    {
      absl::MutexLock lock(&mu_);
      workers.swap(workers_);
    }
    for (auto& t : workers) t.join();
    close(listen_fd_);
    SSL_CTX_free(ctx_);
  }

  std::string url() const { return absl::StrCat("https://127.0.0.1:", port_); }

  void SetResponse(FakeResponse response) {
    absl::MutexLock lock(&mu_);
    response_ = std::move(response);
  }

  int requests() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(requests_.size());
  }

  FakeRequest last_request() const {
    absl::MutexLock lock(&mu_);
    return requests_.empty() ? FakeRequest{} : requests_.back();
  }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      absl::MutexLock lock(&mu_);
      workers_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      FakeRequest request;
      if (ReadRequest(ssl, &request)) {
        FakeResponse response;
        {
          absl::MutexLock lock(&mu_);
          requests_.push_back(request);
          response = response_;
        }
        // Sleep in small steps so that the destructor is never held up for long.
        const absl::Time until = absl::Now() + response.delay;
        while (!stop_ && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
        const std::string reply = absl::StrCat("HTTP/1.1 ", response.status,
                                               " Canned\r\nContent-Type: application/json\r\n",
                                               "Content-Length: ", response.body.size(),
                                               "\r\nConnection: close\r\n\r\n", response.body);
        SSL_write(ssl, reply.data(), static_cast<int>(reply.size()));
        SSL_shutdown(ssl);
      }
    }
    SSL_free(ssl);
    close(fd);
  }

  static bool ReadRequest(SSL* ssl, FakeRequest* request) {
    std::string data;
    char buf[4096];
    size_t header_end = std::string::npos;
    size_t content_length = 0;
    while (true) {
      if (header_end == std::string::npos) {
        header_end = data.find("\r\n\r\n");
        if (header_end != std::string::npos) {
          const std::string head = data.substr(0, header_end);
          std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
          std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
          if (first.size() >= 2) {
            request->method = first[0];
            request->path = first[1];
          }
          for (size_t i = 1; i < lines.size(); ++i) {
            const std::string lower = absl::AsciiStrToLower(lines[i]);
            if (absl::StartsWith(lower, "content-length:")) {
              (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(lines[i].substr(15)),
                                     &content_length);
            } else if (absl::StartsWith(lower, "authorization:")) {
              request->authorization = std::string(absl::StripAsciiWhitespace(lines[i].substr(14)));
            }
          }
        }
      }
      if (header_end != std::string::npos && data.size() >= header_end + 4 + content_length) {
        request->body = data.substr(header_end + 4, content_length);
        return true;
      }
      const int n = SSL_read(ssl, buf, sizeof(buf));
      if (n <= 0) return false;
      data.append(buf, static_cast<size_t>(n));
    }
  }

  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  mutable absl::Mutex mu_;
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<FakeRequest> requests_ ABSL_GUARDED_BY(mu_);
  FakeResponse response_ ABSL_GUARDED_BY(mu_);
};

// A TokenReview answer as kube-apiserver writes it.
std::string Review(bool authenticated, const std::string& username,
                   std::vector<std::string> audiences = {"trellis"}, const std::string& error = "",
                   const std::string& pod = "") {
  nlohmann::json status = {{"authenticated", authenticated}};
  if (authenticated) {
    nlohmann::json user = {{"username", username},
                           {"uid", "0e4b0b5e-1"},
                           {"groups", {"system:serviceaccounts", "system:authenticated"}}};
    if (!pod.empty()) {
      user["extra"] = {{"authentication.kubernetes.io/pod-name", {pod}},
                       {"authentication.kubernetes.io/pod-uid", {"a1b2"}}};
    }
    status["user"] = user;
    status["audiences"] = audiences;
  } else {
    status["user"] = nlohmann::json::object();
    status["error"] = error;
  }
  return nlohmann::json{{"kind", "TokenReview"},
                        {"apiVersion", "authentication.k8s.io/v1"},
                        {"metadata", {{"creationTimestamp", nullptr}}},
                        {"spec", {{"token", "<not echoed in reality>"}}},
                        {"status", status}}
      .dump();
}

class TokenReviewAuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static const TestCert* cert = new TestCert(MakeSelfSignedCert("fake-kube-apiserver"));
    cert_ = *cert;
    dir_ = absl::StrCat(TestDir(), "/",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_EQ(system(absl::StrCat("mkdir -p '", dir_, "'").c_str()), 0);
    ca_file_ = dir_ + "/ca.crt";
    token_file_ = dir_ + "/token";
    WriteFile(ca_file_, cert_.cert_pem);
    WriteFile(token_file_, absl::StrCat(kOwnToken, "\n"));
    server_ = std::make_unique<FakeApiServer>(cert_);
  }

  TokenReviewOptions Options() {
    TokenReviewOptions o;
    o.api_server_url = server_->url();
    o.ca_file = ca_file_;
    o.token_file = token_file_;
    o.request_timeout = absl::Seconds(5);
    o.clock = [this] {
      absl::MutexLock lock(&clock_mu_);
      return now_;
    };
    return o;
  }

  std::unique_ptr<TokenReviewAuthenticator> Make(TokenReviewOptions o) {
    auto a = TokenReviewAuthenticator::Create(std::move(o));
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *std::move(a) : nullptr;
  }

  void Advance(absl::Duration d) {
    absl::MutexLock lock(&clock_mu_);
    now_ += d;
  }

  TestCert cert_;
  std::string dir_, ca_file_, token_file_;
  std::unique_ptr<FakeApiServer> server_;
  absl::Mutex clock_mu_;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
};

TEST_F(TokenReviewAuthenticatorTest, AuthenticatedServiceAccountGivesSpiffeId) {
  server_->SetResponse(
      {201, Review(true, "system:serviceaccount:shop:web", {"trellis"}, "", "web-7d9f-abcde")});
  auto auth = Make(Options());
  EXPECT_EQ(auth->name(), "tokenreview");
  auto id = auth->Authenticate(kWorkloadToken);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://cluster.local/ns/shop/sa/web");
  EXPECT_EQ(id->authenticator, "tokenreview");
  EXPECT_EQ(id->detail, "web-7d9f-abcde");

  // What went over the wire: a TokenReview for our audience, with our own bearer token.
  const FakeRequest request = server_->last_request();
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.path, "/apis/authentication.k8s.io/v1/tokenreviews");
  EXPECT_EQ(request.authorization, absl::StrCat("Bearer ", kOwnToken));
  const nlohmann::json body = nlohmann::json::parse(request.body, nullptr, false);
  ASSERT_TRUE(body.is_object()) << request.body;
  EXPECT_EQ(body["apiVersion"], "authentication.k8s.io/v1");
  EXPECT_EQ(body["kind"], "TokenReview");
  EXPECT_EQ(body["spec"]["token"], kWorkloadToken);
  EXPECT_EQ(body["spec"]["audiences"], nlohmann::json::array({"trellis"}));
}

TEST_F(TokenReviewAuthenticatorTest, TrustDomainAndAudienceAreOptions) {
  server_->SetResponse({200, Review(true, "system:serviceaccount:ns1:sa1", {"mesh.example"})});
  TokenReviewOptions o = Options();
  o.trust_domain = "prod.example.org";
  o.audience = "mesh.example";
  auto id = Make(o)->Authenticate(kWorkloadToken);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->spiffe_id.ToString(), "spiffe://prod.example.org/ns/ns1/sa/sa1");
  EXPECT_EQ(id->detail, "");
  const nlohmann::json body = nlohmann::json::parse(server_->last_request().body, nullptr, false);
  EXPECT_EQ(body["spec"]["audiences"], nlohmann::json::array({"mesh.example"}));
}

TEST_F(TokenReviewAuthenticatorTest, NotAuthenticatedIsUnauthenticatedWithTheServersReason) {
  server_->SetResponse({201, Review(false, "", {},
                                    "[invalid bearer token, token audiences [\"api\"] is invalid "
                                    "for the target audiences [\"trellis\"]]")});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("invalid bearer token"));
  EXPECT_THAT(id.status().message(), Not(HasSubstr(kWorkloadToken)));
  EXPECT_THAT(id.status().message(), Not(HasSubstr(kOwnToken)));
}

TEST_F(TokenReviewAuthenticatorTest, ServerErrorThatEchoesTheTokenIsScrubbed) {
  server_->SetResponse({201, Review(false, "", {}, absl::StrCat("bad token ", kWorkloadToken))});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_THAT(id.status().message(), Not(HasSubstr(kWorkloadToken)));
}

TEST_F(TokenReviewAuthenticatorTest, AudienceNotConfirmedIsUnauthenticated) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web", {"api"})});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("audience \"trellis\""));
}

TEST_F(TokenReviewAuthenticatorTest, NonServiceAccountUserIsPermissionDenied) {
  for (const std::string user : {"alice", "system:admin", "system:serviceaccount:only-namespace",
                                 "system:serviceaccount:a:b:c", "system:serviceaccount::sa"}) {
    server_->SetResponse({201, Review(true, user)});
    auto id = Make(Options())->Authenticate(kWorkloadToken);
    ASSERT_EQ(id.status().code(), absl::StatusCode::kPermissionDenied)
        << user << ": " << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr("not a service account")) << user;
  }
  // A service account whose names do not make a SPIFFE ID.
  server_->SetResponse({201, Review(true, "system:serviceaccount:Bad_NS:web")});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kPermissionDenied) << id.status();
}

TEST_F(TokenReviewAuthenticatorTest, ForbiddenForOurOwnTokenIsUnavailableNamingRbac) {
  server_->SetResponse(
      {403, R"({"kind":"Status","apiVersion":"v1","status":"Failure","message":"tokenreviews.)"
            R"(authentication.k8s.io is forbidden: User \"trellis-control-plane\" cannot create )"
            R"(resource \"tokenreviews\"","reason":"Forbidden","code":403})"});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("RBAC"));
  EXPECT_THAT(id.status().message(), HasSubstr("create tokenreviews"));
  EXPECT_THAT(id.status().message(), HasSubstr("HTTP 403"));
  EXPECT_THAT(id.status().message(), HasSubstr("cannot create resource"));
  EXPECT_THAT(id.status().message(), Not(HasSubstr(kOwnToken)));
}

TEST_F(TokenReviewAuthenticatorTest, UnauthorizedForOurOwnTokenIsUnavailable) {
  server_->SetResponse({401, R"({"kind":"Status","message":"Unauthorized","code":401})"});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("create tokenreviews"));
  EXPECT_THAT(id.status().message(), HasSubstr(token_file_));
  EXPECT_THAT(id.status().message(), Not(HasSubstr(kOwnToken)));
}

TEST_F(TokenReviewAuthenticatorTest, ServerErrorIsUnavailable) {
  server_->SetResponse({500, R"({"kind":"Status","message":"etcdserver: request timed out"})"});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("HTTP 500"));
  EXPECT_THAT(id.status().message(), HasSubstr("etcdserver"));
}

TEST_F(TokenReviewAuthenticatorTest, GarbageAnswersAreUnavailable) {
  for (const std::string body :
       {"this is not json", "", "[1,2,3]", R"({"kind":"Status"})", R"({"kind":7,"status":{}})",
        R"({"kind":"TokenReview","status":"yes"})", "{\"kind\":\"TokenReview\",\"status\":{"}) {
    server_->SetResponse({201, body});
    auto id = Make(Options())->Authenticate(kWorkloadToken);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << body << ": " << id.status();
  }
  // Well-formed but odd: not authenticated without a reason, authenticated as a number.
  server_->SetResponse({201, R"({"kind":"TokenReview","status":{"authenticated":"true"}})"});
  auto id = Make(Options())->Authenticate(kWorkloadToken);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
}

TEST_F(TokenReviewAuthenticatorTest, SlowServerTimesOutAsUnavailable) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web"), absl::Seconds(3)});
  TokenReviewOptions o = Options();
  o.request_timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  auto id = Make(o)->Authenticate(kWorkloadToken);
  const absl::Duration took = absl::Now() - start;
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("did not answer within 300ms"));
  EXPECT_LT(took, absl::Seconds(2));
}

TEST_F(TokenReviewAuthenticatorTest, NothingListeningIsUnavailable) {
  // A port that was free a moment ago.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  TokenReviewOptions o = Options();
  o.api_server_url = absl::StrCat("https://127.0.0.1:", ntohs(addr.sin_port));
  auto id = Make(o)->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("cannot reach the API server"));
}

TEST_F(TokenReviewAuthenticatorTest, ServerCertificateFromAnotherCaIsUnavailable) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  const std::string other_ca = dir_ + "/other-ca.crt";
  WriteFile(other_ca, MakeSelfSignedCert("someone else").cert_pem);
  TokenReviewOptions o = Options();
  o.ca_file = other_ca;
  auto id = Make(o)->Authenticate(kWorkloadToken);
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("does not verify against the CA file"));
  EXPECT_EQ(server_->requests(), 0);  // the request never left the client
}

TEST_F(TokenReviewAuthenticatorTest, CacheAnswersRepeatsUntilTheTtlExpires) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  auto auth = Make(Options());  // default TTL: 30 s
  ASSERT_TRUE(auth->Authenticate(kWorkloadToken).ok());
  EXPECT_EQ(server_->requests(), 1);
  Advance(absl::Seconds(29));
  auto again = auth->Authenticate(kWorkloadToken);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->spiffe_id.ToString(), "spiffe://cluster.local/ns/shop/sa/web");
  EXPECT_EQ(server_->requests(), 1);
  EXPECT_EQ(auth->requests_sent(), 1u);
  // Another token is reviewed on its own.
  ASSERT_TRUE(auth->Authenticate("another-token").ok());
  EXPECT_EQ(server_->requests(), 2);
  // Past the TTL the first token is asked about again, and the answer may have changed.
  Advance(absl::Seconds(2));
  server_->SetResponse({201, Review(false, "", {}, "token has been invalidated")});
  auto expired = auth->Authenticate(kWorkloadToken);
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kUnauthenticated) << expired.status();
  EXPECT_EQ(server_->requests(), 3);
}

TEST_F(TokenReviewAuthenticatorTest, FailuresAreNotCached) {
  server_->SetResponse({201, Review(false, "", {}, "invalid bearer token")});
  auto auth = Make(Options());
  EXPECT_FALSE(auth->Authenticate(kWorkloadToken).ok());
  EXPECT_FALSE(auth->Authenticate(kWorkloadToken).ok());
  EXPECT_EQ(server_->requests(), 2);
  server_->SetResponse({503, "{}"});
  EXPECT_FALSE(auth->Authenticate(kWorkloadToken).ok());
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  EXPECT_TRUE(auth->Authenticate(kWorkloadToken).ok());
  EXPECT_EQ(server_->requests(), 4);
}

TEST_F(TokenReviewAuthenticatorTest, CacheIsBoundedAndCanBeDisabled) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  TokenReviewOptions o = Options();
  o.cache_max_entries = 2;
  auto auth = Make(o);
  ASSERT_TRUE(auth->Authenticate("t1").ok());
  Advance(absl::Seconds(1));
  ASSERT_TRUE(auth->Authenticate("t2").ok());
  Advance(absl::Seconds(1));
  ASSERT_TRUE(auth->Authenticate("t3").ok());  // evicts t1, the oldest
  EXPECT_EQ(server_->requests(), 3);
  ASSERT_TRUE(auth->Authenticate("t3").ok());
  ASSERT_TRUE(auth->Authenticate("t2").ok());
  EXPECT_EQ(server_->requests(), 3);
  ASSERT_TRUE(auth->Authenticate("t1").ok());
  EXPECT_EQ(server_->requests(), 4);

  TokenReviewOptions off = Options();
  off.cache_ttl = absl::ZeroDuration();
  auto uncached = Make(off);
  ASSERT_TRUE(uncached->Authenticate("t1").ok());
  ASSERT_TRUE(uncached->Authenticate("t1").ok());
  EXPECT_EQ(server_->requests(), 6);
}

TEST_F(TokenReviewAuthenticatorTest, OwnTokenFileIsReadAgainForEachRequest) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  auto auth = Make(Options());
  ASSERT_TRUE(auth->Authenticate("t1").ok());
  EXPECT_EQ(server_->last_request().authorization, absl::StrCat("Bearer ", kOwnToken));
  // The kubelet rotates the projected token: the next request uses the new one.
  WriteFile(token_file_, "control-plane-token-2");
  ASSERT_TRUE(auth->Authenticate("t2").ok());
  EXPECT_EQ(server_->last_request().authorization, "Bearer control-plane-token-2");
  // Gone or empty: UNAVAILABLE naming the file (never its content), nothing sent.
  ASSERT_EQ(unlink(token_file_.c_str()), 0);
  auto id = auth->Authenticate("t3");
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr(token_file_));
  WriteFile(token_file_, " \n");
  id = auth->Authenticate("t3");
  ASSERT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("empty"));
  EXPECT_EQ(server_->requests(), 2);
}

TEST_F(TokenReviewAuthenticatorTest, EmptyOrHugeCredentialIsRefusedWithoutARequest) {
  auto auth = Make(Options());
  EXPECT_EQ(auth->Authenticate("").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->Authenticate(std::string(100000, 'x')).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(TokenReviewAuthenticatorTest, ConcurrentCallersAreSafe) {
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  auto auth = Make(Options());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 4; ++i) {
        if (auth->Authenticate(absl::StrCat("token-", (t + i) % 5)).ok()) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 32);
  EXPECT_LE(server_->requests(), 32);
  EXPECT_GE(server_->requests(), 5);
}

TEST_F(TokenReviewAuthenticatorTest, CreateRejectsBadOptions) {
  TokenReviewOptions o = Options();
  o.api_server_url = "http://127.0.0.1:6443";
  EXPECT_EQ(TokenReviewAuthenticator::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.api_server_url = "https://127.0.0.1:6443/api";
  EXPECT_EQ(TokenReviewAuthenticator::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options();
  o.ca_file = dir_ + "/missing.crt";
  EXPECT_EQ(TokenReviewAuthenticator::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options();
  o.trust_domain = "Not A Domain";
  EXPECT_EQ(TokenReviewAuthenticator::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options();
  o.request_timeout = absl::ZeroDuration();
  EXPECT_EQ(TokenReviewAuthenticator::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options();
  o.api_server_url = server_->url() + "/";  // a trailing slash is fine
  EXPECT_TRUE(TokenReviewAuthenticator::Create(o).ok());
}

TEST_F(TokenReviewAuthenticatorTest, InClusterOptionsComeFromTheEnvironment) {
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
  EXPECT_EQ(TokenReviewAuthenticator::InClusterOptions().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(TokenReviewAuthenticator::FromInCluster().status().code(),
            absl::StatusCode::kFailedPrecondition);

  setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  TokenReviewOptions base;
  base.audience = "mesh";
  auto o = TokenReviewAuthenticator::InClusterOptions(base, "/sa");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->api_server_url, "https://10.96.0.1:443");
  EXPECT_EQ(o->ca_file, "/sa/ca.crt");
  EXPECT_EQ(o->token_file, "/sa/token");
  EXPECT_EQ(o->audience, "mesh");
  o = TokenReviewAuthenticator::InClusterOptions();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->ca_file, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
  EXPECT_EQ(o->token_file, "/var/run/secrets/kubernetes.io/serviceaccount/token");

  setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  o = TokenReviewAuthenticator::InClusterOptions();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->api_server_url, "https://[fd00::1]:443");

  // The mounted files of a pod, simulated: FromInCluster builds a working authenticator.
  server_->SetResponse({201, Review(true, "system:serviceaccount:shop:web")});
  setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", server_->url().substr(server_->url().rfind(':') + 1).c_str(),
         1);
  auto in_cluster = TokenReviewAuthenticator::Create(
      *TokenReviewAuthenticator::InClusterOptions(Options(), dir_));
  ASSERT_TRUE(in_cluster.ok()) << in_cluster.status();
  ASSERT_TRUE((*in_cluster)->Authenticate(kWorkloadToken).ok());
  EXPECT_EQ(server_->last_request().authorization, absl::StrCat("Bearer ", kOwnToken));
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
}

}  // namespace
}  // namespace trellis::control_plane
