// TrustBundle: which certificates may be roots, the PEM and DER forms it travels in, and the
// X509_STORE it builds for chain verification.
#include "common/identity/trust_bundle.h"

#include <openssl/x509.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/common/testing/test_pki.h"

namespace trellis::identity {
namespace {

using testing::MakeLeaf;
using testing::MakeLeafWithUris;
using testing::MakeRoot;

constexpr char kId[] = "spiffe://cluster.local/ns/shop/sa/checkout";

// X509_verify_cert's verdict on `leaf` against `store` (X509_V_OK on success).
int VerifyWith(X509_STORE* store, const Certificate& leaf,
               const std::vector<Certificate>& untrusted = {}) {
  crypto::X509Stack chain(sk_X509_new_null());
  for (const Certificate& cert : untrusted) {
    sk_X509_push(chain.get(), crypto::UpRef(cert.get()).release());
  }
  crypto::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  EXPECT_EQ(X509_STORE_CTX_init(ctx.get(), store, leaf.get(), chain.get()), 1);
  if (X509_verify_cert(ctx.get()) == 1) return X509_V_OK;
  const int error = X509_STORE_CTX_get_error(ctx.get());
  return error == X509_V_OK ? -1 : error;
}

class TrustBundleTest : public ::testing::Test {
 protected:
  testing::TestCa root_ = MakeRoot("Bundle Root");
  testing::TestCa other_ = MakeRoot("Other Root");
};

TEST_F(TrustBundleTest, CreateKeepsRootsInOrder) {
  absl::StatusOr<TrustBundle> bundle = TrustBundle::Create({root_.cert, other_.cert});
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ(bundle->roots(), (std::vector<Certificate>{root_.cert, other_.cert}));
}

TEST_F(TrustBundleTest, CreateRefusesEmpty) {
  absl::StatusOr<TrustBundle> bundle = TrustBundle::Create({});
  ASSERT_FALSE(bundle.ok());
  EXPECT_EQ(bundle.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bundle.status().message().find("empty"), std::string::npos) << bundle.status();
}

TEST_F(TrustBundleTest, CreateRefusesNonCaAndNamesIt) {
  // This leaf's subject is "CN=spiffe://example.org/cn".
  const Certificate leaf = MakeLeafWithUris(root_, {kId}).chain[0];
  ASSERT_FALSE(leaf.is_ca());
  absl::StatusOr<TrustBundle> bundle = TrustBundle::Create({root_.cert, leaf});
  ASSERT_FALSE(bundle.ok());
  EXPECT_EQ(bundle.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(bundle.status().message());
  EXPECT_NE(message.find(leaf.subject()), std::string::npos) << message;
  EXPECT_NE(message.find("spiffe://example.org/cn"), std::string::npos) << message;
  EXPECT_NE(message.find(leaf.serial_hex()), std::string::npos) << message;
  EXPECT_NE(message.find("not a CA"), std::string::npos) << message;
}

TEST_F(TrustBundleTest, CreateDropsDuplicates) {
  const Certificate copy = Certificate::FromDer(root_.cert.ToDer()).value();
  absl::StatusOr<TrustBundle> bundle =
      TrustBundle::Create({root_.cert, other_.cert, copy, root_.cert, other_.cert});
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ(bundle->roots(), (std::vector<Certificate>{root_.cert, other_.cert}));
}

TEST_F(TrustBundleTest, PemRoundTrip) {
  const TrustBundle bundle = TrustBundle::Create({root_.cert, other_.cert}).value();
  const std::string pem = bundle.ToPem();
  EXPECT_EQ(pem, root_.cert.ToPem() + other_.cert.ToPem());
  absl::StatusOr<TrustBundle> parsed = TrustBundle::FromPem(pem);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->roots(), bundle.roots());
  EXPECT_EQ(parsed->ToPem(), pem);
}

TEST_F(TrustBundleTest, FromPemRefusesNoCertificatesAndNonCa) {
  absl::StatusOr<TrustBundle> none = TrustBundle::FromPem("# empty bundle\n");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(none.status().message().rfind("trust bundle: ", 0), 0u) << none.status();
  EXPECT_NE(none.status().message().find("no certificate found"), std::string::npos)
      << none.status();

  const Certificate leaf = MakeLeaf(root_, kId).chain[0];
  absl::StatusOr<TrustBundle> with_leaf = TrustBundle::FromPem(root_.cert.ToPem() + leaf.ToPem());
  ASSERT_FALSE(with_leaf.ok());
  EXPECT_NE(with_leaf.status().message().find(leaf.serial_hex()), std::string::npos)
      << with_leaf.status();
}

TEST_F(TrustBundleTest, DerRoundTrip) {
  const TrustBundle bundle = TrustBundle::Create({root_.cert, other_.cert}).value();
  const std::vector<std::string> der = bundle.ToDer();
  EXPECT_EQ(der, (std::vector<std::string>{root_.cert.ToDer(), other_.cert.ToDer()}));
  absl::StatusOr<TrustBundle> parsed = TrustBundle::FromDer(der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->roots(), bundle.roots());
}

TEST_F(TrustBundleTest, FromDerNamesTheBadEntry) {
  absl::StatusOr<TrustBundle> bad = TrustBundle::FromDer({root_.cert.ToDer(), "not DER"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("trust bundle entry 1"), std::string::npos) << bad.status();
  EXPECT_FALSE(TrustBundle::FromDer({}).ok());
}

TEST_F(TrustBundleTest, Contains) {
  const TrustBundle bundle = TrustBundle::Create({root_.cert}).value();
  EXPECT_TRUE(bundle.Contains(root_.cert));
  EXPECT_TRUE(bundle.Contains(Certificate::FromPem(root_.cert.ToPem()).value()));
  EXPECT_FALSE(bundle.Contains(other_.cert));
  EXPECT_FALSE(bundle.Contains(MakeLeaf(root_, kId).chain[0]));
}

TEST_F(TrustBundleTest, StoreVerifiesLeavesOfItsRootsOnly) {
  const TrustBundle bundle = TrustBundle::Create({root_.cert}).value();
  absl::StatusOr<crypto::UniquePtr<X509_STORE>> store = bundle.NewX509Store();
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_NE(*store, nullptr);

  EXPECT_EQ(VerifyWith(store->get(), MakeLeaf(root_, kId).chain[0]), X509_V_OK);
  EXPECT_EQ(VerifyWith(store->get(), MakeLeaf(other_, kId).chain[0]),
            X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);

  // Through an intermediate: only when the intermediate is supplied.
  testing::TestCa intermediate = testing::MakeIntermediate(root_);
  const Certificate leaf = MakeLeaf(intermediate, kId).chain[0];
  EXPECT_EQ(VerifyWith(store->get(), leaf, {intermediate.cert}), X509_V_OK);
  EXPECT_NE(VerifyWith(store->get(), leaf), X509_V_OK);
}

TEST_F(TrustBundleTest, StoreOfARotationBundleTrustsBothRoots) {
  const TrustBundle bundle = TrustBundle::Create({root_.cert, other_.cert}).value();
  crypto::UniquePtr<X509_STORE> store = bundle.NewX509Store().value();
  EXPECT_EQ(VerifyWith(store.get(), MakeLeaf(root_, kId).chain[0]), X509_V_OK);
  EXPECT_EQ(VerifyWith(store.get(), MakeLeaf(other_, kId).chain[0]), X509_V_OK);
  testing::TestCa third = MakeRoot("Third Root");
  EXPECT_NE(VerifyWith(store.get(), MakeLeaf(third, kId).chain[0]), X509_V_OK);
}

TEST_F(TrustBundleTest, StoreIsStrictAndEachCallIsIndependent) {
  const TrustBundle bundle = TrustBundle::Create({root_.cert}).value();
  crypto::UniquePtr<X509_STORE> a = bundle.NewX509Store().value();
  crypto::UniquePtr<X509_STORE> b = bundle.NewX509Store().value();
  EXPECT_NE(a.get(), b.get());
  // OpenSSL checks strictly only when asked; BoringSSL always does and defines the flag as 0.
  const unsigned long flags =  // NOLINT(runtime/int): OpenSSL's type.
      X509_VERIFY_PARAM_get_flags(X509_STORE_get0_param(a.get()));
  EXPECT_EQ(flags & X509_V_FLAG_X509_STRICT,
            static_cast<unsigned long>(X509_V_FLAG_X509_STRICT));  // NOLINT
  // Freeing one store leaves the other (and the bundle's certificates) usable.
  a.reset();
  EXPECT_EQ(VerifyWith(b.get(), MakeLeaf(root_, kId).chain[0]), X509_V_OK);
  EXPECT_TRUE(bundle.Contains(root_.cert));
}

}  // namespace
}  // namespace trellis::identity
