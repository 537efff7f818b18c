// Certificate: parsing (DER, PEM, PEM chains, files), the fields Trellis reads from a
// certificate, and the X.509-SVID rules for finding the SPIFFE ID.
#include "common/identity/certificate.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/identity/ca.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::identity {
namespace {

using testing::MakeIntermediate;
using testing::MakeLeaf;
using testing::MakeLeafWithUris;
using testing::MakeRoot;

constexpr char kId[] = "spiffe://cluster.local/ns/shop/sa/checkout";

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

// `cert` with its serial replaced by `serial` and re-signed by `ca`.
Certificate WithSerial(const Certificate& cert, const testing::TestCa& ca, long serial) {  // NOLINT
  crypto::UniquePtr<X509> copy(X509_dup(cert.get()));
  crypto::UniquePtr<ASN1_INTEGER> value(ASN1_INTEGER_new());
  EXPECT_EQ(ASN1_INTEGER_set(value.get(), serial), 1);
  EXPECT_EQ(X509_set_serialNumber(copy.get(), value.get()), 1);
  EXPECT_GT(X509_sign(copy.get(), ca.key->get(), EVP_sha256()), 0);
  return Certificate::FromX509(copy.get());
}

class CertificateTest : public ::testing::Test {
 protected:
  testing::TestCa root_ = MakeRoot("Cert Test Root");
  testing::TestCa intermediate_ = MakeIntermediate(root_, "Cert Test Intermediate");
  testing::TestLeaf leaf_ = MakeLeaf(intermediate_, kId);
};

TEST_F(CertificateTest, DerRoundTrip) {
  const Certificate& leaf = leaf_.chain[0];
  const std::string der = leaf.ToDer();
  ASSERT_FALSE(der.empty());
  absl::StatusOr<Certificate> parsed = Certificate::FromDer(der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, leaf);
  EXPECT_EQ(parsed->ToDer(), der);
  EXPECT_NE(*parsed, root_.cert);
}

TEST_F(CertificateTest, FromDerRefusesTrailingBytesAndGarbage) {
  const std::string der = leaf_.chain[0].ToDer();
  absl::StatusOr<Certificate> trailing = Certificate::FromDer(der + "xy");
  ASSERT_FALSE(trailing.ok());
  EXPECT_EQ(trailing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(trailing.status().message().find("2 unexpected bytes"), std::string::npos)
      << trailing.status();

  for (const std::string& bad : {std::string(), std::string("not a certificate"),
                                 der.substr(0, der.size() - 1), leaf_.chain[0].ToPem()}) {
    absl::StatusOr<Certificate> cert = Certificate::FromDer(bad);
    ASSERT_FALSE(cert.ok()) << bad.size();
    EXPECT_EQ(cert.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(cert.status().message().find("not a DER X.509 certificate"), std::string::npos)
        << cert.status();
  }
}

TEST_F(CertificateTest, PemRoundTrip) {
  const Certificate& leaf = leaf_.chain[0];
  const std::string pem = leaf.ToPem();
  EXPECT_EQ(pem.rfind("-----BEGIN CERTIFICATE-----\n", 0), 0u) << pem;
  absl::StatusOr<Certificate> parsed = Certificate::FromPem(pem);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, leaf);
}

TEST_F(CertificateTest, FromPemTakesTheFirstBlockAndRefusesNone) {
  absl::StatusOr<Certificate> first =
      Certificate::FromPem(leaf_.chain[0].ToPem() + root_.cert.ToPem());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, leaf_.chain[0]);

  absl::StatusOr<Certificate> none = Certificate::FromPem("just some text\n");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("no PEM CERTIFICATE block"), std::string::npos)
      << none.status();
}

TEST_F(CertificateTest, ParsePemChainKeepsEveryBlockInOrder) {
  const std::vector<Certificate> expected = {leaf_.chain[0], intermediate_.cert, root_.cert};
  // Text around and between the blocks (as in bundle files with comments) is skipped.
  const std::string pem = absl::StrCat("# workload chain\n", expected[0].ToPem(), "\n",
                                       expected[1].ToPem(), "root follows\n", expected[2].ToPem());
  absl::StatusOr<std::vector<Certificate>> chain = ParsePemChain(pem);
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ(*chain, expected);

  absl::StatusOr<std::vector<Certificate>> again = ParsePemChain(ToPemChain(expected));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, expected);
}

