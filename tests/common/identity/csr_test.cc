// CSRs: CreateCsrDer/ParseCsrDer round trips, and every refusal the control plane relies on to
// keep bad requests (wrong encoding, forged signatures, weak or unsupported keys) out.
#include "common/identity/csr.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace trellis::identity {
namespace {

constexpr char kId[] = "spiffe://cluster.local/ns/shop/sa/checkout";

// Fixtures made by testdata/make_fixtures.sh (see testdata/README.md), relative to the runfiles
// root, which is the working directory of a test.
constexpr char kP192CsrPath[] = "tests/common/identity/testdata/csr_p192.der";
constexpr char kExplicitP256CsrPath[] = "tests/common/identity/testdata/csr_p256_explicit.der";

std::string ReadFixture(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path << " (is it in the test's data?)";
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

PrivateKey P256() {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  EXPECT_TRUE(key.ok()) << key.status();
  return *std::move(key);
}

SpiffeId Id(const std::string& text) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(text);
  EXPECT_TRUE(id.ok()) << id.status();
  return *std::move(id);
}

std::string ValidCsr() {
  absl::StatusOr<std::string> der = CreateCsrDer(P256(), Id(kId));
  EXPECT_TRUE(der.ok()) << der.status();
  return *std::move(der);
}

PrivateKey Rsa2048() {
  crypto::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr));
  EVP_PKEY* raw = nullptr;
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048) != 1 ||
      EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    ADD_FAILURE() << "RSA key generation failed";
  }
  absl::StatusOr<PrivateKey> key = PrivateKey::FromEvpPkey(crypto::UniquePtr<EVP_PKEY>(raw));
  EXPECT_TRUE(key.ok()) << key.status();
  return *std::move(key);
}

// Expects `der` to be refused as InvalidArgument with a message containing `substring`.
void ExpectRefused(absl::string_view der, absl::string_view substring) {
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(der);
  ASSERT_FALSE(parsed.ok()) << "accepted a CSR that must be refused (" << der.size() << " bytes)";
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << parsed.status();
  EXPECT_NE(parsed.status().message().find(substring), absl::string_view::npos)
      << "message \"" << parsed.status().message() << "\" lacks \"" << substring << "\"";
}

// A CSR for `key` with the given SANs, built with raw OpenSSL (the library never makes these).
std::string RawCsr(const PrivateKey& key, const std::vector<std::pair<int, std::string>>& sans) {
  crypto::UniquePtr<X509_REQ> req(X509_REQ_new());
  EXPECT_EQ(X509_REQ_set_version(req.get(), 0), 1);
  EXPECT_EQ(X509_REQ_set_pubkey(req.get(), key.get()), 1);
  crypto::UniquePtr<GENERAL_NAMES> names(GENERAL_NAMES_new());
  for (const auto& [type, text] : sans) {
    GENERAL_NAME* name = GENERAL_NAME_new();
    ASN1_IA5STRING* value = ASN1_IA5STRING_new();
    ASN1_STRING_set(value, text.data(), static_cast<int>(text.size()));
    GENERAL_NAME_set0_value(name, type, value);
    sk_GENERAL_NAME_push(names.get(), name);
  }
  crypto::X509ExtensionStack extensions(sk_X509_EXTENSION_new_null());
  sk_X509_EXTENSION_push(extensions.get(), X509V3_EXT_i2d(NID_subject_alt_name, 0, names.get()));
  EXPECT_EQ(X509_REQ_add_extensions(req.get(), extensions.get()), 1);
  EXPECT_GT(X509_REQ_sign(req.get(), key.get(), EVP_sha256()), 0);
  uint8_t* der = nullptr;
  const int len = i2d_X509_REQ(req.get(), &der);
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

TEST(CsrTest, RoundTripWithSpiffeId) {
  PrivateKey key = P256();
  absl::StatusOr<std::string> der = CreateCsrDer(key, Id(kId));
  ASSERT_TRUE(der.ok()) << der.status();
  EXPECT_EQ((*der)[0], '\x30');  // DER SEQUENCE, not PEM text
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(*der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->algorithm, KeyAlgorithm::kEcdsaP256);
  ASSERT_NE(parsed->public_key, nullptr);
  EXPECT_EQ(EVP_PKEY_cmp(parsed->public_key.get(), key.get()), 1);
  EXPECT_EQ(parsed->requested_uri_sans, std::vector<std::string>{kId});
}

TEST(CsrTest, RoundTripWithoutSpiffeId) {
  PrivateKey key = P256();
  absl::StatusOr<std::string> der = CreateCsrDer(key);
  ASSERT_TRUE(der.ok()) << der.status();
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(*der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->algorithm, KeyAlgorithm::kEcdsaP256);
  EXPECT_EQ(EVP_PKEY_cmp(parsed->public_key.get(), key.get()), 1);
  EXPECT_TRUE(parsed->requested_uri_sans.empty());
}

TEST(CsrTest, P384KeyIsAccepted) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP384();
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<std::string> der = CreateCsrDer(*key, Id(kId));
  ASSERT_TRUE(der.ok()) << der.status();
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(*der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->algorithm, KeyAlgorithm::kEcdsaP384);
  EXPECT_EQ(EVP_PKEY_cmp(parsed->public_key.get(), key->get()), 1);
  EXPECT_EQ(parsed->requested_uri_sans, std::vector<std::string>{kId});
}

TEST(CsrTest, TwoRequestsForOneKeyDifferOnlyWhereTheyShould) {
  PrivateKey key = P256();
  absl::StatusOr<std::string> with = CreateCsrDer(key, Id(kId));
  absl::StatusOr<std::string> without = CreateCsrDer(key);
  ASSERT_TRUE(with.ok() && without.ok());
  EXPECT_GT(with->size(), without->size());
  EXPECT_NE(with->find(kId), std::string::npos);
  EXPECT_EQ(without->find("spiffe://"), std::string::npos);
}

