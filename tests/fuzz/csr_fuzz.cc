// Fuzz target for //common/identity:csr.
//
// The whole input is handed to ParseCsrDer, as the control plane does with a workload's request.
// Besides memory safety (ASan/UBSan), it checks:
//  - an accepted request has a public key, on P-256 or P-384 only, that agrees with `algorithm`
//    and re-encodes as a SubjectPublicKeyInfo; it is non-empty, within kMaxCsrBytes, and refused
//    once a byte is appended (trailing data is never ignored);
//  - a refusal is InvalidArgument with a short, printable message about the CSR;
//  - either way the OpenSSL error queue is left empty (stale reasons would leak into the next
//    error message on the thread), and a second parse gives the same verdict.
// Seeds: corpus/csr/, made by corpus/make_csr_seeds.sh.

#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/identity/csr.h"
#include "common/identity/private_key.h"

namespace {

using ::trellis::identity::KeyAlgorithm;
using ::trellis::identity::KeyAlgorithmOf;
using ::trellis::identity::kMaxCsrBytes;
using ::trellis::identity::ParseCsrDer;
using ::trellis::identity::ParsedCsr;

#define FUZZ_CHECK(condition)                                                            \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

void CheckRefusal(const absl::Status& status) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  const absl::string_view message = status.message();
  FUZZ_CHECK(absl::StartsWith(message, "CSR "));
  FUZZ_CHECK(message.size() < 200);
  // Printable only: binary input is never echoed into a message (nor is any other input, but
  // that cannot be told apart from a fixed sentence a fuzzer happened to type).
  for (char c : message) {
    FUZZ_CHECK(absl::ascii_isprint(static_cast<unsigned char>(c)));
  }
}

void CheckAccepted(const ParsedCsr& csr, absl::string_view input) {
  FUZZ_CHECK(!input.empty() && input.size() <= kMaxCsrBytes);
  FUZZ_CHECK(csr.public_key != nullptr);
  FUZZ_CHECK(csr.algorithm == KeyAlgorithm::kEcdsaP256 ||
             csr.algorithm == KeyAlgorithm::kEcdsaP384);
  FUZZ_CHECK(KeyAlgorithmOf(csr.public_key.get()) == csr.algorithm);
  FUZZ_CHECK(EVP_PKEY_id(csr.public_key.get()) == EVP_PKEY_EC);
  FUZZ_CHECK(EVP_PKEY_bits(csr.public_key.get()) ==
             (csr.algorithm == KeyAlgorithm::kEcdsaP256 ? 256 : 384));
  // The key is usable: it encodes as a SubjectPublicKeyInfo (as the CA will put it in a
  // certificate).
  uint8_t* spki = nullptr;
  const int spki_len = i2d_PUBKEY(csr.public_key.get(), &spki);
  FUZZ_CHECK(spki_len > 0);
  OPENSSL_free(spki);

  // Trailing bytes are refused, never ignored.
  std::string longer(input);
  longer.push_back('\0');
  absl::StatusOr<ParsedCsr> again = ParseCsrDer(longer);
  FUZZ_CHECK(!again.ok());
  FUZZ_CHECK(ERR_peek_error() == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  ERR_clear_error();

  absl::StatusOr<ParsedCsr> parsed = ParseCsrDer(input);
  FUZZ_CHECK(ERR_peek_error() == 0);
  if (parsed.ok()) {
    CheckAccepted(*parsed, input);
  } else {
    CheckRefusal(parsed.status());
  }

  // Deterministic: the same bytes get the same verdict and the same answer.
  absl::StatusOr<ParsedCsr> second = ParseCsrDer(input);
  FUZZ_CHECK(second.ok() == parsed.ok());
  if (parsed.ok()) {
    FUZZ_CHECK(second->algorithm == parsed->algorithm);
    FUZZ_CHECK(second->requested_uri_sans == parsed->requested_uri_sans);
    FUZZ_CHECK(EVP_PKEY_cmp(second->public_key.get(), parsed->public_key.get()) == 1);
  } else {
    FUZZ_CHECK(second.status() == parsed.status());
  }
  ERR_clear_error();
  return 0;
}