TEST_F(CertificateTest, ParsePemChainRefusesTextWithoutCertificates) {
  for (const std::string& text :
       {std::string(), std::string("nothing here\n"),
        std::string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}) {
    absl::StatusOr<std::vector<Certificate>> chain = ParsePemChain(text);
    ASSERT_FALSE(chain.ok()) << text;
    EXPECT_EQ(chain.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(chain.status().message().find("no certificate found"), std::string::npos)
        << chain.status();
  }
}

TEST_F(CertificateTest, ParsePemChainNamesTheCorruptedBlock) {
  std::string second = intermediate_.cert.ToPem();
  // Break the base64 body of the second block.
  const size_t body = second.find('\n') + 1;
  second.replace(body + 10, 4, "!!!!");
  const std::string pem = leaf_.chain[0].ToPem() + second + root_.cert.ToPem();
  absl::StatusOr<std::vector<Certificate>> chain = ParsePemChain(pem);
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(chain.status().message().find("block 2 does not parse"), std::string::npos)
      << chain.status();
}

TEST_F(CertificateTest, ParsePemChainNamesACertificateBlockWhoseDerIsBroken) {
  // Valid base64, but the DER inside is cut short.
  const std::string der = root_.cert.ToDer();
  const std::string broken = absl::StrCat("-----BEGIN CERTIFICATE-----\n",
                                          absl::Base64Escape(der.substr(0, der.size() / 2)),
                                          "\n-----END CERTIFICATE-----\n");
  absl::StatusOr<std::vector<Certificate>> chain =
      ParsePemChain(leaf_.chain[0].ToPem() + intermediate_.cert.ToPem() + broken);
  ASSERT_FALSE(chain.ok());
  EXPECT_NE(chain.status().message().find("block 3"), std::string::npos) << chain.status();
}

TEST_F(CertificateTest, LoadPemChainFileReadsAFile) {
  const std::string path = TempDir() + "/chain.pem";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << ToPemChain(leaf_.chain);
  }
  absl::StatusOr<std::vector<Certificate>> chain = LoadPemChainFile(path);
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ(*chain, leaf_.chain);
}

TEST_F(CertificateTest, LoadPemChainFileNamesAMissingFile) {
  const std::string path = TempDir() + "/no-such-dir/missing-chain.pem";
  absl::StatusOr<std::vector<Certificate>> chain = LoadPemChainFile(path);
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(chain.status().message().find(path), std::string::npos) << chain.status();
  EXPECT_NE(chain.status().message().find("No such file"), std::string::npos) << chain.status();
}

TEST_F(CertificateTest, LoadPemChainFileNamesAFileWithoutCertificates) {
  const std::string path = TempDir() + "/empty-chain.pem";
  { std::ofstream out(path, std::ios::binary | std::ios::trunc); }
  absl::StatusOr<std::vector<Certificate>> chain = LoadPemChainFile(path);
  ASSERT_FALSE(chain.ok());
  EXPECT_EQ(chain.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(chain.status().message().find(path), std::string::npos) << chain.status();
  EXPECT_NE(chain.status().message().find("no certificate found"), std::string::npos)
      << chain.status();
}

TEST_F(CertificateTest, SerialHexIsLowercaseWithoutLeadingZeros) {
  EXPECT_EQ(WithSerial(leaf_.chain[0], intermediate_, 0x0a0b).serial_hex(), "a0b");
  EXPECT_EQ(WithSerial(leaf_.chain[0], intermediate_, 0xABCDEF).serial_hex(), "abcdef");
  EXPECT_EQ(WithSerial(leaf_.chain[0], intermediate_, 1).serial_hex(), "1");
  EXPECT_EQ(WithSerial(leaf_.chain[0], intermediate_, 0).serial_hex(), "0");

  // Minted serials: 128 random bits with the top bit clear and the next set, so 32 hex digits.
  for (const Certificate* cert : {&leaf_.chain[0], &intermediate_.cert, &root_.cert}) {
    const std::string hex = cert->serial_hex();
    EXPECT_EQ(hex.size(), 32u) << hex;
    EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos) << hex;
    EXPECT_NE(hex[0], '0') << hex;
  }
}

