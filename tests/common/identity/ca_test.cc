// The CA: what roots, intermediates and workload certificates (X.509-SVIDs) contain, what the CA
// refuses to sign, and, as an outside opinion, that the `openssl` command-line tool accepts the
// chains it makes.
#include "common/identity/ca.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"

namespace trellis::identity {
namespace {

constexpr char kId[] = "spiffe://cluster.local/ns/shop/sa/checkout";

template <typename T>
T Unwrap(absl::StatusOr<T> value) {
  EXPECT_TRUE(value.ok()) << value.status();
  if (!value.ok()) std::abort();
  return *std::move(value);
}

PrivateKey P256() { return Unwrap(PrivateKey::GenerateEcdsaP256()); }
PrivateKey P384() { return Unwrap(PrivateKey::GenerateEcdsaP384()); }

PrivateKey Rsa2048() {
  crypto::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr));
  EVP_PKEY* raw = nullptr;
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048) != 1 ||
      EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    ADD_FAILURE() << "RSA key generation failed";
  }
  return Unwrap(PrivateKey::FromEvpPkey(crypto::UniquePtr<EVP_PKEY>(raw)));
}

// Now, to the second, so that validity comparisons are exact.
absl::Time WholeSecondNow() { return absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())); }

CaCertificateSpec CaSpec(const std::string& name, absl::Time not_before, absl::Time not_after,
                         int path_length = -1) {
  CaCertificateSpec spec;
  spec.common_name = name;
  spec.not_before = not_before;
  spec.not_after = not_after;
  spec.path_length = path_length;
  return spec;
}

// Whether extension `nid` is present, and if so whether it is critical.
std::optional<bool> Criticality(const Certificate& cert, int nid) {
  const int index = X509_get_ext_by_NID(cert.get(), nid, -1);
  if (index < 0) return std::nullopt;
  return X509_EXTENSION_get_critical(X509_get_ext(cert.get(), index)) == 1;
}

std::string OctetString(const ASN1_OCTET_STRING* value) {
  if (value == nullptr) return "";
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     static_cast<size_t>(ASN1_STRING_length(value)));
}

// SHA-1 of the subjectPublicKey bits: the RFC 5280 method 1 key identifier.
std::string KeyIdOf(const Certificate& cert) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EXPECT_EQ(X509_pubkey_digest(cert.get(), EVP_sha1(), digest, &len), 1);
  return std::string(reinterpret_cast<const char*>(digest), len);
}

// True if `cert`'s signature verifies with `signer`'s public key.
bool SignedBy(const Certificate& cert, const Certificate& signer) {
  crypto::UniquePtr<EVP_PKEY> key(X509_get_pubkey(signer.get()));
  return key != nullptr && X509_verify(cert.get(), key.get()) == 1;
}

// Verifies `leaf` against `root` (and `untrusted` intermediates) with OpenSSL's own chain builder
// and strict checks, as a peer would.
int VerifyChain(const Certificate& leaf, const Certificate& root,
                const std::vector<Certificate>& untrusted = {}) {
  crypto::UniquePtr<X509_STORE> store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), root.get());
  X509_STORE_set_flags(store.get(), X509_V_FLAG_X509_STRICT);
  crypto::X509Stack chain(sk_X509_new_null());
  for (const Certificate& cert : untrusted) {
    sk_X509_push(chain.get(), crypto::UpRef(cert.get()).release());
  }
  crypto::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), leaf.get(), chain.get());
  if (X509_verify_cert(ctx.get()) == 1) return X509_V_OK;
  const int error = X509_STORE_CTX_get_error(ctx.get());
  return error == X509_V_OK ? -1 : error;
}

class CaTest : public ::testing::Test {
 protected:
  const absl::Time now_ = WholeSecondNow();
  PrivateKey root_key_ = P256();
  Certificate root_ = Unwrap(CreateRootCertificate(
      root_key_, CaSpec("Trellis Root CA", now_ - absl::Hours(1), now_ + absl::Hours(24 * 30))));
  PrivateKey leaf_key_ = P256();

  LeafCertificateSpec LeafSpec(std::vector<std::string> dns = {}) const {
    return LeafCertificateSpec{Unwrap(SpiffeId::Parse(kId)), now_ - absl::Minutes(5),
                               now_ + absl::Hours(1), std::move(dns)};
  }
  Certificate Leaf() {
    return Unwrap(IssueLeafCertificate(root_, root_key_, leaf_key_.get(), LeafSpec()));
  }
};

