// Fuzz target for //control-plane/auth:jwt and :kubernetes_jwt_authenticator.
//
// Two kinds of input:
//  - anything not starting with '{' is a token, checked with VerifyJwt against a fixed key set (one
//    RSA-2048 and one P-256 key, below) and with a KubernetesJwtAuthenticator on the same keys;
//  - an input starting with '{' is a token payload: the target signs it with the fixed P-256 key
//    (ES256, kid "fuzz-ec") so that the claim checks behind the signature get fuzzed too.
// Besides memory safety it checks: errors are InvalidArgument/Unauthenticated (VerifyJwt) or
// UNAUTHENTICATED with the documented prefix (Authenticate), short, printable, and never contain
// the token or its signature; a verified token has three parts, a supported alg and a JSON object
// payload; an accepted identity is spiffe://cluster.local/ns/<ns>/sa/<sa> with <ns> and <sa> taken
// from the payload's claims, which passed the issuer, audience and lifetime checks.
//
// The keys are test keys made for this file and trust nothing else. make_jwt_seeds.py reads them
// from here to sign the seed tokens in corpus/jwt/.

#include <openssl/bio.h>
#include <openssl/ecdsa.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/crypto/handles.h"
#include "control-plane/auth/jwks.h"
#include "control-plane/auth/jwt.h"
#include "control-plane/auth/kubernetes_jwt_authenticator.h"

namespace {

using ::trellis::control_plane::AuthenticatedIdentity;
using ::trellis::control_plane::JwksKeySet;
using ::trellis::control_plane::JwkType;
using ::trellis::control_plane::KubernetesJwtAuthenticator;
using ::trellis::control_plane::KubernetesJwtAuthenticatorOptions;
using ::trellis::control_plane::VerifiedJwt;
using ::trellis::control_plane::VerifyJwt;
using json = nlohmann::json;

#define FUZZ_CHECK(condition)                                                            \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

// BEGIN FUZZ KEYS (make_jwt_seeds.py reads these)
constexpr char kEcKeyPem[] = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkkrXfxgv3l5tbhPz
/tPPnDJ7V2wTU2po/9htX/8AtyihRANCAASto++SklF9V92O8JCVcZsDNBjCJYjD
c3nJ4DfwFsxnIE20Jj/4sI8xZ39dV4htE/+Sk9OdbC6e7x7t7H6GoKGD
-----END PRIVATE KEY-----
)";
constexpr char kRsaKeyPem[] = R"(-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDELXoXJq25jrv7
bRFDNOnqEty3JSd1Y5v8RQBg4t6PxtF7DLztrSVytNtNDN3RCC0sU4H3ZV30HTXL
9XZQfk1Fu/6ovAl4dIQAjHrPBLQXAEmtAHOtN3jijj3Yw//1Hl4d7H5xOWFeAAcP
YdL9KT4pk+leEA5/X+zIAsnOXMt0oF4zZTocVk6irLFsv6QKRwLl4zmg01sGdkTa
qS7Ol1vKSDLK0koWj16ze8OlntlFKYodA78SjzTsBjIWKtFr2PhVRoDZ5eELr+qm
/7WhWLH9F0HRx8j34F0XFxJn87CsBObGi2VeIkFfABWOjD+QA9o8DSIqOGVirgPk
Wp9LZrUPAgMBAAECggEAQI9UyAynDFNQQtBkZ3Eg77LQZwc3opaqzUzp8HiI1NkR
tER/YlpiYgrpxsQOtY1SzG0Y7tExp7X7L8lya8/83w+coWvsU/NIQ6P3gGxkVdN2
65Oj/eOtCSXVbaIm+ERLpd5fyCQhil1I9YN0e3LYrbcrDBUNqFZppnLgdeSs4g6W
/bVheGGjUxdy1osIud1KCsfuhcXs8h9nvUyvgSUC4OhK42cEf980t7r1+e0ShNMH
P3OJx8z7u9Uk7ipgte5FrBmnODNVZgdmhyVlGQy9jUwg7/76Qgh0b7pOLDeyBIJk
vX+z3Z6vYATXTT+Jg2Noy7w2sflWR32+mqaejFipZQKBgQDqD75KmZKGQW556FQ9
jxX6QukidLfaPVX8oReg6d08q5yrwLSGOc0LIdjoM0wAdIUneqT7vE7QG9D027pu
LMO5/8m35iz5oGrZwWLsR9sggRYtZr8GiRSDwKfTKvOpcJwOMQQFIUtiLOQwmWLA
oCTDcKcGo+t1S+Z3VBAv47vvqwKBgQDWkLfsyh5GZFT0QfTj0hVlbuYcNWPhyMun
GNg8G3PAb6Mh0Xgc0LV59lSrQcOZFPIhjAQfh+fEqFC4ahYYpEEyIKC0cWLjkaWe
l08Sl5/aTfuzMp/aG1gAPo/LgiGBBNDdADt1d/9Ub7dUksy5mps1vLXBDSt00XE5
uGDIkhS8LQKBgQCpo81sbg/XhFbYvj1H/IuWPaaQ1X1nDGtk1TC17KnvTgYYKWvt
mLj2p4p5CKy967WSHn6zAREyHeb9gL+HGKSnCy+dPJM+PTkUJ+hVjeLQlR6Iu14a
E4It15ULJKdDGB3S302lljL3rceZPaJoL+lVSTGVS3rdIaygsemle+37TwKBgQCw
0eJAiPAaImTARfqCJIbtaE7JwFXno4nw0lCgeB8T3uwY2n6ZgIWNVKrB1xhR9yjy
7GgZc+5T6kFbOFGtTO9NWAYXrblIwKYz442OTNW3GbzrGDUTkKUcznHBzCPAJy/Y
cHCPhaws8UOrtq5v5jEyP6moximhw1gDsSZRI9FioQKBgQDZgygZSkXDkSMNUEcS
akHfe410Umh5Nrf+whoCM9Fr+SfaPGhIaSHg9uy6AWtkqG2W+PwXveWVBDuY77MK
+j9ViqT9/97FCUD0zPYwzXRNvMt27I8G2FUHpBAdZ6MwmAPI5m1WVCX6xPlLTCIP
T6pvhDMExIhoxjfrGu1nFwV24A==
-----END PRIVATE KEY-----
)";
// END FUZZ KEYS