TEST_F(CertificateTest, ValidityIsWhatWasAskedToTheSecond) {
  const absl::Time not_before = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 600);
  const absl::Time not_after = not_before + absl::Minutes(45);
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok());
  absl::StatusOr<Certificate> cert =
      IssueLeafCertificate(root_.cert, *root_.key, key->get(),
                           LeafCertificateSpec{*SpiffeId::Parse(kId), not_before, not_after, {}});
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->not_before(), not_before);
  EXPECT_EQ(cert->not_after(), not_after);

  // Sub-second parts are dropped, not rounded up.
  absl::StatusOr<Certificate> fractional =
      IssueLeafCertificate(root_.cert, *root_.key, key->get(),
                           LeafCertificateSpec{*SpiffeId::Parse(kId),
                                               not_before + absl::Milliseconds(900),
                                               not_after + absl::Milliseconds(999),
                                               {}});
  ASSERT_TRUE(fractional.ok()) << fractional.status();
  EXPECT_EQ(fractional->not_before(), not_before);
  EXPECT_EQ(fractional->not_after(), not_after);
}

TEST_F(CertificateTest, ValidityAfter2049UsesGeneralizedTimeAndStillConverts) {
  // RFC 5280 switches from UTCTime to GeneralizedTime in 2050; a long-lived root crosses it.
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok());
  const absl::Time not_before =
      absl::FromCivil(absl::CivilSecond(2040, 1, 2, 3, 4, 5), absl::UTCTimeZone());
  const absl::Time not_after =
      absl::FromCivil(absl::CivilSecond(2060, 6, 7, 8, 9, 10), absl::UTCTimeZone());
  CaCertificateSpec spec;
  spec.common_name = "Long Root";
  spec.not_before = not_before;
  spec.not_after = not_after;
  absl::StatusOr<Certificate> root = CreateRootCertificate(*key, spec);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(root->not_before(), not_before);
  EXPECT_EQ(root->not_after(), not_after);
  EXPECT_EQ(ASN1_STRING_type(X509_get0_notAfter(root->get())), V_ASN1_GENERALIZEDTIME);
}

TEST_F(CertificateTest, GetSpiffeIdFromTheOnlyUriSan) {
  absl::StatusOr<SpiffeId> id = leaf_.chain[0].GetSpiffeId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->ToString(), kId);

  testing::TestLeaf one = MakeLeafWithUris(root_, {kId});
  absl::StatusOr<SpiffeId> from_raw = SpiffeIdOf(one.chain[0].get());
  ASSERT_TRUE(from_raw.ok()) << from_raw.status();
  EXPECT_EQ(from_raw->ToString(), kId);
}

TEST_F(CertificateTest, GetSpiffeIdNeverFallsBackToTheCommonName) {
  // The subject CN is "spiffe://example.org/cn"; with no URI SAN there is no identity at all.
  testing::TestLeaf none = MakeLeafWithUris(root_, {});
  EXPECT_NE(none.chain[0].subject().find("spiffe://example.org/cn"), std::string::npos)
      << none.chain[0].subject();
  absl::StatusOr<SpiffeId> id = none.chain[0].GetSpiffeId();
  ASSERT_FALSE(id.ok()) << id->ToString();
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(id.status().message().find("no URI SAN"), std::string::npos) << id.status();
  EXPECT_NE(id.status().message().find("CN is never used"), std::string::npos) << id.status();
}

TEST_F(CertificateTest, GetSpiffeIdRefusesTwoUriSans) {
  testing::TestLeaf two = MakeLeafWithUris(root_, {kId, "spiffe://cluster.local/ns/shop/sa/admin"});
  EXPECT_EQ(two.chain[0].uri_sans().size(), 2u);
  absl::StatusOr<SpiffeId> id = two.chain[0].GetSpiffeId();
  ASSERT_FALSE(id.ok()) << id->ToString();
  EXPECT_NE(id.status().message().find("exactly one"), std::string::npos) << id.status();
  EXPECT_NE(id.status().message().find("sa/admin"), std::string::npos) << id.status();

  // Also when both SANs are the same ID: the rule is about the count.
  testing::TestLeaf twice = MakeLeafWithUris(root_, {kId, kId});
  EXPECT_FALSE(twice.chain[0].GetSpiffeId().ok());
}

