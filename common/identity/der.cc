#include "common/identity/der.h"

namespace trellis::identity::der {

bool Reader::PeekTag(uint8_t* tag) const {
  if (rest_.empty()) return false;
  *tag = static_cast<uint8_t>(rest_[0]);
  return true;
}

bool Reader::ReadAny(uint8_t* tag, absl::string_view* contents, absl::string_view* element) {
  const auto* p = reinterpret_cast<const uint8_t*>(rest_.data());
  const size_t n = rest_.size();
  if (n < 2) return false;
  // High tag numbers (low five bits all set) never occur in what we parse.
  if ((p[0] & 0x1f) == 0x1f) return false;
  size_t header = 2;
  size_t length = p[1];
  if (length & 0x80) {
    const size_t octets = length & 0x7f;
    // 0x80 is BER's indefinite length; more than 4 octets cannot describe an input we accept.
    if (octets == 0 || octets > 4 || n < 2 + octets) return false;
    if (p[2] == 0) return false;  // leading zero: not the shortest form
    length = 0;
    for (size_t i = 0; i < octets; ++i) length = (length << 8) | p[2 + i];
    if (length < 0x80) return false;  // fits the short form
    header += octets;
  }
  if (length > n - header) return false;
  *tag = p[0];
  *contents = rest_.substr(header, length);
  if (element != nullptr) *element = rest_.substr(0, header + length);
  rest_.remove_prefix(header + length);
  return true;
}

bool Reader::Read(uint8_t tag, absl::string_view* contents, absl::string_view* element) {
  uint8_t actual = 0;
  if (!PeekTag(&actual) || actual != tag) return false;
  return ReadAny(&actual, contents, element);
}

bool Reader::ReadOptional(uint8_t tag, absl::string_view* contents, bool* present) {
  uint8_t actual = 0;
  *present = PeekTag(&actual) && actual == tag;
  if (!*present) return true;
  return ReadAny(&actual, contents);
}

bool IsValidOid(absl::string_view contents) {
  if (contents.empty()) return false;
  bool at_start = true;  // at the first byte of a sub-identifier
  for (char c : contents) {
    const auto b = static_cast<uint8_t>(c);
    if (at_start && b == 0x80) return false;
    at_start = (b & 0x80) == 0;
  }
  return at_start;
}

bool BitStringBytes(absl::string_view contents, absl::string_view* bytes) {
  if (contents.empty() || contents[0] != 0) return false;
  *bytes = contents.substr(1);
  return true;
}

}  // namespace trellis::identity::der
