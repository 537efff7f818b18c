// PrivateKey: generation on the supported curves, PEM round trips, refusals that never echo the
// (secret) input, and the public half.
#include "common/identity/private_key.h"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <string>

#include "gtest/gtest.h"

namespace trellis::identity {
namespace {

// Parses a DER SubjectPublicKeyInfo with the raw API, independently of PrivateKey.
crypto::UniquePtr<EVP_PKEY> ParsePublicKeyDer(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  crypto::UniquePtr<EVP_PKEY> key(
      d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) return nullptr;
  return key;
}

TEST(PrivateKeyTest, GeneratesP256) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok()) << key.status();
  ASSERT_NE(key->get(), nullptr);
  EXPECT_EQ(key->algorithm(), KeyAlgorithm::kEcdsaP256);
  EXPECT_EQ(EVP_PKEY_id(key->get()), EVP_PKEY_EC);
  EXPECT_EQ(EVP_PKEY_bits(key->get()), 256);
  EXPECT_EQ(KeyAlgorithmName(key->algorithm()), "ECDSA P-256");
}

TEST(PrivateKeyTest, GeneratesP384) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP384();
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->algorithm(), KeyAlgorithm::kEcdsaP384);
  EXPECT_EQ(EVP_PKEY_bits(key->get()), 384);
  EXPECT_EQ(KeyAlgorithmName(key->algorithm()), "ECDSA P-384");
}

TEST(PrivateKeyTest, ClassifiesRsaAndNull) {
  crypto::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr));
  ASSERT_NE(ctx, nullptr);
  ASSERT_EQ(EVP_PKEY_keygen_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048), 1);
  EVP_PKEY* raw = nullptr;
  ASSERT_EQ(EVP_PKEY_keygen(ctx.get(), &raw), 1);
  absl::StatusOr<PrivateKey> rsa = PrivateKey::FromEvpPkey(crypto::UniquePtr<EVP_PKEY>(raw));
  ASSERT_TRUE(rsa.ok()) << rsa.status();
  EXPECT_EQ(rsa->algorithm(), KeyAlgorithm::kRsa);
  EXPECT_EQ(KeyAlgorithmName(KeyAlgorithm::kRsa), "RSA");
  EXPECT_EQ(KeyAlgorithmOf(nullptr), KeyAlgorithm::kOther);
  EXPECT_FALSE(PrivateKey::FromEvpPkey(nullptr).ok());
}

TEST(PrivateKeyTest, PemRoundTripKeepsTheKey) {
  for (auto generate : {&PrivateKey::GenerateEcdsaP256, &PrivateKey::GenerateEcdsaP384}) {
    absl::StatusOr<PrivateKey> key = generate();
    ASSERT_TRUE(key.ok()) << key.status();
    absl::StatusOr<std::string> pem = key->ToPem();
    ASSERT_TRUE(pem.ok()) << pem.status();
    // Unencrypted PKCS#8, as documented.
    EXPECT_EQ(pem->rfind("-----BEGIN PRIVATE KEY-----\n", 0), 0u) << *pem;
    EXPECT_NE(pem->find("-----END PRIVATE KEY-----"), std::string::npos);

    absl::StatusOr<PrivateKey> parsed = PrivateKey::FromPem(*pem);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->algorithm(), key->algorithm());
    EXPECT_EQ(*parsed->PublicKeyDer(), *key->PublicKeyDer());
    // Same private scalar: the re-encoding is byte-identical.
    EXPECT_EQ(*parsed->ToPem(), *pem);
  }
}

TEST(PrivateKeyTest, FromPemAcceptsSec1EcPrivateKey) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok()) << key.status();
  crypto::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  // PEM_write_bio_ECPrivateKey writes the SEC1 "EC PRIVATE KEY" form.
  ASSERT_EQ(PEM_write_bio_ECPrivateKey(bio.get(), EVP_PKEY_get0_EC_KEY(key->get()), nullptr,
                                       nullptr, 0, nullptr, nullptr),
            1);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  const std::string sec1(data, static_cast<size_t>(len));
  ASSERT_EQ(sec1.rfind("-----BEGIN EC PRIVATE KEY-----", 0), 0u) << sec1;
  absl::StatusOr<PrivateKey> parsed = PrivateKey::FromPem(sec1);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed->PublicKeyDer(), *key->PublicKeyDer());
}

