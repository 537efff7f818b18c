// issuance_load: the control plane's issuance benchmark (see bench/issuance/README.md).
//
//   --mode=mint           writes an ES256 issuer key and its JWKS into --work_dir (the control
//                         plane is started with --jwks_file pointing at it).
//   --mode=floor          one thread, no gRPC: the crypto floor of one issuance, with the code the
//                         control plane runs (ParseCsrDer incl. the CSR signature check,
//                         KubernetesJwtAuthenticator::Authenticate incl. the ES256 verify,
//                         LocalSigner::SignLeaf = IssueLeafCertificate, one P-256 sign), plus the
//                         renewal path's certificate checks (PEM parse + PeerVerifier).
//   --mode=issue          N concurrent clients call IssueCertificate with pre-minted tokens and
//                         pre-generated CSRs for --duration against a running control plane.
//   --mode=renewal-burst  M clients first get a certificate with a token, then all at once send
//                         --renewals renewals (no token; the certificate as TLS client cert).
//
// Every mode prints a readable table and one JSON line starting with {"bench":"issuance".

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/issuance/es256_mint.h"
#include "common/crypto/handles.h"
#include "common/identity/certificate.h"
#include "common/identity/csr.h"
#include "common/identity/private_key.h"
#include "common/identity/spiffe_id.h"
#include "common/tls/deny_list.h"
#include "common/tls/peer_verifier.h"
#include "control-plane/auth/jwks.h"
#include "control-plane/auth/jwt.h"
#include "control-plane/auth/kubernetes_jwt_authenticator.h"
#include "control-plane/ca/ca_files.h"
#include "control-plane/ca/signer.h"
#include "trellis/identity/v1/identity.grpc.pb.h"

ABSL_FLAG(std::string, mode, "", "mint | floor | issue | renewal-burst");
ABSL_FLAG(std::string, work_dir, "", "mint: where to write issuer.key and jwks.json");
ABSL_FLAG(std::string, ca_dir, "", "The CA directory (trellisctl ca init): roots.crt for the "
                                   "clients; floor also signs with ca.crt/ca.key");
ABSL_FLAG(std::string, jwks_file, "", "floor: the JWKS the control plane verifies tokens with");
ABSL_FLAG(std::string, issuer_key, "", "The ES256 issuer key written by --mode=mint");
ABSL_FLAG(std::string, target, "", "issue/renewal-burst: the control plane, 127.0.0.1:PORT");
ABSL_FLAG(std::string, server_name, "localhost", "TLS name checked on the control plane's cert");
ABSL_FLAG(double, floor_seconds, 1.0, "floor: seconds measured per operation");
ABSL_FLAG(int, clients, 32, "issue: concurrent clients; renewal-burst: clients holding a cert");
ABSL_FLAG(double, duration, 10, "issue: seconds of load");
ABSL_FLAG(double, warmup, 1, "issue: seconds of untimed load before the measurement");
ABSL_FLAG(int, identities, 1024, "issue: distinct service accounts (one pre-minted token each)");
ABSL_FLAG(int, csr_pool, 64, "CSRs generated up front and reused");
ABSL_FLAG(std::string, channel, "per-client", "issue: per-client (own connection each) | shared");
ABSL_FLAG(int, renewals, 10000, "renewal-burst: total renewals sent");
ABSL_FLAG(bool, honor_retry, false,
          "renewal-burst: on RESOURCE_EXHAUSTED/UNAVAILABLE wait retry-after-ms and retry (latency "
          "is then first attempt to success); false records the raw outcome of each call");
ABSL_FLAG(std::string, renewal_connection, "reuse",
          "renewal-burst: reuse (each client renews over its one TLS connection) | fresh (a new "
          "TLS connection, i.e. a new handshake with the client certificate, per renewal)");
ABSL_FLAG(std::string, renewal_chain, "full",
          "renewal-burst: the TLS client certificate chain presented: full (leaf + intermediate, "
          "as issued) | leaf (the leaf alone) | leaf-twice (leaf, leaf, intermediate: works around "
          "the control plane's renewal bug, see README)");
ABSL_FLAG(int, server_pid, 0, "If set, the control plane's CPU time is read from /proc around "
                              "the measured window");
