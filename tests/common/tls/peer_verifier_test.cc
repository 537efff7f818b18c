// PeerVerifier::Verify called directly (no TLS): one test per outcome, with the clock injected.
#include "common/tls/peer_verifier.h"

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::tls {
namespace {

using testing::BundleOf;
using testing::MakeIntermediate;
using testing::MakeLeaf;
using testing::MakeLeafWithUris;
using testing::MakeRoot;
using testing::Patterns;

constexpr char kId[] = "spiffe://cluster.local/ns/shop/sa/frontend";

// A stack holding its own references to `certs`.
crypto::X509Stack StackOf(const std::vector<identity::Certificate>& certs) {
  crypto::X509Stack stack(sk_X509_new_null());
  for (const identity::Certificate& cert : certs) {
    sk_X509_push(stack.get(), crypto::UpRef(cert.get()).release());
  }
  return stack;
}

// `cert` changed by `edit` and re-signed by `ca`: for certificates the CA would never issue.
identity::Certificate Resigned(const identity::Certificate& cert, const testing::TestCa& ca,
                               const std::function<void(X509*)>& edit) {
  crypto::UniquePtr<X509> copy(X509_dup(cert.get()));
  edit(copy.get());
  EXPECT_GT(X509_sign(copy.get(), ca.key->get(), EVP_sha256()), 0);
  return identity::Certificate::FromX509(copy.get());
}

class PeerVerifierTest : public ::testing::Test {
 protected:
  testing::TestCa root_ = MakeRoot("Verifier Root");
  testing::TestLeaf leaf_ = MakeLeaf(root_, kId);
  std::vector<identity::SpiffeIdPattern> allow_shop_ =
      Patterns({"spiffe://cluster.local/ns/shop/*"});

  std::unique_ptr<PeerVerifier> Verifier(DenyList deny = {}) {
    absl::StatusOr<std::unique_ptr<PeerVerifier>> verifier =
        PeerVerifier::Create(BundleOf({&root_}), std::move(deny));
    EXPECT_TRUE(verifier.ok()) << verifier.status();
    return *std::move(verifier);
  }

  PeerVerification Verify(const identity::Certificate& leaf, absl::Time now = absl::Now(),
                          PeerRole role = PeerRole::kClient) {
    return Verifier()->Verify(leaf.get(), nullptr, role, now, allow_shop_);
  }
};

TEST_F(PeerVerifierTest, ValidPeerIsAcceptedWithItsIdentityAndSerial) {
  const PeerVerification v = Verify(leaf_.chain[0]);
  EXPECT_TRUE(v.ok()) << v.detail;
  EXPECT_FALSE(v.reason.has_value());
  EXPECT_TRUE(v.detail.empty()) << v.detail;
  ASSERT_TRUE(v.peer_id.has_value());
  EXPECT_EQ(v.peer_id->ToString(), kId);
  EXPECT_EQ(v.peer_serial_hex, leaf_.chain[0].serial_hex());
  EXPECT_FALSE(v.peer_serial_hex.empty());
}

TEST_F(PeerVerifierTest, BothRolesAcceptAnSvid) {
  for (PeerRole role : {PeerRole::kClient, PeerRole::kServer}) {
    const PeerVerification v = Verify(leaf_.chain[0], absl::Now(), role);
    EXPECT_TRUE(v.ok()) << v.detail;
  }
}

TEST_F(PeerVerifierTest, NullLeafIsNoPeerCertificate) {
  const PeerVerification v =
      Verifier()->Verify(nullptr, nullptr, PeerRole::kClient, absl::Now(), allow_shop_);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kNoPeerCertificate);
  EXPECT_FALSE(v.detail.empty());
  EXPECT_FALSE(v.peer_id.has_value());
  EXPECT_TRUE(v.peer_serial_hex.empty());
}

TEST_F(PeerVerifierTest, LeafOfAnotherRootIsUnknownCaButStillNamed) {
  testing::TestCa other = MakeRoot("Other Root");
  const identity::Certificate stranger = MakeLeaf(other, kId).chain[0];
  const PeerVerification v = Verify(stranger);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kUnknownCa) << v.detail;
  EXPECT_NE(v.detail.find(kId), std::string::npos) << v.detail;
  ASSERT_TRUE(v.peer_id.has_value());
  EXPECT_EQ(v.peer_id->ToString(), kId);
  EXPECT_EQ(v.peer_serial_hex, stranger.serial_hex());
}

