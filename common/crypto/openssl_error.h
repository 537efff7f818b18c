#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace trellis::crypto {

// Returns a status with `code` whose message is `what` followed by the reasons OpenSSL queued on
// this thread, and clears that queue so a later failure does not report stale reasons.
absl::Status OpenSslError(absl::StatusCode code, absl::string_view what);

// Same as OpenSslError(absl::StatusCode::kInternal, what).
absl::Status OpenSslInternalError(absl::string_view what);

// Discards whatever OpenSSL queued on this thread.
void ClearOpenSslErrors();

}  // namespace trellis::crypto