ABSL_FLAG(double, call_timeout, 30, "Deadline of one call, seconds");

namespace trellis::bench {
namespace {

using trellis::identity::v1::Identity;
using trellis::identity::v1::IssueCertificateRequest;
using trellis::identity::v1::IssueCertificateResponse;
using Clock = std::chrono::steady_clock;
using trellis::control_plane::AuthenticatedIdentity;
using trellis::control_plane::JwksKeySet;
using trellis::control_plane::KubernetesJwtAuthenticator;
using trellis::control_plane::KubernetesJwtAuthenticatorOptions;
using trellis::control_plane::VerifiedJwt;
using trellis::control_plane::VerifyJwt;
namespace ca = trellis::control_plane::ca;

[[noreturn]] void Die(const std::string& what) {
  std::cerr << "issuance_load: " << what << "\n";
  std::exit(1);
}

template <typename T>
T Must(absl::StatusOr<T> v, const std::string& what) {
  if (!v.ok()) Die(absl::StrCat(what, ": ", v.status().ToString()));
  return *std::move(v);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data, int mode) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  if (!out) Die("cannot write " + path);
  out.close();
  chmod(path.c_str(), mode);
}

// utime + stime of a process, seconds; -1 if unreadable.
double ProcessCpuSeconds(int pid) {
  if (pid <= 0) return -1;
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream rest(text.substr(paren + 2));
  std::string field;
  // Fields after the command: 3=state ... 14=utime 15=stime (1-based in proc(5)).
  unsigned long long utime = 0, stime = 0;  // NOLINT(runtime/int)
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;
};

// `us` is sorted in place.
Percentiles Summarize(std::vector<double>* us) {
  Percentiles p;
  if (us->empty()) return p;
  std::sort(us->begin(), us->end());
  auto at = [&](double q) {
    size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(us->size()))) - 1;
    return (*us)[std::min(i, us->size() - 1)];
  };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = us->back();
  double sum = 0;
  for (double v : *us) sum += v;
  p.mean = sum / static_cast<double>(us->size());
  return p;
}

nlohmann::json ToJson(const Percentiles& p) {
  auto ms = [](double us) { return std::round(us) / 1000.0; };
  return {{"p50_ms", ms(p.p50)}, {"p90_ms", ms(p.p90)},   {"p99_ms", ms(p.p99)},
          {"p999_ms", ms(p.p999)}, {"max_ms", ms(p.max)}, {"mean_ms", ms(p.mean)}};
}

void EmitJson(const nlohmann::json& j) {
  nlohmann::json out = {{"bench", "issuance"}};
  out.update(j);
  std::cout << out.dump() << std::endl;
}

std::vector<std::string> MakeCsrPool(int n) {
  std::vector<std::string> pool;
  for (int i = 0; i < n; ++i) {
    identity::PrivateKey key = Must(identity::PrivateKey::GenerateEcdsaP256(), "keygen");
    pool.push_back(Must(identity::CreateCsrDer(key), "CSR"));
  }
  return pool;
}

std::string ServiceAccountName(int i) { return absl::StrFormat("sa-%05d", i); }
constexpr char kNamespace[] = "bench";

// Pre-minted tokens, one per service account.
std::vector<std::string> MintTokens(int n) {
  const identity::PrivateKey issuer =
      Must(identity::PrivateKey::FromPem(ReadFile(absl::GetFlag(FLAGS_issuer_key))), "issuer key");
  std::vector<std::string> tokens;
  const absl::Time now = absl::Now();
  for (int i = 0; i < n; ++i) {
    tokens.push_back(Must(MintServiceAccountToken(issuer, kBenchKid, kNamespace,
                                                  ServiceAccountName(i), now, absl::Hours(2)),
                          "mint"));
  }
  return tokens;
}

// ---------------------------------------------------------------------------------------- mint

int RunMint() {
  const std::string dir = absl::GetFlag(FLAGS_work_dir);
  if (dir.empty()) Die("--work_dir is required");
  identity::PrivateKey key = Must(identity::PrivateKey::GenerateEcdsaP256(), "keygen");
  WriteFile(dir + "/issuer.key", Must(key.ToPem(), "key PEM"), 0600);
  WriteFile(dir + "/jwks.json", Must(JwksFor(key, kBenchKid), "JWKS"), 0644);
  std::cerr << "wrote " << dir << "/issuer.key and " << dir << "/jwks.json\n";
  return 0;
}