// --- Roots ---

TEST_F(CaTest, RootIsASelfSignedCaWithSubjectKeyId) {
  EXPECT_TRUE(root_.is_ca());
  EXPECT_EQ(X509_get_version(root_.get()), 2);  // v3
  EXPECT_EQ(root_.subject(), "CN=Trellis Root CA,O=Trellis");
  EXPECT_EQ(root_.issuer(), root_.subject());
  EXPECT_TRUE(SignedBy(root_, root_));
  EXPECT_EQ(X509_check_issued(root_.get(), root_.get()), X509_V_OK);
  EXPECT_TRUE(KeyMatchesCertificate(root_key_, root_));

  const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(root_.get());
  ASSERT_NE(ski, nullptr);
  EXPECT_EQ(OctetString(ski), KeyIdOf(root_));
  EXPECT_EQ(Criticality(root_, NID_subject_key_identifier), false);

  EXPECT_EQ(Criticality(root_, NID_basic_constraints), true);
  EXPECT_EQ(Criticality(root_, NID_key_usage), true);
  EXPECT_EQ(X509_get_key_usage(root_.get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_EQ(X509_get_pathlen(root_.get()), -1);
  EXPECT_EQ(X509_get_signature_nid(root_.get()), NID_ecdsa_with_SHA256);
  EXPECT_EQ(root_.not_before(), now_ - absl::Hours(1));
  EXPECT_EQ(root_.not_after(), now_ + absl::Hours(24 * 30));
  EXPECT_EQ(ASN1_STRING_length(X509_get_serialNumber(root_.get())), 16);
}

TEST_F(CaTest, RootHonoursPathLengthAndP384) {
  PrivateKey key = P384();
  CaCertificateSpec spec = CaSpec("P-384 Root", now_, now_ + absl::Hours(1), /*path_length=*/1);
  spec.organization = "";
  Certificate root = Unwrap(CreateRootCertificate(key, spec));
  EXPECT_EQ(X509_get_pathlen(root.get()), 1);
  EXPECT_EQ(root.subject(), "CN=P-384 Root");
  EXPECT_EQ(X509_get_signature_nid(root.get()), NID_ecdsa_with_SHA384);
  EXPECT_TRUE(SignedBy(root, root));
}

TEST_F(CaTest, RootRefusesEmptyValidity) {
  PrivateKey key = P256();
  for (absl::Time not_after : {now_, now_ - absl::Seconds(1)}) {
    absl::StatusOr<Certificate> root = CreateRootCertificate(key, CaSpec("Bad", now_, not_after));
    ASSERT_FALSE(root.ok());
    EXPECT_EQ(root.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(root.status().message().find("validity is empty"), std::string::npos)
        << root.status();
  }
}

// --- Intermediates ---

TEST_F(CaTest, IntermediateChainsToTheRoot) {
  PrivateKey key = P256();
  Certificate intermediate = Unwrap(CreateIntermediateCertificate(
      root_, root_key_, key.get(),
      CaSpec("Trellis Intermediate", now_ - absl::Minutes(1), now_ + absl::Hours(12), 0)));
  EXPECT_TRUE(intermediate.is_ca());
  EXPECT_EQ(X509_get_pathlen(intermediate.get()), 0);
  EXPECT_EQ(intermediate.issuer(), root_.subject());
  EXPECT_EQ(intermediate.subject(), "CN=Trellis Intermediate,O=Trellis");
  EXPECT_TRUE(SignedBy(intermediate, root_));
  EXPECT_FALSE(SignedBy(intermediate, intermediate));
  EXPECT_EQ(X509_check_issued(root_.get(), intermediate.get()), X509_V_OK);
  EXPECT_TRUE(KeyMatchesCertificate(key, intermediate));
  EXPECT_EQ(X509_get_key_usage(intermediate.get()),
            static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_EQ(OctetString(X509_get0_subject_key_id(intermediate.get())), KeyIdOf(intermediate));
  EXPECT_EQ(OctetString(X509_get0_authority_key_id(intermediate.get())),
            OctetString(X509_get0_subject_key_id(root_.get())));
  EXPECT_NE(intermediate.serial_hex(), root_.serial_hex());

  // A leaf under the intermediate verifies with the intermediate supplied, and only then.
  Certificate leaf = Unwrap(IssueLeafCertificate(intermediate, key, leaf_key_.get(), LeafSpec()));
  EXPECT_EQ(OctetString(X509_get0_authority_key_id(leaf.get())),
            OctetString(X509_get0_subject_key_id(intermediate.get())));
  EXPECT_EQ(VerifyChain(leaf, root_, {intermediate}), X509_V_OK);
  EXPECT_NE(VerifyChain(leaf, root_), X509_V_OK);
}

TEST_F(CaTest, IntermediateValidityIsClampedToTheIssuer) {
  PrivateKey key = P256();
  Certificate intermediate = Unwrap(CreateIntermediateCertificate(
      root_, root_key_, key.get(), CaSpec("Long", now_, now_ + absl::Hours(24 * 365))));
  EXPECT_EQ(intermediate.not_before(), now_);
  EXPECT_EQ(intermediate.not_after(), root_.not_after());
}

TEST_F(CaTest, IntermediateRefusesMismatchedIssuerKey) {
  PrivateKey wrong = P256();
  PrivateKey key = P256();
  EXPECT_FALSE(KeyMatchesCertificate(wrong, root_));
  absl::StatusOr<Certificate> intermediate = CreateIntermediateCertificate(
      root_, wrong, key.get(), CaSpec("Intermediate", now_, now_ + absl::Hours(1)));
  ASSERT_FALSE(intermediate.ok());
  EXPECT_EQ(intermediate.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(intermediate.status().message().find("does not match"), std::string::npos)
      << intermediate.status();
}

TEST_F(CaTest, IntermediateRefusesNonCaIssuer) {
  const Certificate leaf = Leaf();
  PrivateKey key = P256();
  absl::StatusOr<Certificate> intermediate = CreateIntermediateCertificate(
      leaf, leaf_key_, key.get(), CaSpec("Intermediate", now_, now_ + absl::Hours(1)));
  ASSERT_FALSE(intermediate.ok());
  EXPECT_NE(intermediate.status().message().find("not a CA"), std::string::npos)
      << intermediate.status();
}

// --- Leaves (X.509-SVIDs) ---

TEST_F(CaTest, LeafHasExactlyOneUriSanAndItIsCritical) {
  const Certificate leaf = Leaf();
  EXPECT_EQ(leaf.uri_sans(), std::vector<std::string>{kId});
  EXPECT_TRUE(leaf.dns_sans().empty());
  EXPECT_EQ(Unwrap(leaf.GetSpiffeId()).ToString(), kId);
  EXPECT_EQ(Criticality(leaf, NID_subject_alt_name), true);
  // The subject is empty: identity is the SAN only.
  EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf.get())), 0);
  EXPECT_EQ(leaf.issuer(), root_.subject());
}

TEST_F(CaTest, LeafIsForServerAndClientAuthWithDigitalSignatureOnly) {
  const Certificate leaf = Leaf();
  const uint32_t xku = X509_get_extended_key_usage(leaf.get());
  EXPECT_EQ(xku & (XKU_SSL_SERVER | XKU_SSL_CLIENT),
            static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  EXPECT_EQ(X509_get_key_usage(leaf.get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(Criticality(leaf, NID_key_usage), true);
  EXPECT_EQ(Criticality(leaf, NID_ext_key_usage), false);
}

TEST_F(CaTest, LeafIsNotACa) {
  const Certificate leaf = Leaf();
  EXPECT_FALSE(leaf.is_ca());
  EXPECT_EQ(X509_check_ca(leaf.get()), 0);
  // basicConstraints is present (CA:FALSE) and critical.
  EXPECT_EQ(Criticality(leaf, NID_basic_constraints), true);
}

TEST_F(CaTest, LeafKeyIdentifiersLinkToTheIssuer) {
  const Certificate leaf = Leaf();
  const std::string issuer_ski = OctetString(X509_get0_subject_key_id(root_.get()));
  ASSERT_EQ(issuer_ski.size(), 20u);
  EXPECT_EQ(OctetString(X509_get0_authority_key_id(leaf.get())), issuer_ski);
  EXPECT_EQ(OctetString(X509_get0_subject_key_id(leaf.get())), KeyIdOf(leaf));
  EXPECT_NE(OctetString(X509_get0_subject_key_id(leaf.get())), issuer_ski);
}

TEST_F(CaTest, LeafCarriesTheSubjectKeyAndIsSignedByTheIssuer) {
  const Certificate leaf = Leaf();
  crypto::UniquePtr<EVP_PKEY> public_key(X509_get_pubkey(leaf.get()));
  ASSERT_NE(public_key, nullptr);
  EXPECT_EQ(EVP_PKEY_cmp(public_key.get(), leaf_key_.get()), 1);
  EXPECT_TRUE(KeyMatchesCertificate(leaf_key_, leaf));
  EXPECT_FALSE(KeyMatchesCertificate(root_key_, leaf));
  EXPECT_TRUE(SignedBy(leaf, root_));
  EXPECT_EQ(X509_get_signature_nid(leaf.get()), NID_ecdsa_with_SHA256);
  EXPECT_EQ(VerifyChain(leaf, root_), X509_V_OK);
}

TEST_F(CaTest, LeafSignedByP384IssuerUsesSha384) {
  PrivateKey key = P384();
  Certificate root =
      Unwrap(CreateRootCertificate(key, CaSpec("P-384", now_, now_ + absl::Hours(2))));
  Certificate leaf = Unwrap(IssueLeafCertificate(root, key, leaf_key_.get(), LeafSpec()));
  EXPECT_EQ(X509_get_signature_nid(leaf.get()), NID_ecdsa_with_SHA384);
  EXPECT_TRUE(SignedBy(leaf, root));
}

TEST_F(CaTest, LeafSerialIsSixteenPositiveBytes) {
  const Certificate leaf = Leaf();
  const ASN1_INTEGER* serial = X509_get_serialNumber(leaf.get());
  EXPECT_EQ(ASN1_STRING_type(serial), V_ASN1_INTEGER);  // not V_ASN1_NEG_INTEGER
  EXPECT_EQ(ASN1_STRING_length(serial), 16);
  // The DER content octets have no sign byte: the top bit of the first is clear.
  EXPECT_EQ(ASN1_STRING_get0_data(serial)[0] & 0x80, 0);
  EXPECT_EQ(leaf.serial_hex().size(), 32u);
}

TEST_F(CaTest, HundredLeavesHaveDistinctSerials) {
  std::set<std::string> serials;
  for (int i = 0; i < 100; ++i) serials.insert(Leaf().serial_hex());
  EXPECT_EQ(serials.size(), 100u);
  EXPECT_EQ(serials.count(root_.serial_hex()), 0u);
}

TEST_F(CaTest, LeafValidityIsAsAskedAndClampedToTheIssuer) {
  const Certificate leaf = Leaf();
  EXPECT_EQ(leaf.not_before(), now_ - absl::Minutes(5));
  EXPECT_EQ(leaf.not_after(), now_ + absl::Hours(1));

  LeafCertificateSpec spec = LeafSpec();
  spec.not_after = now_ + absl::Hours(24 * 365);
  const Certificate clamped = Unwrap(IssueLeafCertificate(root_, root_key_, leaf_key_.get(), spec));
  EXPECT_EQ(clamped.not_after(), root_.not_after());
  EXPECT_EQ(clamped.not_before(), spec.not_before);
}

TEST_F(CaTest, LeafRefusesEmptyValidity) {
  for (absl::Duration length : {absl::ZeroDuration(), -absl::Minutes(1)}) {
    LeafCertificateSpec spec = LeafSpec();
    spec.not_after = spec.not_before + length;
    absl::StatusOr<Certificate> leaf =
        IssueLeafCertificate(root_, root_key_, leaf_key_.get(), spec);
    ASSERT_FALSE(leaf.ok());
    EXPECT_EQ(leaf.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(leaf.status().message().find("validity is empty"), std::string::npos)
        << leaf.status();
  }
  // Clamping can empty the validity too: a leaf asked to start after its issuer expires.
  LeafCertificateSpec late = LeafSpec();
  late.not_before = root_.not_after() + absl::Hours(1);
  late.not_after = root_.not_after() + absl::Hours(2);
  EXPECT_FALSE(IssueLeafCertificate(root_, root_key_, leaf_key_.get(), late).ok());
}

TEST_F(CaTest, LeafRefusesNonCaIssuer) {
  const Certificate leaf = Leaf();
  PrivateKey key = P256();
  absl::StatusOr<Certificate> issued = IssueLeafCertificate(leaf, leaf_key_, key.get(), LeafSpec());
  ASSERT_FALSE(issued.ok());
  EXPECT_EQ(issued.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(issued.status().message().find("not a CA"), std::string::npos) << issued.status();
}

// A CA started with the wrong key file would sign leaves every peer refuses as unknown_ca.
TEST_F(CaTest, LeafRefusesMismatchedIssuerKey) {
  PrivateKey wrong = P256();
  absl::StatusOr<Certificate> leaf =
      IssueLeafCertificate(root_, wrong, leaf_key_.get(), LeafSpec());
  ASSERT_FALSE(leaf.ok()) << "issued a leaf that does not verify: SignedBy(leaf, root) is "
                          << SignedBy(*leaf, root_);
  EXPECT_NE(leaf.status().message().find("does not match"), std::string::npos) << leaf.status();
}

TEST_F(CaTest, LeafRefusesIssuerWithoutSubjectKeyId) {
  // The root re-signed without its SKI: the leaf's AKI would have nothing to point at.
  crypto::UniquePtr<X509> copy(X509_dup(root_.get()));
  const int index = X509_get_ext_by_NID(copy.get(), NID_subject_key_identifier, -1);
  ASSERT_GE(index, 0);
  X509_EXTENSION_free(X509_delete_ext(copy.get(), index));
  ASSERT_GT(X509_sign(copy.get(), root_key_.get(), EVP_sha256()), 0);
  const Certificate no_ski = Certificate::FromX509(copy.get());
  ASSERT_TRUE(no_ski.is_ca());
  absl::StatusOr<Certificate> leaf =
      IssueLeafCertificate(no_ski, root_key_, leaf_key_.get(), LeafSpec());
  ASSERT_FALSE(leaf.ok());
  EXPECT_EQ(leaf.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(leaf.status().message().find("subjectKeyIdentifier"), std::string::npos)
      << leaf.status();
}

TEST_F(CaTest, LeafCarriesDnsSansAfterTheUri) {
  const Certificate leaf = Unwrap(IssueLeafCertificate(
      root_, root_key_, leaf_key_.get(), LeafSpec({"control.trellis.svc", "localhost"})));
  EXPECT_EQ(leaf.dns_sans(), (std::vector<std::string>{"control.trellis.svc", "localhost"}));
  EXPECT_EQ(leaf.uri_sans(), std::vector<std::string>{kId});
  EXPECT_EQ(Unwrap(leaf.GetSpiffeId()).ToString(), kId);
  // A TLS client checking the host name would accept it (and refuse another name).
  const std::string host = "control.trellis.svc";
  EXPECT_EQ(X509_check_host(leaf.get(), host.data(), host.size(), 0, nullptr), 1);
  const std::string other = "other.trellis.svc";
  EXPECT_NE(X509_check_host(leaf.get(), other.data(), other.size(), 0, nullptr), 1);
}

TEST_F(CaTest, LeafRefusesInvalidDnsName) {
  for (const std::string& dns :
       {std::string(""), std::string("a b"), std::string("x/y"), std::string("host:443")}) {
    absl::StatusOr<Certificate> leaf =
        IssueLeafCertificate(root_, root_key_, leaf_key_.get(), LeafSpec({"ok.example", dns}));
    ASSERT_FALSE(leaf.ok()) << dns;
    EXPECT_NE(leaf.status().message().find(absl::StrCat("invalid DNS name \"", dns, "\"")),
              std::string::npos)
        << leaf.status();
  }
}

TEST_F(CaTest, RsaLeafAlsoGetsKeyEncipherment) {
  PrivateKey rsa = Rsa2048();
  const Certificate leaf = Unwrap(IssueLeafCertificate(root_, root_key_, rsa.get(), LeafSpec()));
  EXPECT_EQ(X509_get_key_usage(leaf.get()),
            static_cast<uint32_t>(KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT));
  EXPECT_TRUE(SignedBy(leaf, root_));
}

// --- LeafIssuer: the prepared form a signer keeps ---

// DER of a certificate's SubjectPublicKeyInfo, and of a key's.
std::string SpkiDer(const Certificate& cert) {
  uint8_t* der = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert.get()), &der);
  std::string out(reinterpret_cast<const char*>(der), len > 0 ? static_cast<size_t>(len) : 0);
  OPENSSL_free(der);
  return out;
}

std::string SpkiDer(EVP_PKEY* key) {
  uint8_t* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  std::string out(reinterpret_cast<const char*>(der), len > 0 ? static_cast<size_t>(len) : 0);
  OPENSSL_free(der);
  return out;
}

// Each extension's DER, in order.
std::vector<std::string> ExtensionsDer(const Certificate& cert) {
  std::vector<std::string> out;
  for (int i = 0; i < X509_get_ext_count(cert.get()); ++i) {
    uint8_t* der = nullptr;
    const int len = i2d_X509_EXTENSION(X509_get_ext(cert.get(), i), &der);
    out.emplace_back(reinterpret_cast<const char*>(der), len > 0 ? static_cast<size_t>(len) : 0);
    OPENSSL_free(der);
  }
  return out;
}

TEST_F(CaTest, LeafIssuerMakesWhatIssueLeafCertificateMakes) {
  const LeafIssuer issuer = Unwrap(LeafIssuer::Create(root_, root_key_));
  const Certificate prepared = Unwrap(issuer.Issue(leaf_key_.get(), LeafSpec()));
  const Certificate direct = Leaf();
  EXPECT_EQ(ExtensionsDer(prepared), ExtensionsDer(direct));
  EXPECT_EQ(SpkiDer(prepared), SpkiDer(direct));
  EXPECT_EQ(prepared.issuer(), direct.issuer());
  EXPECT_EQ(prepared.subject(), "");
  EXPECT_EQ(prepared.not_before(), direct.not_before());
  EXPECT_EQ(prepared.not_after(), direct.not_after());
  EXPECT_NE(prepared.serial_hex(), direct.serial_hex());
  EXPECT_TRUE(SignedBy(prepared, root_));
  EXPECT_EQ(VerifyChain(prepared, root_), X509_V_OK);
}

TEST_F(CaTest, LeafIssuerRefusesWhatIssueLeafCertificateRefuses) {
  PrivateKey other = P256();
  absl::StatusOr<LeafIssuer> mismatched = LeafIssuer::Create(root_, other);
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  const Certificate leaf = Leaf();
  absl::StatusOr<LeafIssuer> not_ca = LeafIssuer::Create(leaf, leaf_key_);
  EXPECT_EQ(not_ca.status().code(), absl::StatusCode::kInvalidArgument);
}

// The leaf's key is the requester's, byte for byte, whatever form the key came in: generated, read
// back from a CSR (an OpenSSL 3 provider key), on P-256 or P-384; and the certificate object can
// hand it back (TLS and X509_check_private_key use it).
TEST_F(CaTest, LeafSubjectKeyIsTheRequestersByteForByte) {
  EXPECT_EQ(SpkiDer(Leaf()), SpkiDer(leaf_key_.get()));
  PrivateKey p384 = P384();
  for (PrivateKey* key : {&leaf_key_, &p384}) {
    const std::string spki = Unwrap(key->PublicKeyDer());
    const auto* p = reinterpret_cast<const uint8_t*>(spki.data());
    crypto::UniquePtr<EVP_PKEY> decoded(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
    ASSERT_NE(decoded, nullptr);
    const Certificate leaf =
        Unwrap(IssueLeafCertificate(root_, root_key_, decoded.get(), LeafSpec()));
    EXPECT_EQ(SpkiDer(leaf), spki);
    EXPECT_NE(crypto::UniquePtr<EVP_PKEY>(X509_get_pubkey(leaf.get())), nullptr);
    EXPECT_TRUE(KeyMatchesCertificate(*key, leaf));
    // And the same after a round trip through DER, as a peer sees it.
    const Certificate reparsed = Unwrap(Certificate::FromDer(leaf.ToDer()));
    EXPECT_EQ(SpkiDer(reparsed), spki);
    EXPECT_EQ(KeyIdOf(reparsed), OctetString(X509_get0_subject_key_id(reparsed.get())));
  }
}

// --- The openssl command-line tool's opinion ---

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `command` with /bin/sh.
CommandResult RunShell(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) result.output.append(buf, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string ShellQuote(const std::string& text) {
  return absl::StrCat("'", absl::StrReplaceAll(text, {{"'", "'\\''"}}), "'");
}

class OpensslCliTest : public CaTest {
 protected:
  void SetUp() override {
    const CommandResult which = RunShell("command -v openssl");
    const char* path = getenv("PATH");
    ASSERT_EQ(which.exit_code, 0)
        << "the `openssl` command-line tool is not on PATH (" << (path ? path : "unset")
        << "); install the Debian package `openssl` (scripts/test installs it: "
           "apt-get install openssl). This check is required, so it fails rather than skips.";
    const char* tmp = getenv("TEST_TMPDIR");
    std::string pattern = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/ca_test.XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  void Write(const std::string& name, const std::string& contents) {
    std::ofstream out(dir_ + "/" + name, std::ios::binary | std::ios::trunc);
    out << contents;
    ASSERT_TRUE(out.good()) << name;
  }

  // Runs openssl with `args` in the temporary directory.
  CommandResult Openssl(const std::string& args) {
    return RunShell(absl::StrCat("cd ", ShellQuote(dir_), " && openssl ", args));
  }

  std::string dir_;
};

TEST_F(OpensslCliTest, VerifiesLeafAgainstItsRoot) {
  Write("root.pem", root_.ToPem());
  Write("leaf.pem", Leaf().ToPem());
  for (const char* flags : {"", "-x509_strict", "-purpose sslserver", "-purpose sslclient"}) {
    const CommandResult r = Openssl(absl::StrCat("verify ", flags, " -CAfile root.pem leaf.pem"));
    EXPECT_EQ(r.exit_code, 0) << flags << ": " << r.output;
    EXPECT_NE(r.output.find("leaf.pem: OK"), std::string::npos) << flags << ": " << r.output;
  }
}

TEST_F(OpensslCliTest, VerifiesLeafThroughAnIntermediate) {
  PrivateKey key = P256();
  const Certificate intermediate = Unwrap(CreateIntermediateCertificate(
      root_, root_key_, key.get(),
      CaSpec("Intermediate", now_ - absl::Hours(1), now_ + absl::Hours(12), 0)));
  Write("root.pem", root_.ToPem());
  Write("intermediate.pem", intermediate.ToPem());
  Write("leaf.pem",
        Unwrap(IssueLeafCertificate(intermediate, key, leaf_key_.get(), LeafSpec())).ToPem());
  CommandResult r =
      Openssl("verify -x509_strict -CAfile root.pem -untrusted intermediate.pem leaf.pem");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("leaf.pem: OK"), std::string::npos) << r.output;

  r = Openssl("verify -CAfile root.pem leaf.pem");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("leaf.pem: OK"), std::string::npos) << r.output;
}

TEST_F(OpensslCliTest, RefusesLeafAgainstAnotherRoot) {
  PrivateKey other_key = P256();
  const Certificate other = Unwrap(CreateRootCertificate(
      other_key, CaSpec("Trellis Root CA", now_ - absl::Hours(1), now_ + absl::Hours(24))));
  Write("other.pem", other.ToPem());
  Write("leaf.pem", Leaf().ToPem());
  const CommandResult r = Openssl("verify -CAfile other.pem leaf.pem");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("leaf.pem: OK"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
}

TEST_F(OpensslCliTest, TextDumpShowsTheSvidExtensions) {
  Write("leaf.pem", Leaf().ToPem());
  const CommandResult r = Openssl("x509 -in leaf.pem -noout -text");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string& expected :
       {absl::StrCat("URI:", kId),
        std::string("TLS Web Server Authentication, TLS Web Client "
                    "Authentication"),
        std::string("X509v3 Subject Alternative Name: critical"), std::string("CA:FALSE"),
        std::string("Digital Signature"), std::string("ecdsa-with-SHA256")}) {
    EXPECT_NE(r.output.find(expected), std::string::npos) << "missing \"" << expected << "\" in\n"
                                                          << r.output;
  }
  EXPECT_EQ(r.output.find("Key Encipherment"), std::string::npos) << r.output;
}

TEST_F(OpensslCliTest, SerialMatchesSerialHex) {
  const Certificate leaf = Leaf();
  Write("leaf.pem", leaf.ToPem());
  const CommandResult r = Openssl("x509 -in leaf.pem -noout -serial");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // openssl prints "serial=<UPPERCASE HEX>".
  std::string printed = r.output.substr(r.output.find('=') + 1);
  printed = printed.substr(0, printed.find('\n'));
  EXPECT_EQ(absl::AsciiStrToLower(printed), leaf.serial_hex()) << r.output;
}

}  // namespace
}  // namespace trellis::identity