constexpr char kIssuer[] = "https://kubernetes.default.svc.cluster.local";
constexpr int64_t kNow = 1700000000;  // the fixed clock: 2023-11-14T22:13:20Z
constexpr char kRefusalPrefix[] = "kubernetes service-account token rejected: ";

struct EcdsaSigDeleter {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};

trellis::crypto::UniquePtr<EVP_PKEY> ReadKey(const char* pem) {
  trellis::crypto::UniquePtr<BIO> bio(BIO_new_mem_buf(pem, -1));
  FUZZ_CHECK(bio != nullptr);
  trellis::crypto::UniquePtr<EVP_PKEY> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  FUZZ_CHECK(key != nullptr);
  return key;
}

std::string Bytes(const BIGNUM* bn, int width) {
  std::string out(width, '\0');
  FUZZ_CHECK(BN_bn2binpad(bn, reinterpret_cast<uint8_t*>(out.data()), width) == width);
  return out;
}

std::string B64(absl::string_view bytes) { return absl::WebSafeBase64Escape(bytes); }

struct Fixture {
  trellis::crypto::UniquePtr<EVP_PKEY> ec_key;
  std::unique_ptr<JwksKeySet> keys;
  std::unique_ptr<KubernetesJwtAuthenticator> auth;
};

const Fixture& GetFixture() {
  static const Fixture* fixture = [] {
    auto* f = new Fixture;
    f->ec_key = ReadKey(kEcKeyPem);
    trellis::crypto::UniquePtr<EVP_PKEY> rsa_key = ReadKey(kRsaKeyPem);
    const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(f->ec_key.get());
    trellis::crypto::UniquePtr<BIGNUM> x(BN_new());
    trellis::crypto::UniquePtr<BIGNUM> y(BN_new());
    FUZZ_CHECK(EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(ec),
                                                   EC_KEY_get0_public_key(ec), x.get(), y.get(),
                                                   nullptr) == 1);
    const BIGNUM* n = nullptr;
    const BIGNUM* e = nullptr;
    RSA_get0_key(EVP_PKEY_get0_RSA(rsa_key.get()), &n, &e, nullptr);
    const json jwks = {{"keys",
                        {{{"kty", "EC"},
                          {"crv", "P-256"},
                          {"kid", "fuzz-ec"},
                          {"alg", "ES256"},
                          {"x", B64(Bytes(x.get(), 32))},
                          {"y", B64(Bytes(y.get(), 32))}},
                         {{"kty", "RSA"},
                          {"kid", "fuzz-rsa"},
                          {"n", B64(Bytes(n, BN_num_bytes(n)))},
                          {"e", B64(Bytes(e, BN_num_bytes(e)))}}}}};
    absl::StatusOr<JwksKeySet> keys = JwksKeySet::Parse(jwks.dump());
    FUZZ_CHECK(keys.ok());
    f->keys = std::make_unique<JwksKeySet>(*std::move(keys));

    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string path =
        absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/jwt_fuzz_jwks_", getpid(), ".json");
    { std::ofstream(path, std::ios::trunc) << jwks.dump(); }
    KubernetesJwtAuthenticatorOptions options;
    options.jwks_path = path;
    options.clock = [] { return absl::FromUnixSeconds(kNow); };
    absl::StatusOr<std::unique_ptr<KubernetesJwtAuthenticator>> auth =
        KubernetesJwtAuthenticator::Create(options);
    FUZZ_CHECK(auth.ok());
    f->auth = *std::move(auth);
    std::remove(path.c_str());  // read once; the fixed clock never triggers a re-check
    return f;
  }();
  return *fixture;
}