TEST_F(CertificateTest, GetSpiffeIdRefusesNonSpiffeUri) {
  for (const std::string& uri : {std::string("https://cluster.local/ns/shop/sa/checkout"),
                                 std::string("SPIFFE://cluster.local/ns/shop"),
                                 std::string("spiffe://cluster.local/ns/shop/")}) {
    testing::TestLeaf leaf = MakeLeafWithUris(root_, {uri});
    absl::StatusOr<SpiffeId> id = leaf.chain[0].GetSpiffeId();
    ASSERT_FALSE(id.ok()) << uri;
    EXPECT_NE(id.status().message().find("not a valid SPIFFE ID"), std::string::npos)
        << id.status();
  }
}

TEST_F(CertificateTest, UriAndDnsSans) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok());
  LeafCertificateSpec spec{*SpiffeId::Parse(kId),
                           absl::Now() - absl::Minutes(1),
                           absl::Now() + absl::Hours(1),
                           {"control.trellis.svc", "localhost"}};
  absl::StatusOr<Certificate> cert = IssueLeafCertificate(root_.cert, *root_.key, key->get(), spec);
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->dns_sans(), (std::vector<std::string>{"control.trellis.svc", "localhost"}));
  EXPECT_EQ(cert->uri_sans(), std::vector<std::string>{kId});
  EXPECT_TRUE(leaf_.chain[0].dns_sans().empty());
  EXPECT_EQ(leaf_.chain[0].uri_sans(), std::vector<std::string>{kId});
  // DNS SANs do not disturb the one-URI rule.
  ASSERT_TRUE(cert->GetSpiffeId().ok());
  EXPECT_EQ(cert->GetSpiffeId()->ToString(), kId);
}

TEST_F(CertificateTest, Sha256HexIsTheDigestOfTheDer) {
  const Certificate& leaf = leaf_.chain[0];
  const std::string hex = leaf.sha256_hex();
  ASSERT_EQ(hex.size(), 64u);
  EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos) << hex;
  const std::string der = leaf.ToDer();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ASSERT_EQ(EVP_Digest(der.data(), der.size(), digest, &len, EVP_sha256(), nullptr), 1);
  EXPECT_EQ(hex,
            absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), len)));
  EXPECT_NE(root_.cert.sha256_hex(), hex);
}

TEST_F(CertificateTest, SubjectIssuerAndCaFlag) {
  EXPECT_TRUE(root_.cert.is_ca());
  EXPECT_TRUE(intermediate_.cert.is_ca());
  EXPECT_FALSE(leaf_.chain[0].is_ca());
  EXPECT_EQ(root_.cert.subject(), "CN=Cert Test Root,O=Trellis");
  EXPECT_EQ(root_.cert.issuer(), root_.cert.subject());
  EXPECT_EQ(intermediate_.cert.issuer(), root_.cert.subject());
  EXPECT_EQ(leaf_.chain[0].issuer(), intermediate_.cert.subject());
  EXPECT_EQ(leaf_.chain[0].subject(), "");  // identity lives in the SAN only
}

TEST_F(CertificateTest, CopiesShareTheCertificateAndOutliveTheOriginal) {
  std::optional<Certificate> copy;
  {
    Certificate original = leaf_.chain[0];
    copy = original;
    EXPECT_EQ(copy->get(), original.get());
    Certificate assigned = root_.cert;
    assigned = original;
    EXPECT_EQ(assigned, original);
  }
  EXPECT_EQ(copy->GetSpiffeId()->ToString(), kId);

  crypto::UniquePtr<X509> raw(X509_dup(root_.cert.get()));
  Certificate wrapped = Certificate::FromX509(raw.get());
  raw.reset();  // FromX509 took its own reference
  EXPECT_EQ(wrapped, root_.cert);
}

TEST(Asn1TimeTest, ConvertsUtcTime) {
  crypto::UniquePtr<ASN1_TIME> t(ASN1_TIME_set(nullptr, 1700000000));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Asn1TimeToAbsl(t.get()), absl::FromUnixSeconds(1700000000));
  EXPECT_EQ(Asn1TimeToAbsl(nullptr), absl::InfinitePast());
}

}  // namespace
}  // namespace trellis::identity
