// CSRs: CreateCsrDer/ParseCsrDer round trips, and every refusal the control plane relies on to
// keep bad requests (wrong encoding, forged signatures, weak or unsupported keys) out.
#include "common/identity/csr.h"

#include <openssl/ec.h>
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

// --- Hand-built requests, for the cases no library encoder makes ---------------------------------

// One DER element: tag, shortest-form length, contents.
std::string Tlv(uint8_t tag, absl::string_view contents) {
  std::string out(1, static_cast<char>(tag));
  const size_t n = contents.size();
  if (n < 0x80) {
    out.push_back(static_cast<char>(n));
  } else if (n < 0x100) {
    out += {'\x81', static_cast<char>(n)};
  } else {
    out += {'\x82', static_cast<char>(n >> 8), static_cast<char>(n & 0xff)};
  }
  out.append(contents.data(), contents.size());
  return out;
}
std::string Seq(const std::vector<std::string>& parts) {
  std::string contents;
  for (const std::string& part : parts) contents += part;
  return Tlv(0x30, contents);
}
std::string Set(const std::vector<std::string>& parts) {
  std::string contents;
  for (const std::string& part : parts) contents += part;
  return Tlv(0x31, contents);
}
std::string Oid(absl::string_view contents) { return Tlv(0x06, contents); }
std::string Bits(absl::string_view bytes) {
  return Tlv(0x03, std::string(1, '\0') + std::string(bytes));
}

const std::string kEcPublicKey("\x2a\x86\x48\xce\x3d\x02\x01", 7);
const std::string kP256("\x2a\x86\x48\xce\x3d\x03\x01\x07", 8);
const std::string kP521("\x2b\x81\x04\x00\x23", 5);
const std::string kEcdsaSha256("\x2a\x86\x48\xce\x3d\x04\x03\x02", 8);
const std::string kEcdsaSha384("\x2a\x86\x48\xce\x3d\x04\x03\x03", 8);
const std::string kExtensionRequest("\x2a\x86\x48\x86\xf7\x0d\x01\x09\x0e", 9);
const std::string kChallengePassword("\x2a\x86\x48\x86\xf7\x0d\x01\x09\x07", 9);
const std::string kSubjectAltName("\x55\x1d\x11", 3);

// The uncompressed point (04 || X || Y) of an EC key.
std::string RawPoint(const PrivateKey& key) {
  const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(key.get());
  uint8_t buf[133];
  const size_t n = EC_POINT_point2oct(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec),
                                      POINT_CONVERSION_UNCOMPRESSED, buf, sizeof(buf), nullptr);
  EXPECT_GT(n, 0u);
  return std::string(reinterpret_cast<const char*>(buf), n);
}

std::string EcSpki(absl::string_view curve_oid, absl::string_view point) {
  return Seq({Seq({Oid(kEcPublicKey), Oid(curve_oid)}), Bits(point)});
}

// A subjectAltName extension holding `general_names` (already encoded GeneralName elements).
std::string SanExtension(const std::string& general_names) {
  return Seq({Oid(kSubjectAltName), Tlv(0x04, Seq({general_names}))});
}
std::string UriName(absl::string_view uri) { return Tlv(0x86, uri); }

std::string ExtensionRequest(const std::vector<std::string>& extensions) {
  return Seq({Oid(kExtensionRequest), Set({Seq(extensions)})});
}

struct RequestParts {
  std::string version = Tlv(0x02, std::string(1, '\0'));
  std::string subject = Seq({});
  std::string spki;  // required
  // The [0] attributes element whole, or "" to leave it out.
  std::string attributes = Tlv(0xa0, "");
  std::string sig_alg = Seq({Oid(kEcdsaSha256)});
  const EVP_MD* digest = EVP_sha256();
  bool corrupt_signature = false;
  std::string signature_unused_bits = std::string(1, '\0');
  std::string after_signature;  // extra elements inside the request
};

