#include "common/tls/peer_verifier.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/crypto/openssl_error.h"
#include "common/identity/certificate.h"

namespace trellis::tls {
namespace {

PeerVerification Fail(PeerVerification result, FailureReason reason, std::string detail) {
  result.reason = reason;
  result.detail = std::move(detail);
  return result;
}

// Maps an X509_V_ERR_* code to our reasons.
FailureReason ReasonForChainError(int error) {
  switch (error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return FailureReason::kExpired;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return FailureReason::kNotYetValid;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CERT_UNTRUSTED:
      return FailureReason::kUnknownCa;
    default:
      return FailureReason::kMalformedCertificate;
  }
}

std::string DescribeCert(X509* cert) {
  if (cert == nullptr) return "certificate";
  identity::Certificate c = identity::Certificate::FromX509(cert);
  absl::StatusOr<identity::SpiffeId> id = c.GetSpiffeId();
  return absl::StrCat(id.ok() ? id->ToString() : c.subject(), " (serial ", c.serial_hex(), ")");
}

}  // namespace

absl::StatusOr<std::unique_ptr<PeerVerifier>> PeerVerifier::Create(identity::TrustBundle bundle,
                                                                   DenyList deny_list) {
  absl::StatusOr<crypto::UniquePtr<X509_STORE>> store = bundle.NewX509Store();
  if (!store.ok()) return store.status();
  return std::unique_ptr<PeerVerifier>(
      new PeerVerifier(std::move(bundle), std::move(deny_list), *std::move(store)));
}

PeerVerification PeerVerifier::Verify(X509* leaf, STACK_OF(X509) * intermediates, PeerRole role,
                                      absl::Time now,
                                      const std::vector<identity::SpiffeIdPattern>& allowed) const {
  PeerVerification result;
  if (leaf == nullptr) {
    return Fail(std::move(result), FailureReason::kNoPeerCertificate,
                "the peer presented no certificate");
  }
  identity::Certificate leaf_cert = identity::Certificate::FromX509(leaf);
  result.peer_serial_hex = leaf_cert.serial_hex();
  // Known before chain checks so that a refusal can still name who it refused.
  absl::StatusOr<identity::SpiffeId> id = leaf_cert.GetSpiffeId();
  if (id.ok()) result.peer_id = *id;

  crypto::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (ctx == nullptr || X509_STORE_CTX_init(ctx.get(), store_.get(), leaf, intermediates) != 1) {
    crypto::ClearOpenSslErrors();
    return Fail(std::move(result), FailureReason::kMalformedCertificate,
                "cannot set up chain verification");
  }
  X509_STORE_CTX_set_time(ctx.get(), 0, absl::ToTimeT(now));
  X509_STORE_CTX_set_purpose(
      ctx.get(), role == PeerRole::kClient ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(ctx.get());
    const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    X509* bad = X509_STORE_CTX_get_current_cert(ctx.get());
    std::string detail = absl::StrCat(X509_verify_cert_error_string(error), " at depth ", depth,
                                      ": ", DescribeCert(bad));
    if (error == X509_V_ERR_CERT_HAS_EXPIRED && bad != nullptr) {
      absl::StrAppend(&detail, ", notAfter ",
                      absl::FormatTime(identity::Certificate::FromX509(bad).not_after()));
    } else if (error == X509_V_ERR_CERT_NOT_YET_VALID && bad != nullptr) {
      absl::StrAppend(&detail, ", notBefore ",
                      absl::FormatTime(identity::Certificate::FromX509(bad).not_before()));
    }
    crypto::ClearOpenSslErrors();
    return Fail(std::move(result), ReasonForChainError(error), std::move(detail));
  }

  if (!id.ok()) {
    return Fail(std::move(result), FailureReason::kMalformedCertificate,
                std::string(id.status().message()));
  }
  if (leaf_cert.is_ca()) {
    return Fail(std::move(result), FailureReason::kMalformedCertificate,
                "the peer's leaf certificate is a CA certificate");
  }
  if (deny_list_.IsSerialDenied(result.peer_serial_hex)) {
    return Fail(std::move(result), FailureReason::kRevoked,
                absl::StrCat("serial ", result.peer_serial_hex, " of ", id->ToString(),
                             " is on the deny-list"));
  }
  if (deny_list_.IsIdentityDenied(*id)) {
    return Fail(std::move(result), FailureReason::kRevoked,
                absl::StrCat("identity ", id->ToString(), " is on the deny-list"));
  }
  for (const identity::SpiffeIdPattern& pattern : allowed) {
    if (pattern.Matches(*id)) return result;
  }
  std::vector<std::string> patterns;
  for (const identity::SpiffeIdPattern& pattern : allowed) patterns.push_back(pattern.ToString());
  return Fail(std::move(result), FailureReason::kIdentityNotAllowed,
              absl::StrCat(id->ToString(), " is not allowed; allowed: ",
                           patterns.empty() ? "(nobody)" : absl::StrJoin(patterns, ", ")));
}

}  // namespace trellis::tls
