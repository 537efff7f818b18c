#include "common/tls/deny_list.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace trellis::tls {

absl::StatusOr<std::string> NormalizeSerialHex(absl::string_view text) {
  std::string hex;
  for (char c : text) {
    if (c == ':') continue;  // tolerate "3f:9a:..." as printed by openssl x509
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "serial \"", text, "\" is not hexadecimal (expected e.g. 3f9a01c2, as /certs shows)"));
    }
    hex.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  if (hex.empty()) return absl::InvalidArgumentError("serial is empty");
  const size_t first = hex.find_first_not_of('0');
  return first == std::string::npos ? std::string("0") : hex.substr(first);
}

absl::StatusOr<DenyList> DenyList::Create(const std::vector<std::string>& serials_hex,
                                          const std::vector<std::string>& spiffe_ids) {
  DenyList list;
  for (const std::string& serial : serials_hex) {
    absl::StatusOr<std::string> normalized = NormalizeSerialHex(serial);
    if (!normalized.ok()) return normalized.status();
    list.serials_.insert(*std::move(normalized));
  }
  for (const std::string& text : spiffe_ids) {
    absl::StatusOr<identity::SpiffeId> id = identity::SpiffeId::Parse(text);
    if (!id.ok()) return id.status();
    list.ids_.insert(id->ToString());
  }
  return list;
}

absl::StatusOr<DenyList> DenyList::Parse(absl::string_view text) {
  std::vector<std::string> serials;
  std::vector<std::string> ids;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    absl::Status status;
    if (absl::ConsumePrefix(&line, "serial:")) {
      absl::StatusOr<std::string> serial = NormalizeSerialHex(absl::StripAsciiWhitespace(line));
      if (serial.ok()) {
        serials.push_back(*serial);
      } else {
        status = serial.status();
      }
    } else if (absl::StartsWith(line, "spiffe://")) {
      absl::StatusOr<identity::SpiffeId> id = identity::SpiffeId::Parse(line);
      if (id.ok()) {
        ids.push_back(id->ToString());
      } else {
        status = id.status();
      }
    } else {
      status =
          absl::InvalidArgumentError("expected \"serial:<hex>\" or a SPIFFE ID (spiffe://...)");
    }
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("deny-list line ", line_number, ": ", status.message()));
    }
  }
  return Create(serials, ids);
}

bool DenyList::IsSerialDenied(absl::string_view serial_hex) const {
  return serials_.contains(serial_hex);
}

bool DenyList::IsIdentityDenied(const identity::SpiffeId& id) const {
  return ids_.contains(id.ToString());
}

bool DenyList::IsDenied(absl::string_view serial_hex, const identity::SpiffeId& id) const {
  return IsSerialDenied(serial_hex) || IsIdentityDenied(id);
}

std::vector<std::string> DenyList::serials() const {
  std::vector<std::string> out(serials_.begin(), serials_.end());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> DenyList::spiffe_ids() const {
  std::vector<std::string> out(ids_.begin(), ids_.end());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace trellis::tls