TEST(PrivateKeyTest, FromPemOnGarbageFailsWithoutEchoingTheInput) {
  const std::string secret_marker = "s3cr3t-M4RK3R";
  const std::string inputs[] = {
      "",
      secret_marker,
      "-----BEGIN PRIVATE KEY-----\n" + secret_marker + "AAAA\n-----END PRIVATE KEY-----\n",
      // A valid base64 body that is not a key.
      "-----BEGIN PRIVATE KEY-----\nczNjcjN0LU00UkszUg==\n-----END PRIVATE KEY-----\n",
      "-----BEGIN CERTIFICATE-----\nczNjcjN0LU00UkszUg==\n-----END CERTIFICATE-----\n",
  };
  for (const std::string& input : inputs) {
    absl::StatusOr<PrivateKey> key = PrivateKey::FromPem(input);
    ASSERT_FALSE(key.ok()) << input;
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(key.status().message());
    EXPECT_NE(message.find("not a PEM private key"), std::string::npos) << message;
    EXPECT_EQ(message.find(secret_marker), std::string::npos) << message;
    EXPECT_EQ(message.find("czNjcjN0"), std::string::npos) << message;
    EXPECT_EQ(message.find("AAAA"), std::string::npos) << message;
  }
}

TEST(PrivateKeyTest, FromPemOnTruncatedRealKeyDoesNotLeakKeyMaterial) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok()) << key.status();
  const std::string pem = *key->ToPem();
  // Cut the block in the middle of its body: the body must not show up in the error.
  const std::string truncated = pem.substr(0, pem.size() / 2);
  absl::StatusOr<PrivateKey> parsed = PrivateKey::FromPem(truncated);
  ASSERT_FALSE(parsed.ok());
  const std::string body_line = pem.substr(pem.find('\n') + 1, 20);
  EXPECT_EQ(parsed.status().message().find(body_line), std::string::npos) << parsed.status();
}

TEST(PrivateKeyTest, PublicKeyDerIsTheSubjectPublicKeyInfoAndDiffersBetweenKeys) {
  absl::StatusOr<PrivateKey> a = PrivateKey::GenerateEcdsaP256();
  absl::StatusOr<PrivateKey> b = PrivateKey::GenerateEcdsaP256();
  absl::StatusOr<PrivateKey> c = PrivateKey::GenerateEcdsaP384();
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  absl::StatusOr<std::string> der_a = a->PublicKeyDer();
  absl::StatusOr<std::string> der_b = b->PublicKeyDer();
  absl::StatusOr<std::string> der_c = c->PublicKeyDer();
  ASSERT_TRUE(der_a.ok() && der_b.ok() && der_c.ok());
  EXPECT_FALSE(der_a->empty());
  EXPECT_NE(*der_a, *der_b);
  EXPECT_NE(*der_a, *der_c);
  // Stable for one key.
  EXPECT_EQ(*a->PublicKeyDer(), *der_a);
  // An uncompressed P-256 SPKI is 91 bytes, P-384 is 120.
  EXPECT_EQ(der_a->size(), 91u);
  EXPECT_EQ(der_c->size(), 120u);

  crypto::UniquePtr<EVP_PKEY> pub = ParsePublicKeyDer(*der_a);
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(KeyAlgorithmOf(pub.get()), KeyAlgorithm::kEcdsaP256);
  // The public half really belongs to the private key: 1 means "parameters and key equal".
  EXPECT_EQ(EVP_PKEY_cmp(pub.get(), a->get()), 1);
  EXPECT_NE(EVP_PKEY_cmp(pub.get(), b->get()), 1);
}

TEST(PrivateKeyTest, MoveTransfersOwnership) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcdsaP256();
  ASSERT_TRUE(key.ok());
  EVP_PKEY* raw = key->get();
  PrivateKey moved = *std::move(key);
  EXPECT_EQ(moved.get(), raw);
  EXPECT_EQ(moved.algorithm(), KeyAlgorithm::kEcdsaP256);
}

}  // namespace
}  // namespace trellis::identity
