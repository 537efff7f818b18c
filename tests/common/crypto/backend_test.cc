// Checks that the build links the TLS backend it claims to: OpenSSL 3 by default, BoringSSL under
// --config=boringssl. Without this, a broken include path could silently test OpenSSL twice.
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <string>

#include "common/crypto/openssl_error.h"
#include "gtest/gtest.h"

namespace trellis::crypto {
namespace {

TEST(BackendTest, HeadersAndLibraryAreTheConfiguredBackend) {
  const std::string version = OpenSSL_version(OPENSSL_VERSION);
#ifdef TRELLIS_TLS_BACKEND_BORINGSSL
#ifndef OPENSSL_IS_BORINGSSL
  FAIL() << "built with --config=boringssl but the headers are not BoringSSL's";
#endif
  EXPECT_NE(version.find("BoringSSL"), std::string::npos) << version;
#else
#ifdef OPENSSL_IS_BORINGSSL
  FAIL() << "default build picked up BoringSSL headers";
#endif
  EXPECT_EQ(version.rfind("OpenSSL 3.", 0), 0u) << version;
#endif
}

TEST(OpenSslErrorTest, CarriesQueuedReasonsAndClearsTheQueue) {
  // Provoke a real error: parsing garbage as a certificate queues a reason.
  const unsigned char garbage[] = {0x30, 0x03, 0x02, 0x01};
  const unsigned char* p = garbage;
  ASSERT_EQ(d2i_X509(nullptr, &p, sizeof(garbage)), nullptr);
  ASSERT_NE(ERR_peek_error(), 0u);
  const absl::Status status = OpenSslError(absl::StatusCode::kInvalidArgument, "cannot do X");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind("cannot do X (", 0), 0u) << status;
  EXPECT_EQ(ERR_peek_error(), 0u);
  // With nothing queued the message is just the description.
  EXPECT_EQ(OpenSslInternalError("plain").message(), "plain");
}

}  // namespace
}  // namespace trellis::crypto