// --------------------------------------------------------------------------------------- floor

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Runs `op` repeatedly for about `seconds` of this thread's CPU time, in 10 slices, and returns
// the CPU µs per call of the fastest slice. CPU time (not wall time) and the best slice make the
// floor robust to other processes competing for the cores.
template <typename Op>
double TimeOp(double seconds, Op op) {
  for (int i = 0; i < 20; ++i) op(i);  // warm up
  int64_t n = 0;
  double best = 1e30;
  for (int slice = 0; slice < 10; ++slice) {
    const double start = ThreadCpuSeconds();
    int64_t calls = 0;
    double now = start;
    while (calls < 8 || now - start < seconds / 10) {
      for (int k = 0; k < 4; ++k, ++calls) op(static_cast<int>(n++));
      now = ThreadCpuSeconds();
    }
    best = std::min(best, (now - start) * 1e6 / static_cast<double>(calls));
  }
  return best;
}

int RunFloor() {
  const double secs = absl::GetFlag(FLAGS_floor_seconds);
  const std::string ca_dir = absl::GetFlag(FLAGS_ca_dir);
  ca::CaFiles files = Must(ca::LoadCaFiles(ca_dir), "load CA");
  identity::TrustBundle roots = files.roots;
  std::unique_ptr<ca::LocalSigner> signer = Must(ca::LocalSigner::Create(files), "signer");

  KubernetesJwtAuthenticatorOptions auth_options;
  auth_options.jwks_path = absl::GetFlag(FLAGS_jwks_file);
  auth_options.audience = "trellis";
  std::unique_ptr<KubernetesJwtAuthenticator> auth =
      Must(KubernetesJwtAuthenticator::Create(auth_options), "authenticator");
  const std::shared_ptr<const JwksKeySet> keys = auth->key_set();

  const std::vector<std::string> csrs = MakeCsrPool(absl::GetFlag(FLAGS_csr_pool));
  const std::vector<std::string> tokens = MintTokens(64);
  std::vector<identity::ParsedCsr> parsed;
  for (const std::string& der : csrs) parsed.push_back(Must(identity::ParseCsrDer(der), "CSR"));
  const identity::SpiffeId id = Must(identity::SpiffeId::Parse(absl::StrCat(
                                         "spiffe://cluster.local/ns/", kNamespace, "/sa/sa-00000")),
                                     "id");
  // A renewal client's chain as the server sees it through gRPC: PEM, leaf first.
  std::vector<identity::Certificate> chain =
      Must(signer->SignLeaf(parsed[0].public_key.get(), id, absl::ZeroDuration(), {}), "sign");
  const std::string chain_pem = identity::ToPemChain(chain);
  const size_t n = csrs.size();

  volatile size_t sink = 0;
  const double csr_us = TimeOp(secs, [&](int i) {
    absl::StatusOr<identity::ParsedCsr> p = identity::ParseCsrDer(csrs[i % n]);
    if (!p.ok()) Die("ParseCsrDer failed");
    sink = sink + p->requested_uri_sans.size();
  });
  const double jwt_us = TimeOp(secs, [&](int i) {
    absl::StatusOr<VerifiedJwt> v = VerifyJwt(tokens[i % tokens.size()], *keys);
    if (!v.ok()) Die("VerifyJwt: " + v.status().ToString());
  });
  const double auth_us = TimeOp(secs, [&](int i) {
    absl::StatusOr<AuthenticatedIdentity> who = auth->Authenticate(tokens[i % tokens.size()]);
    if (!who.ok()) Die("Authenticate: " + who.status().ToString());
  });
  const double sign_us = TimeOp(secs, [&](int i) {
    absl::StatusOr<std::vector<identity::Certificate>> c =
        signer->SignLeaf(parsed[i % n].public_key.get(), id, absl::ZeroDuration(), {});
    if (!c.ok()) Die("SignLeaf: " + c.status().ToString());
  });
  // What IdentityService does with a renewal's client certificate, minus the CSR and signing.
  const absl::StatusOr<identity::SpiffeIdPattern> domain =
      identity::SpiffeIdPattern::Parse("spiffe://cluster.local");
  const double pem_us = TimeOp(secs, [&](int) {
    absl::StatusOr<std::vector<identity::Certificate>> c = identity::ParsePemChain(chain_pem);
    if (!c.ok()) Die("ParsePemChain");
  });
  const double verifier_create_us = TimeOp(secs, [&](int) {
    auto v = tls::PeerVerifier::Create(roots, tls::DenyList());
    if (!v.ok()) Die("PeerVerifier::Create");
  });
  const std::unique_ptr<tls::PeerVerifier> verifier =
      Must(tls::PeerVerifier::Create(roots, tls::DenyList()), "verifier");
  const double verify_us = TimeOp(secs, [&](int) {
    crypto::X509Stack inter(sk_X509_new_null());
    for (size_t i = 1; i < chain.size(); ++i) {
      X509_up_ref(chain[i].get());
      sk_X509_push(inter.get(), chain[i].get());
    }
    tls::PeerVerification r = verifier->Verify(chain[0].get(), inter.get(),
                                               tls::PeerRole::kClient, absl::Now(), {*domain});
    if (!r.ok()) Die("PeerVerifier::Verify: " + r.detail);
  });

  const double floor_us = csr_us + auth_us + sign_us;
  const double renewal_floor_us = csr_us + pem_us + verifier_create_us + verify_us + sign_us;
  absl::PrintF("\nCrypto floor (one thread, no gRPC; CPU time, best of 10 slices of %.2f s):\n", secs / 10);
  absl::PrintF("  %-52s %9.1f us\n", "ParseCsrDer (DER parse + CSR signature verify)", csr_us);
  absl::PrintF("  %-52s %9.1f us\n", "VerifyJwt (ES256 verify + JSON parse)", jwt_us);
  absl::PrintF("  %-52s %9.1f us\n", "KubernetesJwtAuthenticator::Authenticate (all checks)",
               auth_us);
  absl::PrintF("  %-52s %9.1f us\n", "LocalSigner::SignLeaf (build + one P-256 sign)", sign_us);
  absl::PrintF("  %-52s %9.1f us  => %.0f issuances/s per core\n",
               "floor, token issuance (CSR + Authenticate + sign)", floor_us, 1e6 / floor_us);
  absl::PrintF("  %-52s %9.1f us\n", "renewal: ParsePemChain (client chain, 2 certs)", pem_us);
  absl::PrintF("  %-52s %9.1f us\n", "renewal: PeerVerifier::Create (per call today)",
               verifier_create_us);
  absl::PrintF("  %-52s %9.1f us\n", "renewal: PeerVerifier::Verify (chain + SVID + deny)",
               verify_us);
  absl::PrintF("  %-52s %9.1f us  => %.0f renewals/s per core\n\n",
               "floor, renewal (CSR + PEM + verifier + verify + sign)", renewal_floor_us,
               1e6 / renewal_floor_us);
  EmitJson({{"mode", "floor"},
            {"csr_parse_verify_us", csr_us},
            {"jwt_verify_us", jwt_us},
            {"jwt_authenticate_us", auth_us},
            {"sign_leaf_us", sign_us},
            {"floor_us", floor_us},
            {"floor_per_core_per_s", 1e6 / floor_us},
            {"renewal_pem_parse_us", pem_us},
            {"renewal_verifier_create_us", verifier_create_us},
            {"renewal_peer_verify_us", verify_us},
            {"renewal_floor_us", renewal_floor_us},
            {"renewal_floor_per_core_per_s", 1e6 / renewal_floor_us}});
  return 0;
}

