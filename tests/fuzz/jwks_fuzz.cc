// Fuzz target for //control-plane/auth:jwks.
//
// The whole input is parsed as a JWKS document and decoded as base64url. Besides memory safety
// (ASan/UBSan), it checks:
//  - errors are InvalidArgument with a short, printable message;
//  - a parsed set has at least one key, each with an OpenSSL key of its type, and Candidates
//    finds each key by its kid and by its type alone;
//  - parsing is deterministic (the same input gives the same keys);
//  - DecodeBase64Url accepts only the canonical encoding: re-encoding gives the input back.

#include <openssl/evp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "control-plane/auth/jwks.h"

namespace {

using ::trellis::control_plane::DecodeBase64Url;
using ::trellis::control_plane::Jwk;
using ::trellis::control_plane::JwksKeySet;
using ::trellis::control_plane::JwkType;

#define FUZZ_CHECK(condition)                                                            \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

bool Printable(absl::string_view s) {
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);

  absl::StatusOr<std::string> decoded = DecodeBase64Url(input);
  if (decoded.ok()) {
    FUZZ_CHECK(absl::WebSafeBase64Escape(*decoded) == input);
  } else {
    FUZZ_CHECK(decoded.status().code() == absl::StatusCode::kInvalidArgument);
  }

  absl::StatusOr<JwksKeySet> set = JwksKeySet::Parse(input);
  if (!set.ok()) {
    FUZZ_CHECK(set.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!set.status().message().empty());
    FUZZ_CHECK(set.status().message().size() <= 1200);
    FUZZ_CHECK(Printable(set.status().message()));
    return 0;
  }
  FUZZ_CHECK(size <= trellis::control_plane::kMaxJwksSize);
  FUZZ_CHECK(!set->keys().empty());
  size_t rsa = 0;
  size_t ec = 0;
  for (const Jwk& key : set->keys()) {
    FUZZ_CHECK(key.public_key != nullptr);
    if (key.type == JwkType::kRsa) {
      ++rsa;
      FUZZ_CHECK(EVP_PKEY_id(key.public_key.get()) == EVP_PKEY_RSA);
      FUZZ_CHECK(EVP_PKEY_bits(key.public_key.get()) >= 2048);
    } else {
      ++ec;
      FUZZ_CHECK(EVP_PKEY_id(key.public_key.get()) == EVP_PKEY_EC);
      FUZZ_CHECK(EVP_PKEY_bits(key.public_key.get()) == 256);
    }
    bool found = false;
    for (const Jwk* candidate : set->Candidates(key.kid, key.type)) {
      FUZZ_CHECK(candidate->kid == key.kid && candidate->type == key.type);
      found = found || candidate == &key;
    }
    FUZZ_CHECK(found);
  }
  FUZZ_CHECK(set->Candidates(std::nullopt, JwkType::kRsa).size() == rsa);
  FUZZ_CHECK(set->Candidates(std::nullopt, JwkType::kEc).size() == ec);
  for (const std::string& reason : set->skipped_reasons()) FUZZ_CHECK(Printable(reason));

  absl::StatusOr<JwksKeySet> again = JwksKeySet::Parse(input);
  FUZZ_CHECK(again.ok() && again->keys().size() == set->keys().size() &&
             again->skipped_keys() == set->skipped_keys());
  for (size_t i = 0; i < set->keys().size(); ++i) {
    FUZZ_CHECK(EVP_PKEY_eq(again->keys()[i].public_key.get(), set->keys()[i].public_key.get()) ==
               1);
  }
  return 0;
}
