#include "control-plane/ca/signer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace trellis::control_plane::ca {
namespace {

std::string RangeText(const LocalSignerOptions& options) {
  return absl::StrCat("[", absl::FormatDuration(options.min_ttl), ", ",
                      absl::FormatDuration(options.max_ttl), "]");
}

std::vector<std::string> ToDerList(const std::vector<identity::Certificate>& certs) {
  std::vector<std::string> out;
  out.reserve(certs.size());
  for (const identity::Certificate& cert : certs) out.push_back(cert.ToDer());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalSigner>> LocalSigner::Create(CaFiles ca,
                                                                 LocalSignerOptions options) {
  if (!options.clock) options.clock = [] { return absl::Now(); };
  if (options.min_ttl < kMinLeafTtl) {
    return absl::InvalidArgumentError(
        absl::StrCat("minimum TTL ", absl::FormatDuration(options.min_ttl), " is below ",
                     absl::FormatDuration(kMinLeafTtl)));
  }
  if (options.max_ttl > kMaxLeafTtl) {
    return absl::InvalidArgumentError(
        absl::StrCat("maximum TTL ", absl::FormatDuration(options.max_ttl), " is above ",
                     absl::FormatDuration(kMaxLeafTtl)));
  }
  if (options.min_ttl > options.max_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("minimum TTL ", absl::FormatDuration(options.min_ttl),
                     " is above maximum TTL ", absl::FormatDuration(options.max_ttl)));
  }
  if (options.default_ttl < options.min_ttl || options.default_ttl > options.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat("default TTL ",
                                                   absl::FormatDuration(options.default_ttl),
                                                   " is outside ", RangeText(options)));
  }
  if (options.backdate < absl::ZeroDuration() || options.backdate > kMaxBackdate) {
    return absl::InvalidArgumentError(
        absl::StrCat("backdate ", absl::FormatDuration(options.backdate), " is outside [0, ",
                     absl::FormatDuration(kMaxBackdate), "]"));
  }
  if (absl::Status s = ValidateCa(ca, options.clock()); !s.ok()) return s;
  absl::StatusOr<identity::LeafIssuer> issuer = identity::LeafIssuer::Create(ca.cert, *ca.key);
  if (!issuer.ok()) return issuer.status();

  std::vector<identity::Certificate> tail;
  if (!ca.roots.Contains(ca.cert)) tail.push_back(ca.cert);
  tail.insert(tail.end(), ca.chain.begin(), ca.chain.end());
  absl::Time not_after = ca.cert.not_after();
  for (const identity::Certificate& cert : ca.chain) {
    not_after = std::min(not_after, cert.not_after());
  }
  return std::unique_ptr<LocalSigner>(new LocalSigner(
      std::move(ca), std::move(options), *std::move(issuer), std::move(tail), not_after));
}

LocalSigner::LocalSigner(CaFiles ca, LocalSignerOptions options, identity::LeafIssuer issuer,
                         std::vector<identity::Certificate> tail, absl::Time chain_not_after)
    : ca_(std::move(ca)),
      issuer_(std::move(issuer)),
      options_(std::move(options)),
      chain_tail_(std::move(tail)),
      chain_tail_der_(ToDerList(chain_tail_)),
      trust_bundle_der_(ca_.roots.ToDer()),
      chain_not_after_(chain_not_after) {}

absl::StatusOr<std::vector<identity::Certificate>> LocalSigner::SignLeaf(
    EVP_PKEY* public_key, const identity::SpiffeId& id, absl::Duration ttl,
    const std::vector<std::string>& dns_names) {
  if (public_key == nullptr) return absl::InvalidArgumentError("no public key to certify");
  if (ttl == absl::ZeroDuration()) ttl = options_.default_ttl;
  if (ttl < options_.min_ttl || ttl > options_.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "requested TTL ", absl::FormatDuration(ttl), " is outside the allowed range ",
        RangeText(options_), "; ask for a TTL in that range, or none for the default of ",
        absl::FormatDuration(options_.default_ttl)));
  }
  const absl::Time now = options_.clock();
  if (now >= chain_not_after_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the signing CA (or its chain) expired at ",
                     absl::FormatTime(chain_not_after_, absl::UTCTimeZone()),
                     "; rotate the CA (trellisctl ca rotate)"));
  }
  identity::LeafCertificateSpec spec{
      id,
      std::max(now - options_.backdate, ca_.cert.not_before()),
      std::min(now + ttl, chain_not_after_),
      dns_names,
  };
  absl::StatusOr<identity::Certificate> leaf = issuer_.Issue(public_key, spec);
  if (!leaf.ok()) return leaf.status();
  std::vector<identity::Certificate> chain;
  chain.reserve(1 + chain_tail_.size());
  chain.push_back(*std::move(leaf));
  chain.insert(chain.end(), chain_tail_.begin(), chain_tail_.end());
  return chain;
}

}  // namespace trellis::control_plane::ca
