#include "common/identity/certificate.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/openssl_error.h"

namespace trellis::identity {
namespace {

std::string BioToString(BIO* bio) {
  char* data = nullptr;                           // BoringSSL takes char**; OpenSSL accepts either.
  const long len = BIO_get_mem_data(bio, &data);  // NOLINT(runtime/int)
  return std::string(data, len > 0 ? static_cast<size_t>(len) : 0);
}

std::string NameToString(const X509_NAME* name) {
  crypto::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || name == nullptr) return "";
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  return BioToString(bio.get());
}

// Collects the SANs of one GENERAL_NAME type as strings.
std::vector<std::string> SansOfType(X509* cert, int type) {
  std::vector<std::string> out;
  crypto::UniquePtr<GENERAL_NAMES> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (names == nullptr) return out;
  for (size_t i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != type) continue;
    const ASN1_IA5STRING* value =
        type == GEN_URI ? name->d.uniformResourceIdentifier : name->d.dNSName;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     static_cast<size_t>(ASN1_STRING_length(value)));
  }
  return out;
}

}  // namespace

absl::Time Asn1TimeToAbsl(const ASN1_TIME* time) {
  // ASN1_TIME_diff is the one conversion both OpenSSL 3 and BoringSSL offer.
  crypto::UniquePtr<ASN1_TIME> epoch(ASN1_TIME_set(nullptr, 0));
  int days = 0;
  int seconds = 0;
  if (epoch == nullptr || time == nullptr ||
      ASN1_TIME_diff(&days, &seconds, epoch.get(), time) != 1) {
    return absl::InfinitePast();
  }
  return absl::FromUnixSeconds(static_cast<int64_t>(days) * 86400 + seconds);
}

absl::StatusOr<Certificate> Certificate::FromDer(absl::string_view der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  const unsigned char* const end = p + der.size();
  crypto::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (cert == nullptr) {
    return crypto::OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("not a DER X.509 certificate (", der.size(), " bytes)"));
  }
  if (p != end) {
    return absl::InvalidArgumentError(
        absl::StrCat("DER certificate followed by ", end - p, " unexpected bytes"));
  }
  return Certificate(std::move(cert));
}

absl::StatusOr<Certificate> Certificate::FromPem(absl::string_view pem) {
  crypto::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return crypto::OpenSslInternalError("cannot allocate a memory BIO");
  crypto::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return crypto::OpenSslError(absl::StatusCode::kInvalidArgument,
                                "no PEM CERTIFICATE block could be parsed");
  }
  return Certificate(std::move(cert));
}

Certificate Certificate::FromX509(X509* cert) { return Certificate(crypto::UpRef(cert)); }

std::string Certificate::ToDer() const {
  uint8_t* der = nullptr;
  const int len = i2d_X509(cert_.get(), &der);
  if (len <= 0) return "";
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string Certificate::ToPem() const {
  crypto::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert_.get()) != 1) return "";
  return BioToString(bio.get());
}

absl::Time Certificate::not_before() const {
  return Asn1TimeToAbsl(X509_get0_notBefore(cert_.get()));
}

absl::Time Certificate::not_after() const {
  return Asn1TimeToAbsl(X509_get0_notAfter(cert_.get()));
}

std::string Certificate::serial_hex() const {
  crypto::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get_serialNumber(cert_.get()), nullptr));
  if (bn == nullptr) return "";
  if (BN_is_zero(bn.get())) return "0";
  char* hex = BN_bn2hex(bn.get());
  if (hex == nullptr) return "";
  std::string out = absl::AsciiStrToLower(hex);
  OPENSSL_free(hex);
  // BN_bn2hex pads to whole bytes; the canonical form has no leading zeros.
  const size_t first = out.find_first_not_of('0');
  return first == std::string::npos ? "0" : out.substr(first);
}

std::string Certificate::subject() const {
  return NameToString(X509_get_subject_name(cert_.get()));
}

std::string Certificate::issuer() const { return NameToString(X509_get_issuer_name(cert_.get())); }

bool Certificate::is_ca() const { return X509_check_ca(cert_.get()) >= 1; }

std::vector<std::string> Certificate::uri_sans() const { return SansOfType(cert_.get(), GEN_URI); }

std::vector<std::string> Certificate::dns_sans() const { return SansOfType(cert_.get(), GEN_DNS); }

absl::StatusOr<SpiffeId> Certificate::GetSpiffeId() const { return SpiffeIdOf(cert_.get()); }

std::string Certificate::sha256_hex() const {
  const std::string der = ToDer();
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(der.data()), der.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

bool Certificate::operator==(const Certificate& other) const {
  return X509_cmp(cert_.get(), other.cert_.get()) == 0;
}

absl::StatusOr<SpiffeId> SpiffeIdOf(X509* cert) {
  const std::vector<std::string> uris = SansOfType(cert, GEN_URI);
  if (uris.empty()) {
    return absl::InvalidArgumentError(
        "certificate has no URI SAN, so it carries no SPIFFE ID (the subject CN is never used "
        "as an identity)");
  }
  if (uris.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "certificate has ", uris.size(), " URI SANs; an X.509-SVID must have exactly one (found \"",
        uris[0], "\", \"", uris[1], "\")"));
  }
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(uris[0]);
  if (!id.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("certificate's URI SAN is not a valid SPIFFE ID: ", id.status().message()));
  }
  return id;
}

absl::StatusOr<std::vector<Certificate>> ParsePemChain(absl::string_view pem) {
  crypto::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return crypto::OpenSslInternalError("cannot allocate a memory BIO");
  std::vector<Certificate> chain;
  while (true) {
    crypto::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    chain.push_back(Certificate::FromX509(cert.get()));
  }
  // Reaching the end of the input leaves a "no start line" error; anything else is a bad block.
  const unsigned long err = ERR_peek_last_error();  // NOLINT(runtime/int)
  const bool clean_end =
      ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
  if (err != 0 && !clean_end) {
    return crypto::OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("PEM certificate block ", chain.size() + 1, " does not parse"));
  }
  crypto::ClearOpenSslErrors();
  if (chain.empty()) {
    return absl::InvalidArgumentError(
        "no certificate found: expected one or more \"-----BEGIN CERTIFICATE-----\" blocks");
  }
  return chain;
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open \"", path, "\": ", std::strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read \"", path, "\""));
  return contents.str();
}

absl::StatusOr<std::vector<Certificate>> LoadPemChainFile(const std::string& path) {
  absl::StatusOr<std::string> pem = ReadFileToString(path);
  if (!pem.ok()) return pem.status();
  absl::StatusOr<std::vector<Certificate>> chain = ParsePemChain(*pem);
  if (!chain.ok()) {
    return absl::Status(chain.status().code(),
                        absl::StrCat("\"", path, "\": ", chain.status().message()));
  }
  return chain;
}

std::string ToPemChain(const std::vector<Certificate>& certs) {
  std::string out;
  for (const Certificate& cert : certs) out += cert.ToPem();
  return out;
}

}  // namespace trellis::identity