// ------------------------------------------------------------------------------- gRPC clients

std::string RootsPem() { return ReadFile(absl::GetFlag(FLAGS_ca_dir) + "/roots.crt"); }

std::shared_ptr<grpc::Channel> NewChannel(const std::string& roots_pem, const std::string& key_pem,
                                          const std::string& chain_pem, int salt) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = roots_pem;
  ssl.pem_private_key = key_pem;
  ssl.pem_cert_chain = chain_pem;
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(absl::GetFlag(FLAGS_server_name));
  // Each channel its own TCP/TLS connection (no sharing through the global subchannel pool).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("trellis.bench.salt", salt);
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), grpc::SslCredentials(ssl), args);
}

bool Connect(const std::shared_ptr<grpc::Channel>& ch) {
  return ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
}

struct CallResult {
  grpc::Status status;
  bool has_retry_hint = false;
  int64_t retry_after_ms = -1;
};

CallResult Call(Identity::Stub* stub, const IssueCertificateRequest& req,
                IssueCertificateResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(
                       static_cast<int64_t>(absl::GetFlag(FLAGS_call_timeout) * 1000)));
  CallResult r;
  r.status = stub->IssueCertificate(&ctx, req, resp);
  if (!r.status.ok()) {
    const auto& trailers = ctx.GetServerTrailingMetadata();
    auto it = trailers.find("retry-after-ms");
    if (it != trailers.end()) {
      r.has_retry_hint = true;
      r.retry_after_ms = std::atoll(std::string(it->second.data(), it->second.size()).c_str());
    }
  }
  return r;
}