// Assembles and signs (with `key`, over the exact info bytes) a request from `parts`.
std::string BuildCsr(const PrivateKey& key, const RequestParts& parts) {
  const std::string info = Seq({parts.version, parts.subject, parts.spki, parts.attributes});
  crypto::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  size_t sig_len = 0;
  EXPECT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, parts.digest, nullptr, key.get()), 1);
  EXPECT_EQ(EVP_DigestSign(ctx.get(), nullptr, &sig_len,
                           reinterpret_cast<const uint8_t*>(info.data()), info.size()),
            1);
  std::string sig(sig_len, '\0');
  EXPECT_EQ(EVP_DigestSign(ctx.get(), reinterpret_cast<uint8_t*>(sig.data()), &sig_len,
                           reinterpret_cast<const uint8_t*>(info.data()), info.size()),
            1);
  sig.resize(sig_len);
  if (parts.corrupt_signature) sig.back() ^= 0x01;
  return Seq(
      {info, parts.sig_alg, Tlv(0x03, parts.signature_unused_bits + sig), parts.after_signature});
}

RequestParts PartsFor(const PrivateKey& key) {
  RequestParts parts;
  parts.spki = EcSpki(kP256, RawPoint(key));
  return parts;
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

// --- The strict parser's own refusals (hand-built requests) --------------------------------------

TEST(CsrDerTest, HandBuiltRequestIsAccepted) {
  // The builder itself makes acceptable requests, so each refusal below is due to its one change.
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.attributes = Tlv(0xa0, ExtensionRequest({SanExtension(UriName(kId))}));
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(BuildCsr(key, parts));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->algorithm, KeyAlgorithm::kEcdsaP256);
  EXPECT_EQ(EVP_PKEY_cmp(parsed->public_key.get(), key.get()), 1);
  EXPECT_EQ(parsed->requested_uri_sans, std::vector<std::string>{kId});
}

TEST(CsrDerTest, AcceptsSha384SignatureAndMissingAttributes) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.sig_alg = Seq({Oid(kEcdsaSha384)});
  parts.digest = EVP_sha384();
  parts.attributes = "";
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(BuildCsr(key, parts));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->requested_uri_sans.empty());
}

TEST(CsrDerTest, RefusesSignatureWhoseDigestDoesNotMatchTheAlgorithm) {
  // Signed over SHA-384 but labelled ecdsa-with-SHA256.
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.digest = EVP_sha384();
  ExpectRefused(BuildCsr(key, parts), "signature does not verify");
}

TEST(CsrDerTest, IgnoresOtherAttributesAndExtensions) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  const std::string password = Seq({Oid(kChallengePassword), Set({Tlv(0x0c, "secret")})});
  // An unknown critical extension: the CA decides every extension of the leaf, so it is ignored.
  const std::string unknown =
      Seq({Oid("\x2b\x06\x01\x04\x01\x82\x37\x01"), Tlv(0x01, "\xff"), Tlv(0x04, "x")});
  parts.attributes = Tlv(0xa0, password + ExtensionRequest({unknown, SanExtension(UriName(kId))}));
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(BuildCsr(key, parts));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->requested_uri_sans, std::vector<std::string>{kId});
}

TEST(CsrDerTest, RefusesWrongVersion) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.version = Tlv(0x02, "\x01");
  ExpectRefused(BuildCsr(key, parts), "CSR version is not v1");
  parts.version = Tlv(0x02, std::string("\x00\x00", 2));  // not minimal, and not 0's encoding
  ExpectRefused(BuildCsr(key, parts), "CSR version is not v1");
}

TEST(CsrDerTest, RefusesCompressedPoint) {
  PrivateKey key = P256();
  const std::string point = RawPoint(key);
  std::string compressed = point.substr(0, 33);
  compressed[0] = (point.back() & 1) ? '\x03' : '\x02';
  RequestParts parts = PartsFor(key);
  parts.spki = EcSpki(kP256, compressed);
  ExpectRefused(BuildCsr(key, parts), "compressed points are not accepted");
}

TEST(CsrDerTest, RefusesPointNotOnTheCurve) {
  PrivateKey key = P256();
  std::string point = RawPoint(key);
  point[10] ^= 0x10;
  RequestParts parts = PartsFor(key);
  parts.spki = EcSpki(kP256, point);
  ExpectRefused(BuildCsr(key, parts), "CSR public key is not a point on ECDSA P-256");
}