TEST(CsrTest, RequestedUriSansAreReturnedVerbatimAndOnlyUris) {
  // The parser reports what was asked for without judging it; the control plane decides.
  PrivateKey key = P256();
  const std::string der = RawCsr(
      key,
      {{GEN_DNS, "checkout.shop.svc"}, {GEN_URI, "https://not-spiffe.example/x"}, {GEN_URI, kId}});
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->requested_uri_sans,
            (std::vector<std::string>{"https://not-spiffe.example/x", kId}));
}

TEST(CsrTest, RefusesEmpty) { ExpectRefused("", "CSR is empty"); }

TEST(CsrTest, RefusesGarbageBytes) {
  ExpectRefused(std::string("\x30\x03\x02\x01\x05garbage", 12), "not a DER-encoded PKCS#10");
  ExpectRefused("hello, control plane", "not a DER-encoded PKCS#10");
}

TEST(CsrTest, RefusesPemTextAndSaysToSendDer) {
  const std::string der = ValidCsr();
  crypto::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  crypto::UniquePtr<X509_REQ> req(
      d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  ASSERT_NE(req, nullptr);
  ASSERT_EQ(PEM_write_bio_X509_REQ(bio.get(), req.get()), 1);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  const std::string pem(data, static_cast<size_t>(len));
  ASSERT_EQ(pem.rfind("-----BEGIN CERTIFICATE REQUEST-----", 0), 0u) << pem;
  ExpectRefused(pem, "not PEM text");
}

TEST(CsrTest, RefusesTrailingBytesAfterTheDer) {
  const std::string der = ValidCsr();
  ASSERT_TRUE(ParseCsrDer(der).ok());
  ExpectRefused(der + std::string(1, '\0'), "not a DER-encoded PKCS#10");
  ExpectRefused(der + der, "not a DER-encoded PKCS#10");
}

TEST(CsrTest, RefusesTruncatedDer) {
  const std::string der = ValidCsr();
  ExpectRefused(der.substr(0, der.size() - 1), "not a DER-encoded PKCS#10");
  ExpectRefused(der.substr(0, 10), "not a DER-encoded PKCS#10");
}

TEST(CsrTest, RefusesOversizeInputBeforeParsingIt) {
  ExpectRefused(std::string(kMaxCsrBytes + 1, '\x30'),
                absl::StrCat(kMaxCsrBytes + 1, " bytes; the limit is ", kMaxCsrBytes));
  // A real CSR padded past the limit is refused for its size, not its trailing bytes.
  std::string padded = ValidCsr();
  padded.resize(kMaxCsrBytes + 100, '\0');
  ExpectRefused(padded, "the limit is 16384");
}

TEST(CsrTest, RefusesCorruptedSignature) {
  std::string der = ValidCsr();
  // The DER ends with the signature (a BIT STRING holding the ECDSA SEQUENCE{r, s}): changing its
  // last byte changes s but keeps the encoding valid.
  der.back() ^= 0x01;
  ExpectRefused(der, "signature does not verify");
}

TEST(CsrTest, RefusesTamperedRequestBody) {
  std::string der = ValidCsr();
  // Change the requested identity after signing: ns/shop -> ns/shoq.
  const size_t at = der.find("ns/shop");
  ASSERT_NE(at, std::string::npos);
  der[at + 6] = 'q';
  ExpectRefused(der, "signature does not verify");
}

TEST(CsrTest, RefusesRequestSignedByAnotherKey) {
  PrivateKey claimed = P256();
  PrivateKey signer = P256();
  crypto::UniquePtr<X509_REQ> req(X509_REQ_new());
  ASSERT_EQ(X509_REQ_set_pubkey(req.get(), claimed.get()), 1);
  ASSERT_GT(X509_REQ_sign(req.get(), signer.get(), EVP_sha256()), 0);
  uint8_t* raw = nullptr;
  const int len = i2d_X509_REQ(req.get(), &raw);
  ASSERT_GT(len, 0);
  const std::string der(reinterpret_cast<const char*>(raw), static_cast<size_t>(len));
  OPENSSL_free(raw);
  ExpectRefused(der, "not signed by the key it contains");
}

TEST(CsrTest, RefusesRsaKey) {
  PrivateKey rsa = Rsa2048();
  ASSERT_EQ(rsa.algorithm(), KeyAlgorithm::kRsa);
  absl::StatusOr<std::string> der = CreateCsrDer(rsa, Id(kId));
  ASSERT_TRUE(der.ok()) << der.status();
  ExpectRefused(*der, "CSR key is RSA; Trellis accepts only ECDSA P-256 or P-384 keys");
}

TEST(CsrTest, RefusesP192Key) {
  const std::string der = ReadFixture(kP192CsrPath);
  ASSERT_GT(der.size(), 100u);
  ASSERT_EQ(der[0], '\x30');
  // OpenSSL reads the key and names its curve as unsupported; BoringSSL cannot read a P-192 key
  // at all. Either way the requester learns which keys to send instead.
  ExpectRefused(der, "P-256");
  ExpectRefused(der, "P-384");
}

// OpenSSL 3 reads such a key as P-256; a leaf for it would carry the explicit parameters and
// every peer's strict verification would refuse it. BoringSSL cannot read it at all.
TEST(CsrTest, RefusesExplicitCurveParameters) {
  const std::string der = ReadFixture(kExplicitP256CsrPath);
  ASSERT_GT(der.size(), 300u);
  ExpectRefused(der, "P-256");
}

}  // namespace
}  // namespace trellis::identity