TEST_F(PeerVerifierTest, ExpiredLeafIsExpiredAndTheDetailSaysWhen) {
  const identity::Certificate expired =
      MakeLeaf(root_, kId, absl::Now() - absl::Minutes(50), absl::Now() - absl::Minutes(10))
          .chain[0];
  const PeerVerification v = Verify(expired);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kExpired) << v.detail;
  EXPECT_NE(v.detail.find(absl::StrCat("notAfter ", absl::FormatTime(expired.not_after()))),
            std::string::npos)
      << v.detail;
  EXPECT_NE(v.detail.find(kId), std::string::npos) << v.detail;
}

TEST_F(PeerVerifierTest, FutureLeafIsNotYetValid) {
  const identity::Certificate future =
      MakeLeaf(root_, kId, absl::Now() + absl::Minutes(10), absl::Now() + absl::Hours(2)).chain[0];
  const PeerVerification v = Verify(future);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kNotYetValid) << v.detail;
  EXPECT_NE(v.detail.find(absl::StrCat("notBefore ", absl::FormatTime(future.not_before()))),
            std::string::npos)
      << v.detail;
}

TEST_F(PeerVerifierTest, TheInjectedClockDecidesValidity) {
  // The leaf is valid over [nb, na] and the root over [nb - 55m, nb + 24h].
  const identity::Certificate& leaf = leaf_.chain[0];
  const absl::Time nb = leaf.not_before();
  const absl::Time na = leaf.not_after();
  EXPECT_TRUE(Verify(leaf, nb + absl::Minutes(1)).ok());
  EXPECT_TRUE(Verify(leaf, na - absl::Minutes(1)).ok());
  EXPECT_EQ(Verify(leaf, na + absl::Minutes(1)).reason, FailureReason::kExpired);
  EXPECT_EQ(Verify(leaf, nb - absl::Minutes(1)).reason, FailureReason::kNotYetValid);

  // And the other way round: a certificate that is expired now passed in the past.
  const identity::Certificate old =
      MakeLeaf(root_, kId, absl::Now() - absl::Minutes(50), absl::Now() - absl::Minutes(10))
          .chain[0];
  EXPECT_EQ(Verify(old).reason, FailureReason::kExpired);
  const PeerVerification then = Verify(old, absl::Now() - absl::Minutes(30));
  EXPECT_TRUE(then.ok()) << then.detail;
}

TEST_F(PeerVerifierTest, IntermediateMustBeSupplied) {
  testing::TestCa intermediate = MakeIntermediate(root_);
  testing::TestLeaf leaf = MakeLeaf(intermediate, kId);
  ASSERT_EQ(leaf.chain.size(), 2u);
  const std::unique_ptr<PeerVerifier> verifier = Verifier();

  PeerVerification v =
      verifier->Verify(leaf.chain[0].get(), nullptr, PeerRole::kClient, absl::Now(), allow_shop_);
  EXPECT_EQ(v.reason, FailureReason::kUnknownCa) << v.detail;

  crypto::X509Stack empty = StackOf({});
  v = verifier->Verify(leaf.chain[0].get(), empty.get(), PeerRole::kClient, absl::Now(),
                       allow_shop_);
  EXPECT_EQ(v.reason, FailureReason::kUnknownCa) << v.detail;

  crypto::X509Stack intermediates = StackOf({leaf.chain[1]});
  v = verifier->Verify(leaf.chain[0].get(), intermediates.get(), PeerRole::kClient, absl::Now(),
                       allow_shop_);
  EXPECT_TRUE(v.ok()) << v.detail;
  EXPECT_EQ(v.peer_id->ToString(), kId);
}

TEST_F(PeerVerifierTest, IntermediateOfAnotherRootDoesNotHelp) {
  testing::TestCa other = MakeRoot("Other Root");
  testing::TestCa intermediate = MakeIntermediate(other);
  testing::TestLeaf leaf = MakeLeaf(intermediate, kId);
  crypto::X509Stack intermediates = StackOf({leaf.chain[1]});
  const PeerVerification v = Verifier()->Verify(leaf.chain[0].get(), intermediates.get(),
                                                PeerRole::kClient, absl::Now(), allow_shop_);
  EXPECT_EQ(v.reason, FailureReason::kUnknownCa) << v.detail;
}