std::string CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::INTERNAL: return "INTERNAL";
    default: return absl::StrCat("CODE_", static_cast<int>(c));
  }
}

// Per-thread tallies, merged at the end.
struct Tally {
  std::vector<double> latency_us;  // successful calls
  std::vector<double> refused_latency_us;
  std::map<std::string, int64_t> by_code;
  std::map<std::string, std::string> first_message;
  int64_t refused = 0;             // RESOURCE_EXHAUSTED + UNAVAILABLE
  int64_t refused_with_hint = 0;
  int64_t attempts = 0;
  void Add(const CallResult& r, double us) {
    ++attempts;
    const std::string code = CodeName(r.status.error_code());
    ++by_code[code];
    if (r.status.ok()) {
      latency_us.push_back(us);
      return;
    }
    refused_latency_us.push_back(us);
    first_message.emplace(code, r.status.error_message());
    if (r.status.error_code() == grpc::RESOURCE_EXHAUSTED ||
        r.status.error_code() == grpc::UNAVAILABLE) {
      ++refused;
      if (r.has_retry_hint) ++refused_with_hint;
    }
  }
  void Merge(const Tally& o) {
    latency_us.insert(latency_us.end(), o.latency_us.begin(), o.latency_us.end());
    refused_latency_us.insert(refused_latency_us.end(), o.refused_latency_us.begin(),
                              o.refused_latency_us.end());
    for (const auto& [k, v] : o.by_code) by_code[k] += v;
    for (const auto& [k, v] : o.first_message) first_message.emplace(k, v);
    refused += o.refused;
    refused_with_hint += o.refused_with_hint;
    attempts += o.attempts;
  }
};

void PrintCodes(const Tally& t) {
  for (const auto& [code, count] : t.by_code) {
    absl::PrintF("    %-20s %10d", code, count);
    auto it = t.first_message.find(code);
    if (it != t.first_message.end()) absl::PrintF("   e.g. \"%s\"", it->second.substr(0, 110));
    absl::PrintF("\n");
  }
}

// --------------------------------------------------------------------------------------- issue

