// Differential fuzz target for //common/identity:csr's hand-written DER parser.
//
// ParseCsrDer reads PKCS#10 requests with its own strict DER reader (common/identity/der.h) and
// checks the signature with ECDSA directly. This target holds it against OpenSSL's (or BoringSSL's)
// own CSR parser as the reference, on the same bytes:
//  - whatever ParseCsrDer accepts, the reference parses too (the whole input), with a signature
//    that verifies (X509_REQ_verify), the same public key, the same curve and the same URI SANs:
//    being hand-written never makes it accept more, or read something else;
//  - where the reference parses a request and verifies its signature, ParseCsrDer never refuses
//    it for its signature or for its point (it may refuse it for being outside what Trellis
//    accepts: non-DER, other curves or algorithms, malformed or duplicate extensions ...);
//  - refusals are InvalidArgument starting with "CSR ", and the OpenSSL error queue is empty.
// A mutated request rarely keeps a valid signature, so the accept-side comparison runs mostly on
// the seeds, which are real signed requests at each edge; mutations exercise every refusal path
// (memory safety, messages). What the parser does not read (subject, other attributes, SAN names
// other than URIs) it still holds to plain string types and the SAN name types it accepts, so as
// not to accept what the reference's parser refuses.
// Seeds: corpus/csr_der/, made by corpus/make_csr_der_seeds.py (plus copies of corpus/csr/).

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/crypto/handles.h"
#include "common/identity/csr.h"
#include "common/identity/private_key.h"

namespace {

using ::trellis::identity::KeyAlgorithm;
using ::trellis::identity::KeyAlgorithmOf;
using ::trellis::identity::ParseCsrDer;
using ::trellis::identity::ParsedCsr;
namespace crypto = ::trellis::crypto;

#define FUZZ_CHECK(condition)                                                            \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

// What the reference library makes of the input.
struct Reference {
  bool parsed = false;    // d2i_X509_REQ read exactly the whole input
  bool verified = false;  // and the signature verifies with the request's own key
  crypto::UniquePtr<EVP_PKEY> key;
  std::vector<std::string> uris;
};

Reference ParseWithReference(absl::string_view input) {
  Reference ref;
  const auto* p = reinterpret_cast<const unsigned char*>(input.data());
  const unsigned char* const end = p + input.size();
  crypto::UniquePtr<X509_REQ> req(
      d2i_X509_REQ(nullptr, &p, static_cast<long>(input.size())));  // NOLINT
  if (req == nullptr || p != end) return ref;
  ref.parsed = true;
  ref.key.reset(X509_REQ_get_pubkey(req.get()));
  if (ref.key == nullptr) return ref;
  ref.verified = X509_REQ_verify(req.get(), ref.key.get()) == 1;
  crypto::X509ExtensionStack extensions(X509_REQ_get_extensions(req.get()));
  if (extensions == nullptr) return ref;
  for (size_t i = 0; i < sk_X509_EXTENSION_num(extensions.get()); ++i) {
    X509_EXTENSION* ext = sk_X509_EXTENSION_value(extensions.get(), i);
    if (OBJ_obj2nid(X509_EXTENSION_get_object(ext)) != NID_subject_alt_name) continue;
    crypto::UniquePtr<GENERAL_NAMES> names(static_cast<GENERAL_NAMES*>(X509V3_EXT_d2i(ext)));
    if (names == nullptr) continue;
    for (size_t j = 0; j < sk_GENERAL_NAME_num(names.get()); ++j) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), j);
      if (name->type != GEN_URI) continue;
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      ref.uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                            static_cast<size_t>(ASN1_STRING_length(uri)));
    }
  }
  return ref;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  ERR_clear_error();
  absl::StatusOr<ParsedCsr> ours = ParseCsrDer(input);
  FUZZ_CHECK(ERR_peek_error() == 0);
  Reference ref = ParseWithReference(input);
  ERR_clear_error();

  if (ours.ok()) {
    FUZZ_CHECK(ref.parsed);
    FUZZ_CHECK(ref.verified);
    FUZZ_CHECK(EVP_PKEY_cmp(ours->public_key.get(), ref.key.get()) == 1);
    FUZZ_CHECK(KeyAlgorithmOf(ref.key.get()) == ours->algorithm);
    FUZZ_CHECK(ours->requested_uri_sans == ref.uris);
  } else {
    FUZZ_CHECK(ours.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(absl::StartsWith(ours.status().message(), "CSR "));
    if (ref.parsed && ref.verified) {
      const KeyAlgorithm algorithm = KeyAlgorithmOf(ref.key.get());
      if (algorithm == KeyAlgorithm::kEcdsaP256 || algorithm == KeyAlgorithm::kEcdsaP384) {
        FUZZ_CHECK(!absl::StrContains(ours.status().message(), "signature does not verify"));
        FUZZ_CHECK(!absl::StrContains(ours.status().message(), "not a point on"));
      }
    }
  }
  ERR_clear_error();
  return 0;
}
