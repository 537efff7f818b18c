#include "common/identity/private_key.h"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/crypto/openssl_error.h"

namespace trellis::identity {
namespace {

absl::StatusOr<PrivateKey> GenerateEcdsa(int curve_nid) {
  crypto::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr));
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), curve_nid) != 1) {
    return crypto::OpenSslInternalError("cannot set up ECDSA key generation");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return crypto::OpenSslInternalError("ECDSA key generation failed");
  }
  return PrivateKey::FromEvpPkey(crypto::UniquePtr<EVP_PKEY>(raw));
}

}  // namespace

absl::string_view KeyAlgorithmName(KeyAlgorithm algorithm) {
  switch (algorithm) {
    case KeyAlgorithm::kEcdsaP256:
      return "ECDSA P-256";
    case KeyAlgorithm::kEcdsaP384:
      return "ECDSA P-384";
    case KeyAlgorithm::kEcdsaOtherCurve:
      return "ECDSA on an unsupported curve";
    case KeyAlgorithm::kRsa:
      return "RSA";
    case KeyAlgorithm::kOther:
      break;
  }
  return "an unsupported key type";
}

KeyAlgorithm KeyAlgorithmOf(const EVP_PKEY* key) {
  if (key == nullptr) return KeyAlgorithm::kOther;
  switch (EVP_PKEY_id(key)) {
    case EVP_PKEY_RSA:
      return KeyAlgorithm::kRsa;
    case EVP_PKEY_EC: {
      // EVP_PKEY_get0_EC_KEY is deprecated in OpenSSL 3 but is the one call both backends share.
      const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(const_cast<EVP_PKEY*>(key));
      const EC_GROUP* group = ec == nullptr ? nullptr : EC_KEY_get0_group(ec);
      const int nid = group == nullptr ? NID_undef : EC_GROUP_get_curve_name(group);
      if (nid == NID_X9_62_prime256v1) return KeyAlgorithm::kEcdsaP256;
      if (nid == NID_secp384r1) return KeyAlgorithm::kEcdsaP384;
      return KeyAlgorithm::kEcdsaOtherCurve;
    }
    default:
      return KeyAlgorithm::kOther;
  }
}

absl::StatusOr<PrivateKey> PrivateKey::GenerateEcdsaP256() {
  return GenerateEcdsa(NID_X9_62_prime256v1);
}

absl::StatusOr<PrivateKey> PrivateKey::GenerateEcdsaP384() { return GenerateEcdsa(NID_secp384r1); }

absl::StatusOr<PrivateKey> PrivateKey::FromPem(absl::string_view pem) {
  crypto::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return crypto::OpenSslInternalError("cannot allocate a memory BIO");
  crypto::UniquePtr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    // Deliberately no OpenSSL detail and no input: the input is secret.
    crypto::ClearOpenSslErrors();
    return absl::InvalidArgumentError(
        "not a PEM private key: expected an unencrypted \"PRIVATE KEY\" (PKCS#8) or "
        "\"EC PRIVATE KEY\" block");
  }
  return FromEvpPkey(std::move(key));
}

absl::StatusOr<PrivateKey> PrivateKey::FromEvpPkey(crypto::UniquePtr<EVP_PKEY> key) {
  if (key == nullptr) return absl::InvalidArgumentError("no key given");
  return PrivateKey(std::move(key));
}

absl::StatusOr<std::string> PrivateKey::ToPem() const {
  crypto::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PKCS8PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0,
                                                      nullptr, nullptr) != 1) {
    return crypto::OpenSslInternalError("cannot encode the private key as PEM");
  }
  char* data = nullptr;  // BoringSSL takes char**; OpenSSL accepts either.
  const long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<std::string> PrivateKey::PublicKeyDer() const {
  uint8_t* der = nullptr;
  const int len = i2d_PUBKEY(key_.get(), &der);
  if (len <= 0) return crypto::OpenSslInternalError("cannot encode the public key");
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace trellis::identity