TEST_F(PeerVerifierTest, RevokedSerialIsRevoked) {
  const identity::Certificate& leaf = leaf_.chain[0];
  // Written as an operator might paste it: uppercase, colon-separated.
  std::string pasted;
  for (size_t i = 0; i < leaf.serial_hex().size(); i += 2) {
    absl::StrAppend(&pasted, i == 0 ? "" : ":",
                    absl::AsciiStrToUpper(leaf.serial_hex().substr(i, 2)));
  }
  const PeerVerification v =
      Verifier(DenyList::Create({pasted}, {}).value())
          ->Verify(leaf.get(), nullptr, PeerRole::kClient, absl::Now(), allow_shop_);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kRevoked) << v.detail;
  EXPECT_NE(v.detail.find(leaf.serial_hex()), std::string::npos) << v.detail;
  EXPECT_EQ(v.peer_id->ToString(), kId);

  // Another certificate for the same identity is not affected.
  const PeerVerification fresh = Verifier(DenyList::Create({pasted}, {}).value())
                                     ->Verify(MakeLeaf(root_, kId).chain[0].get(), nullptr,
                                              PeerRole::kClient, absl::Now(), allow_shop_);
  EXPECT_TRUE(fresh.ok()) << fresh.detail;
}

TEST_F(PeerVerifierTest, RevokedIdentityIsRevokedWhateverTheCertificate) {
  const std::unique_ptr<PeerVerifier> verifier = Verifier(DenyList::Create({}, {kId}).value());
  for (int i = 0; i < 2; ++i) {
    const identity::Certificate leaf = MakeLeaf(root_, kId).chain[0];
    const PeerVerification v =
        verifier->Verify(leaf.get(), nullptr, PeerRole::kClient, absl::Now(), allow_shop_);
    EXPECT_EQ(v.reason, FailureReason::kRevoked) << v.detail;
    EXPECT_NE(v.detail.find(kId), std::string::npos) << v.detail;
    EXPECT_NE(v.detail.find("deny-list"), std::string::npos) << v.detail;
  }
  const identity::Certificate other =
      MakeLeaf(root_, "spiffe://cluster.local/ns/shop/sa/cart").chain[0];
  EXPECT_TRUE(
      verifier->Verify(other.get(), nullptr, PeerRole::kClient, absl::Now(), allow_shop_).ok());
}

TEST_F(PeerVerifierTest, ChainFailureWinsOverRevocation) {
  // The first failure in the documented order is reported: an expired, revoked peer is expired.
  const identity::Certificate expired =
      MakeLeaf(root_, kId, absl::Now() - absl::Minutes(50), absl::Now() - absl::Minutes(10))
          .chain[0];
  const PeerVerification v =
      Verifier(DenyList::Create({expired.serial_hex()}, {kId}).value())
          ->Verify(expired.get(), nullptr, PeerRole::kClient, absl::Now(), allow_shop_);
  EXPECT_EQ(v.reason, FailureReason::kExpired) << v.detail;
}

TEST_F(PeerVerifierTest, RevocationWinsOverPolicy) {
  const PeerVerification v =
      Verifier(DenyList::Create({}, {kId}).value())
          ->Verify(leaf_.chain[0].get(), nullptr, PeerRole::kClient, absl::Now(),
                   Patterns({"spiffe://cluster.local/ns/payments/*"}));
  EXPECT_EQ(v.reason, FailureReason::kRevoked) << v.detail;
}

TEST_F(PeerVerifierTest, IdentityOutsideThePatternsIsNotAllowedAndTheDetailListsThem) {
  const std::vector<identity::SpiffeIdPattern> allowed =
      Patterns({"spiffe://cluster.local/ns/payments/*", "spiffe://cluster.local/ns/shop/sa/cart"});
  const PeerVerification v =
      Verifier()->Verify(leaf_.chain[0].get(), nullptr, PeerRole::kClient, absl::Now(), allowed);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kIdentityNotAllowed);
  EXPECT_NE(v.detail.find(kId), std::string::npos) << v.detail;
  EXPECT_NE(v.detail.find("spiffe://cluster.local/ns/payments/*"), std::string::npos) << v.detail;
  EXPECT_NE(v.detail.find("spiffe://cluster.local/ns/shop/sa/cart"), std::string::npos) << v.detail;
  ASSERT_TRUE(v.peer_id.has_value());
  EXPECT_EQ(v.peer_id->ToString(), kId);
}

TEST_F(PeerVerifierTest, AnyMatchingPatternAllows) {
  for (const std::string& pattern :
       {std::string(kId), std::string("spiffe://cluster.local"), std::string("*"),
        std::string("spiffe://cluster.local/ns/shop/sa/*")}) {
    const PeerVerification v =
        Verifier()->Verify(leaf_.chain[0].get(), nullptr, PeerRole::kClient, absl::Now(),
                           Patterns({"spiffe://other.example/*", pattern}));
    EXPECT_TRUE(v.ok()) << pattern << ": " << v.detail;
  }
}

TEST_F(PeerVerifierTest, EmptyAllowedListAllowsNobody) {
  const PeerVerification v =
      Verifier()->Verify(leaf_.chain[0].get(), nullptr, PeerRole::kClient, absl::Now(), {});
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kIdentityNotAllowed) << v.detail;
  EXPECT_NE(v.detail.find("(nobody)"), std::string::npos) << v.detail;
}

