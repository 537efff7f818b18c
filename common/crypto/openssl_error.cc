#include "common/crypto/openssl_error.h"

#include <openssl/err.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace trellis::crypto {

absl::Status OpenSslError(absl::StatusCode code, absl::string_view what) {
  std::string message(what);
  bool first = true;
  while (unsigned long err = ERR_get_error()) {  // NOLINT(runtime/int): OpenSSL's type.
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    absl::StrAppend(&message, first ? " (" : "; ", buf);
    first = false;
  }
  if (!first) message.push_back(')');
  return absl::Status(code, message);
}

absl::Status OpenSslInternalError(absl::string_view what) {
  return OpenSslError(absl::StatusCode::kInternal, what);
}

void ClearOpenSslErrors() { ERR_clear_error(); }

}  // namespace trellis::crypto