// Signs `payload` with the fixed P-256 key: header.payload.signature.
std::string SignEs256(const Fixture& f, absl::string_view payload) {
  const std::string input =
      absl::StrCat(B64(R"({"alg":"ES256","kid":"fuzz-ec"})"), ".", B64(payload));
  trellis::crypto::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  FUZZ_CHECK(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, f.ec_key.get()) == 1);
  uint8_t der[128];
  size_t der_len = sizeof(der);
  FUZZ_CHECK(EVP_DigestSign(ctx.get(), der, &der_len,
                            reinterpret_cast<const uint8_t*>(input.data()), input.size()) == 1);
  const uint8_t* p = der;
  std::unique_ptr<ECDSA_SIG, EcdsaSigDeleter> sig(
      d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)));  // NOLINT(runtime/int)
  FUZZ_CHECK(sig != nullptr);
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  return absl::StrCat(input, ".", B64(Bytes(r, 32) + Bytes(s, 32)));
}

bool Printable(absl::string_view s) {
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// The message of a refusal: short, printable, without the token or a long signature part.
void CheckMessage(absl::string_view message, absl::string_view token) {
  FUZZ_CHECK(!message.empty());
  FUZZ_CHECK(message.size() <= 1024);
  FUZZ_CHECK(Printable(message));
  // Quoted values are cut at 64 bytes and escaped, so no run of 65+ token characters can appear.
  if (token.size() > 64) FUZZ_CHECK(!absl::StrContains(message, token));
  const size_t dot = token.rfind('.');
  if (dot != absl::string_view::npos && token.size() - dot - 1 > 64) {
    FUZZ_CHECK(!absl::StrContains(message, token.substr(dot + 1)));
  }
}

void CheckToken(const Fixture& f, absl::string_view token, bool signed_here) {
  absl::StatusOr<VerifiedJwt> jwt = VerifyJwt(token, *f.keys);
  if (jwt.ok()) {
    FUZZ_CHECK(token.size() <= trellis::control_plane::kMaxJwtSize);
    FUZZ_CHECK(std::count(token.begin(), token.end(), '.') == 2);
    FUZZ_CHECK(jwt->claims.is_object());
    FUZZ_CHECK(jwt->header.is_object());
    FUZZ_CHECK(jwt->key_kid == "fuzz-ec" || jwt->key_kid == "fuzz-rsa");
    FUZZ_CHECK((jwt->algorithm == JwkType::kEc) == (jwt->key_kid == "fuzz-ec"));
  } else {
    FUZZ_CHECK(jwt.status().code() == absl::StatusCode::kInvalidArgument ||
               jwt.status().code() == absl::StatusCode::kUnauthenticated);
    CheckMessage(jwt.status().message(), token);
    // What the target signs itself always verifies unless the payload is not a JSON object.
    if (signed_here) {
      FUZZ_CHECK(absl::StrContains(jwt.status().message(), "payload is not a JSON object") ||
                 absl::StrContains(jwt.status().message(), "larger than the limit"));
    }
  }

  absl::StatusOr<AuthenticatedIdentity> id = f.auth->Authenticate(token);
  if (!id.ok()) {
    FUZZ_CHECK(id.status().code() == absl::StatusCode::kUnauthenticated);
    FUZZ_CHECK(absl::StartsWith(id.status().message(), kRefusalPrefix));
    CheckMessage(id.status().message(), token);
    return;
  }
  // Accepted: the signature and every claim check passed.
  FUZZ_CHECK(jwt.ok());
  FUZZ_CHECK(id->authenticator == "kubernetes_jwt");
  const json& claims = jwt->claims;
  FUZZ_CHECK(claims.contains("iss") && claims["iss"] == kIssuer);
  const json& aud = claims["aud"];
  FUZZ_CHECK(aud == "trellis" ||
             (aud.is_array() && std::find(aud.begin(), aud.end(), json("trellis")) != aud.end()));
  FUZZ_CHECK(claims.contains("exp") && claims["exp"].is_number());
  FUZZ_CHECK(claims["exp"].get<double>() >= kNow - 61);  // 60 s skew, 1 s for rounding
  if (claims.contains("nbf")) FUZZ_CHECK(claims["nbf"].get<double>() <= kNow + 61);
  std::string ns, sa;
  if (claims.contains("kubernetes.io")) {
    ns = claims["kubernetes.io"]["namespace"].get<std::string>();
    sa = claims["kubernetes.io"]["serviceaccount"]["name"].get<std::string>();
  } else {
    std::vector<std::string> parts = absl::StrSplit(claims["sub"].get<std::string>(), ':');
    FUZZ_CHECK(parts.size() == 4 && parts[0] == "system" && parts[1] == "serviceaccount");
    ns = parts[2];
    sa = parts[3];
  }
  FUZZ_CHECK(id->spiffe_id.ToString() ==
             absl::StrCat("spiffe://cluster.local/ns/", ns, "/sa/", sa));
  FUZZ_CHECK(id->spiffe_id.kubernetes_namespace() == ns);
  FUZZ_CHECK(id->spiffe_id.service_account() == sa);
  FUZZ_CHECK(id->detail.empty() || absl::StartsWith(id->detail, ns + "/"));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& f = GetFixture();
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  if (!input.empty() && input[0] == '{') {
    CheckToken(f, SignEs256(f, input), /*signed_here=*/true);
  } else {
    CheckToken(f, input, /*signed_here=*/false);
  }
  return 0;
}