TEST(CsrDerTest, RefusesP384PointLabelledP256) {
  absl::StatusOr<PrivateKey> p384 = PrivateKey::GenerateEcdsaP384();
  ASSERT_TRUE(p384.ok());
  RequestParts parts;
  parts.spki = EcSpki(kP256, RawPoint(*p384));
  ExpectRefused(BuildCsr(*p384, parts), "not an uncompressed ECDSA P-256 point");
}

TEST(CsrDerTest, RefusesOtherCurvesAndKeyTypesByName) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.spki = EcSpki(kP521, std::string(133, '\x04'));
  ExpectRefused(BuildCsr(key, parts), "CSR key is ECDSA on P-521; Trellis accepts only");
  parts.spki = Seq({Seq({Oid("\x2b\x65\x70")}), Bits(std::string(32, 'k'))});
  ExpectRefused(BuildCsr(key, parts), "CSR key is Ed25519; Trellis accepts only");
  // An EC key whose parameters are neither a named curve nor explicit (e.g. NULL).
  parts.spki = Seq({Seq({Oid(kEcPublicKey), Tlv(0x05, "")}), Bits(RawPoint(key))});
  ExpectRefused(BuildCsr(key, parts), "CSR key has no named curve");
}

TEST(CsrDerTest, RefusesSignatureAlgorithmsOtherThanEcdsaWithoutParameters) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.sig_alg = Seq({Oid(kEcdsaSha256), Tlv(0x05, "")});  // NULL parameters
  ExpectRefused(BuildCsr(key, parts), "signature algorithm is not ecdsa-with-SHA256");
  parts.sig_alg = Seq({Oid("\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b")});  // sha256WithRSAEncryption
  ExpectRefused(BuildCsr(key, parts), "signature algorithm is not ecdsa-with-SHA256");
}

TEST(CsrDerTest, RefusesMalformedSignatureEncodings) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.signature_unused_bits = "\x01";
  ExpectRefused(BuildCsr(key, parts), "signature BIT STRING has unused bits");
  parts = PartsFor(key);
  parts.corrupt_signature = true;
  ExpectRefused(BuildCsr(key, parts), "signature does not verify");
}

TEST(CsrDerTest, RefusesElementsAfterTheSignature) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.after_signature = Tlv(0x05, "");
  ExpectRefused(BuildCsr(key, parts), "not a DER-encoded PKCS#10");
}

TEST(CsrDerTest, RefusesNonDerLengths) {
  PrivateKey key = P256();
  const std::string good = BuildCsr(key, PartsFor(key));
  ASSERT_TRUE(ParseCsrDer(good).ok());
  // The version INTEGER (02 01 00) with its length in the long form (02 81 01 00): BER, not DER.
  RequestParts parts = PartsFor(key);
  parts.version = std::string("\x02\x81\x01\x00", 4);
  ExpectRefused(BuildCsr(key, parts), "not a DER-encoded PKCS#10");
  // The outer SEQUENCE with an indefinite length (30 80 ... 00 00).
  std::string indefinite = good;
  const size_t header = static_cast<uint8_t>(good[1]) == 0x81 ? 3 : 2;
  indefinite = std::string("\x30\x80", 2) + good.substr(header) + std::string(2, '\0');
  ExpectRefused(indefinite, "not a DER-encoded PKCS#10");
}