TEST_F(PeerVerifierTest, TwoUriSansAreMalformed) {
  const identity::Certificate two =
      MakeLeafWithUris(root_, {kId, "spiffe://cluster.local/ns/shop/sa/admin"}).chain[0];
  const PeerVerification v = Verify(two);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kMalformedCertificate) << v.detail;
  EXPECT_NE(v.detail.find("exactly one"), std::string::npos) << v.detail;
  EXPECT_FALSE(v.peer_id.has_value());
  EXPECT_EQ(v.peer_serial_hex, two.serial_hex());
}

TEST_F(PeerVerifierTest, NoUriSanIsMalformedEvenWithAnIdentityLikeCommonName) {
  const identity::Certificate none = MakeLeafWithUris(root_, {}).chain[0];
  const PeerVerification v = Verify(none);
  EXPECT_EQ(v.reason, FailureReason::kMalformedCertificate) << v.detail;
  EXPECT_FALSE(v.peer_id.has_value());
}

TEST_F(PeerVerifierTest, RootPresentedAsLeafIsRefused) {
  // The trusted root itself, which has no URI SAN and cannot be used for TLS.
  const PeerVerification v = Verify(root_.cert);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kMalformedCertificate) << v.detail;
}

TEST_F(PeerVerifierTest, CaCertificateWithASpiffeIdPresentedAsLeafIsRefused) {
  // A certificate that would pass every other check, but says CA:TRUE. (It gets a subject too:
  // strict chain verification already refuses a CA with an empty one.)
  const identity::Certificate ca_leaf = Resigned(leaf_.chain[0], root_, [](X509* x) {
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>("Workload CA"), -1, -1, 0);
    crypto::UniquePtr<BASIC_CONSTRAINTS> bc(BASIC_CONSTRAINTS_new());
    bc->ca = 0xff;
    X509_add1_ext_i2d(x, NID_basic_constraints, bc.get(), 1, X509V3_ADD_REPLACE);
    crypto::UniquePtr<ASN1_BIT_STRING> usage(ASN1_BIT_STRING_new());
    ASN1_BIT_STRING_set_bit(usage.get(), 0, 1);  // digitalSignature
    ASN1_BIT_STRING_set_bit(usage.get(), 5, 1);  // keyCertSign
    X509_add1_ext_i2d(x, NID_key_usage, usage.get(), 1, X509V3_ADD_REPLACE);
  });
  ASSERT_TRUE(ca_leaf.is_ca());
  ASSERT_EQ(ca_leaf.GetSpiffeId().value().ToString(), kId);
  const PeerVerification v = Verify(ca_leaf);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kMalformedCertificate) << v.detail;
  EXPECT_NE(v.detail.find("CA certificate"), std::string::npos) << v.detail;
}

TEST_F(PeerVerifierTest, KeyPurposeFollowsThePeerRole) {
  // A certificate for client authentication only may be a client, never a server.
  const identity::Certificate client_only = Resigned(leaf_.chain[0], root_, [](X509* x) {
    crypto::UniquePtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
    sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_client_auth));
    X509_add1_ext_i2d(x, NID_ext_key_usage, eku.get(), 0, X509V3_ADD_REPLACE);
  });
  const PeerVerification as_client = Verify(client_only, absl::Now(), PeerRole::kClient);
  EXPECT_TRUE(as_client.ok()) << as_client.detail;
  const PeerVerification as_server = Verify(client_only, absl::Now(), PeerRole::kServer);
  ASSERT_FALSE(as_server.ok());
  EXPECT_EQ(as_server.reason, FailureReason::kMalformedCertificate) << as_server.detail;
}

TEST_F(PeerVerifierTest, TamperedLeafIsRefused) {
  // Re-signed by a key that is not the root's, under the root's name.
  testing::TestCa impostor = MakeRoot("Verifier Root");
  const identity::Certificate forged = Resigned(leaf_.chain[0], impostor, [](X509*) {});
  const PeerVerification v = Verify(forged);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.reason, FailureReason::kUnknownCa) << v.detail;
}

TEST_F(PeerVerifierTest, VerifierKeepsItsBundleAndDenyList) {
  const std::unique_ptr<PeerVerifier> verifier = Verifier(DenyList::Create({"ff"}, {}).value());
  EXPECT_TRUE(verifier->bundle().Contains(root_.cert));
  EXPECT_TRUE(verifier->deny_list().IsSerialDenied("ff"));
}

}  // namespace
}  // namespace trellis::tls