int RunIssue() {
  const int clients = absl::GetFlag(FLAGS_clients);
  const int identities = absl::GetFlag(FLAGS_identities);
  const bool shared = absl::GetFlag(FLAGS_channel) == "shared";
  if (!shared && absl::GetFlag(FLAGS_channel) != "per-client") Die("--channel: per-client|shared");
  const std::vector<std::string> csrs = MakeCsrPool(absl::GetFlag(FLAGS_csr_pool));
  const std::vector<std::string> tokens = MintTokens(identities);
  std::vector<IssueCertificateRequest> requests(csrs.size());
  const std::string roots = RootsPem();

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < (shared ? 1 : clients); ++i) {
    channels.push_back(NewChannel(roots, "", "", i));
    if (!Connect(channels.back())) Die("cannot connect to " + absl::GetFlag(FLAGS_target));
  }
  std::atomic<int> phase{0};  // 0 warm-up, 1 measuring, 2 stop
  std::vector<Tally> tallies(clients);
  absl::Barrier* ready = new absl::Barrier(clients + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      auto stub = Identity::NewStub(channels[shared ? 0 : t]);
      IssueCertificateRequest req;
      IssueCertificateResponse resp;
      int64_t i = 0;
      if (ready->Block()) delete ready;
      while (true) {
        const int p = phase.load(std::memory_order_relaxed);
        if (p == 2) break;
        req.set_csr_der(csrs[(i * clients + t) % csrs.size()]);
        req.set_kubernetes_token(tokens[(t + i * clients) % identities]);
        ++i;
        resp.Clear();
        const auto start = Clock::now();
        CallResult r = Call(stub.get(), req, &resp);
        const double us = Seconds(Clock::now() - start) * 1e6;
        if (p == 1 && phase.load(std::memory_order_relaxed) == 1) tallies[t].Add(r, us);
      }
    });
  }
  if (ready->Block()) delete ready;
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_warmup)));
  const int pid = absl::GetFlag(FLAGS_server_pid);
  const double cpu0 = ProcessCpuSeconds(pid);
  const auto t0 = Clock::now();
  phase = 1;
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_duration)));
  phase = 2;  // calls finishing after this are not counted (neither their CPU, nearly)
  const double wall = Seconds(Clock::now() - t0);
  const double cpu1 = ProcessCpuSeconds(pid);
  for (std::thread& th : threads) th.join();

  Tally all;
  for (const Tally& t : tallies) all.Merge(t);
  const int64_t ok = static_cast<int64_t>(all.latency_us.size());
  Percentiles p = Summarize(&all.latency_us);
  const double rate = static_cast<double>(ok) / wall;
  const double cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
  const double per_core = cpu > 0 ? static_cast<double>(ok) / cpu : -1;
  absl::PrintF("\nissue: %d clients, %s channel%s, %d service accounts, %d CSRs, %.1f s\n",
               clients, shared ? "one shared" : "one per client", shared ? "" : "s", identities,
               static_cast<int>(csrs.size()), wall);
  absl::PrintF("  certificates issued      %10d  (%.0f/s)\n", ok, rate);
  if (cpu > 0) {
    absl::PrintF("  control-plane CPU        %10.2f s  (%.2f cores busy)\n", cpu, cpu / wall);
    absl::PrintF("  per control-plane core   %10.0f certificates per CPU-second\n", per_core);
  }
  absl::PrintF("  latency ms               p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
               p.p50 / 1e3, p.p90 / 1e3, p.p99 / 1e3, p.p999 / 1e3, p.max / 1e3);
  absl::PrintF("  results by code:\n");
  PrintCodes(all);
  nlohmann::json j = {{"mode", "issue"},
                      {"channel", shared ? "shared" : "per-client"},
                      {"clients", clients},
                      {"identities", identities},
                      {"seconds", wall},
                      {"ok", ok},
                      {"certs_per_s", rate},
                      {"server_cpu_s", cpu},
                      {"server_cores_busy", cpu > 0 ? cpu / wall : -1},
                      {"certs_per_cpu_s", per_core},
                      {"latency", ToJson(p)},
                      {"by_code", all.by_code}};
  EmitJson(j);
  return 0;
}

// ------------------------------------------------------------------------------- renewal-burst

struct Holder {
  std::string key_pem;
  std::string chain_pem;
  std::string csr_der;
  std::shared_ptr<grpc::Channel> channel;
};