TEST(CsrDerTest, RefusesMalformedOrDuplicateExtensions) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  // SAN value that is not a SEQUENCE of GeneralNames.
  parts.attributes =
      Tlv(0xa0, ExtensionRequest({Seq({Oid(kSubjectAltName), Tlv(0x04, Tlv(0x86, kId))})}));
  ExpectRefused(BuildCsr(key, parts), "CSR subjectAltName extension is malformed");
  // A GeneralName with a tag outside the CHOICE.
  parts.attributes = Tlv(0xa0, ExtensionRequest({SanExtension(Tlv(0x8a, "x"))}));
  ExpectRefused(BuildCsr(key, parts), "CSR subjectAltName extension is malformed");
  // A URI that is not IA5 (7-bit).
  parts.attributes = Tlv(0xa0, ExtensionRequest({SanExtension(UriName("spiffe://\xc3\xa9"))}));
  ExpectRefused(BuildCsr(key, parts), "CSR subjectAltName extension is malformed");
  // The same extension twice: which one would count?
  parts.attributes = Tlv(
      0xa0, ExtensionRequest({SanExtension(UriName(kId)), SanExtension(UriName("spiffe://x/y"))}));
  ExpectRefused(BuildCsr(key, parts), "lists the same extension twice");
  parts.attributes =
      Tlv(0xa0, ExtensionRequest({SanExtension(UriName(kId))}) + ExtensionRequest({}));
  ExpectRefused(BuildCsr(key, parts), "more than one extensionRequest attribute");
  // critical encoded as an explicit FALSE (DER leaves the default out).
  parts.attributes =
      Tlv(0xa0, ExtensionRequest({Seq({Oid(kSubjectAltName), Tlv(0x01, std::string(1, '\0')),
                                       Tlv(0x04, Seq({UriName(kId)}))})}));
  ExpectRefused(BuildCsr(key, parts), "malformed extension");
}

TEST(CsrDerTest, RefusesSanNameTypesOtherThanUriDnsEmailAndIp) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  // otherName [0] { type-id, [0] value }
  const std::string other_name = Tlv(0xa0, Oid("\x2b\x06\x01\x04\x01") + Tlv(0xa0, Tlv(0x0c, "x")));
  parts.attributes = Tlv(0xa0, ExtensionRequest({SanExtension(other_name + UriName(kId))}));
  ExpectRefused(BuildCsr(key, parts), "name type Trellis does not accept");
  // An iPAddress that is neither 4 nor 16 bytes.
  parts.attributes = Tlv(0xa0, ExtensionRequest({SanExtension(Tlv(0x87, "12345"))}));
  ExpectRefused(BuildCsr(key, parts), "CSR subjectAltName extension is malformed");
  // DNS, email and IP names are allowed next to the URI (and not returned).
  parts.attributes =
      Tlv(0xa0, ExtensionRequest(
                    {SanExtension(Tlv(0x82, "a.example") + Tlv(0x81, "a@example") +
                                  Tlv(0x87, std::string("\x0a\x00\x00\x01", 4)) + UriName(kId))}));
  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(BuildCsr(key, parts));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->requested_uri_sans, std::vector<std::string>{kId});
}

TEST(CsrDerTest, RefusesAttributeValuesThatAreNotPlainStrings) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.attributes = Tlv(0xa0, Seq({Oid(kChallengePassword), Set({Tlv(0x02, "\x01")})}));
  ExpectRefused(BuildCsr(key, parts), "bad attribute value");
  parts.attributes = Tlv(0xa0, Seq({Oid(kChallengePassword), Set({Tlv(0x0c, "\xc3")})}));
  ExpectRefused(BuildCsr(key, parts), "bad attribute value");  // truncated UTF-8
}

TEST(CsrDerTest, RefusesMalformedSubject) {
  PrivateKey key = P256();
  RequestParts parts = PartsFor(key);
  parts.subject = Seq({Tlv(0x05, "")});  // not a SET of attribute values
  ExpectRefused(BuildCsr(key, parts), "bad subject name");
  const std::string cn("\x55\x04\x03", 3);
  parts.subject = Seq({Set({Seq({Oid(cn), Tlv(0x02, "\x01")})})});  // an INTEGER value
  ExpectRefused(BuildCsr(key, parts), "bad subject name");
  parts.subject = Seq({Set({Seq({Oid(cn), Tlv(0x0c, "\xed\xa0\x80")})})});  // a UTF-16 surrogate
  ExpectRefused(BuildCsr(key, parts), "bad subject name");
  parts.subject = Seq({Set({Seq({Oid(cn), Tlv(0x13, "a*b")})})});  // '*' is not Printable
  ExpectRefused(BuildCsr(key, parts), "bad subject name");
  // A well-formed subject is accepted (and ignored).
  parts.subject = Seq({Set({Seq({Oid("\x55\x04\x03"), Tlv(0x0c, "seed")})})});
  EXPECT_TRUE(ParseCsrDer(BuildCsr(key, parts)).ok());
}

}  // namespace
}  // namespace trellis::identity