int RunRenewalBurst() {
  const int clients = absl::GetFlag(FLAGS_clients);
  const int total = absl::GetFlag(FLAGS_renewals);
  const bool honor = absl::GetFlag(FLAGS_honor_retry);
  const bool fresh = absl::GetFlag(FLAGS_renewal_connection) == "fresh";
  if (!fresh && absl::GetFlag(FLAGS_renewal_connection) != "reuse") {
    Die("--renewal_connection: reuse|fresh");
  }
  const std::string roots = RootsPem();
  const std::vector<std::string> tokens = MintTokens(clients);

  // 1. Every client gets its first certificate with a token (not timed).
  std::vector<Holder> holders(clients);
  {
    std::vector<std::thread> setup;
    std::atomic<int> failures{0};
    const int workers = std::min(clients, 8);
    for (int w = 0; w < workers; ++w) {
      setup.emplace_back([&, w] {
        auto ch = NewChannel(roots, "", "", 100000 + w);
        auto stub = Identity::NewStub(ch);
        for (int c = w; c < clients; c += workers) {
          identity::PrivateKey key = Must(identity::PrivateKey::GenerateEcdsaP256(), "keygen");
          Holder& h = holders[c];
          h.key_pem = Must(key.ToPem(), "key PEM");
          h.csr_der = Must(identity::CreateCsrDer(key), "CSR");
          IssueCertificateRequest req;
          req.set_csr_der(h.csr_der);
          req.set_kubernetes_token(tokens[c]);
          IssueCertificateResponse resp;
          CallResult r;
          for (int attempt = 0; attempt < 50; ++attempt) {
            resp.Clear();
            r = Call(stub.get(), req, &resp);
            if (r.status.ok() || (r.status.error_code() != grpc::UNAVAILABLE &&
                                  r.status.error_code() != grpc::RESOURCE_EXHAUSTED)) {
              break;
            }
            absl::SleepFor(absl::Milliseconds(std::max<int64_t>(r.retry_after_ms, 50)));
          }
          if (!r.status.ok()) {
            std::cerr << "first issuance failed: " << r.status.error_message() << "\n";
            ++failures;
            continue;
          }
          std::vector<identity::Certificate> chain;
          for (const std::string& der : resp.cert_chain_der()) {
            chain.push_back(Must(identity::Certificate::FromDer(der), "issued cert"));
          }
          if (absl::GetFlag(FLAGS_renewal_chain) == "leaf") {
            chain.erase(chain.begin() + 1, chain.end());
          } else if (absl::GetFlag(FLAGS_renewal_chain) == "leaf-twice") {
            // Works around the control plane reading the chain without its leaf (gRPC's
            // x509_pem_cert_chain property on the server side is SSL_get_peer_cert_chain, which
            // omits the peer's own certificate): the server then sees leaf + intermediate.
            chain.insert(chain.begin(), chain.front());
          }
          h.chain_pem = identity::ToPemChain(chain);
          if (!fresh) {
            h.channel = NewChannel(roots, h.key_pem, h.chain_pem, c);
            if (!Connect(h.channel)) ++failures;
          }
        }
      });
    }
    for (std::thread& t : setup) t.join();
    if (failures > 0) Die(absl::StrCat(failures.load(), " clients could not get a certificate"));
  }

  // 2. The burst.
  const int pid = absl::GetFlag(FLAGS_server_pid);
  std::atomic<int> next{0};
  std::vector<Tally> tallies(clients);
  std::vector<int64_t> retries(clients, 0);
  std::vector<int64_t> gave_up(clients, 0);
  absl::Barrier* go = new absl::Barrier(clients + 1);
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      Holder& h = holders[c];
      std::unique_ptr<Identity::Stub> stub;
      if (!fresh) stub = Identity::NewStub(h.channel);
      IssueCertificateRequest req;
      req.set_csr_der(h.csr_der);  // no credential: renewal with the TLS client certificate
      IssueCertificateResponse resp;
      int salt = 0;
      if (go->Block()) delete go;
      while (next.fetch_add(1) < total) {
        const auto start = Clock::now();
        CallResult r;
        for (int attempt = 0;; ++attempt) {
          resp.Clear();
          std::shared_ptr<grpc::Channel> ch;
          if (fresh) {
            ch = NewChannel(roots, h.key_pem, h.chain_pem, ++salt * 1000 + c);
            stub = Identity::NewStub(ch);
          }
          r = Call(stub.get(), req, &resp);
          const bool refused = r.status.error_code() == grpc::UNAVAILABLE ||
                               r.status.error_code() == grpc::RESOURCE_EXHAUSTED;
          if (!honor || !refused) break;
          if (attempt >= 30) {
            ++gave_up[c];
            break;
          }
          ++retries[c];
          tallies[c].Add(r, 0);  // count the refusal itself (hint or not)
          tallies[c].refused_latency_us.pop_back();
          absl::SleepFor(absl::Milliseconds(r.has_retry_hint ? r.retry_after_ms : 100));
        }
        tallies[c].Add(r, Seconds(Clock::now() - start) * 1e6);
      }
    });
  }
  const double cpu0 = ProcessCpuSeconds(pid);
  const auto t0 = Clock::now();
  if (go->Block()) delete go;
  for (std::thread& th : threads) th.join();
  const double wall = Seconds(Clock::now() - t0);
  const double cpu1 = ProcessCpuSeconds(pid);

  Tally all;
  int64_t total_retries = 0, total_gave_up = 0;
  for (int c = 0; c < clients; ++c) {
    all.Merge(tallies[c]);
    total_retries += retries[c];
    total_gave_up += gave_up[c];
  }
  const int64_t ok = static_cast<int64_t>(all.latency_us.size());
  const int64_t failed = total - ok;
  Percentiles p = Summarize(&all.latency_us);
  std::vector<double> every = all.latency_us;
  every.insert(every.end(), all.refused_latency_us.begin(), all.refused_latency_us.end());
  Percentiles pall = Summarize(&every);
  const double cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
  const bool every_hinted = all.refused == all.refused_with_hint;
  absl::PrintF("\nrenewal-burst: %d renewals from %d clients (%s connection%s), retry hints %s\n",
               total, clients, fresh ? "a fresh TLS" : "one reused TLS", fresh ? " per renewal" : " each",
               honor ? "honored" : "not honored (raw outcome)");
  absl::PrintF("  total time               %10.2f s  (%.0f renewals/s)\n", wall,
               static_cast<double>(ok) / wall);
  absl::PrintF("  renewed OK               %10d\n", ok);
  absl::PrintF("  not renewed              %10d\n", failed);
  absl::PrintF("  refusals (RE+UNAVAIL.)   %10d, %d with a retry-after-ms hint%s\n", all.refused,
               all.refused_with_hint, every_hinted ? " (all)" : " (NOT all)");
  if (honor) absl::PrintF("  retries                  %10d, gave up %d\n", total_retries, total_gave_up);
  if (cpu > 0) {
    absl::PrintF("  control-plane CPU        %10.2f s  (%.0f renewals per CPU-second)\n", cpu,
                 static_cast<double>(ok) / cpu);
  }
  absl::PrintF("  latency of OK ms         p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
               p.p50 / 1e3, p.p90 / 1e3, p.p99 / 1e3, p.p999 / 1e3, p.max / 1e3);
  if (!honor) {
    absl::PrintF("  latency of all calls ms  p50 %.2f  p99 %.2f  max %.2f\n", pall.p50 / 1e3,
                 pall.p99 / 1e3, pall.max / 1e3);
  }
  absl::PrintF("  results by code (%s):\n", honor ? "every attempt" : "every call");
  PrintCodes(all);
  EmitJson({{"mode", "renewal-burst"},
            {"renewals", total},
            {"clients", clients},
            {"connection", fresh ? "fresh" : "reuse"},
            {"honor_retry", honor},
            {"seconds", wall},
            {"ok", ok},
            {"failed", failed},
            {"refused", all.refused},
            {"refused_with_hint", all.refused_with_hint},
            {"every_refusal_hinted", every_hinted},
            {"retries", total_retries},
            {"gave_up", total_gave_up},
            {"server_cpu_s", cpu},
            {"renewals_per_cpu_s", cpu > 0 ? static_cast<double>(ok) / cpu : -1},
            {"latency_ok", ToJson(p)},
            {"latency_all_calls", ToJson(pall)},
            {"by_code", all.by_code}});
  return 0;
}

}  // namespace
}  // namespace trellis::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "issuance_load --mode=mint|floor|issue|renewal-burst [flags]: the control plane's "
      "issuance benchmark (bench/issuance/README.md)");
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "mint") return trellis::bench::RunMint();
  if (mode == "floor") return trellis::bench::RunFloor();
  if (mode == "issue") return trellis::bench::RunIssue();
  if (mode == "renewal-burst") return trellis::bench::RunRenewalBurst();
  std::cerr << "issuance_load: --mode must be mint, floor, issue or renewal-burst\n";
  return 2;
}
