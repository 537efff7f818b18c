#pragma once

// A strict DER reader for the few structures the control plane parses by hand from untrusted
// input (PKCS#10 requests). It accepts only distinguished encodings: one-byte tags (tag numbers
// below 31), definite lengths in their shortest form, nothing past the end of the input. It never
// copies: every result is a view into the input, which must outlive it.

#include <cstdint>

#include "absl/strings/string_view.h"

namespace trellis::identity::der {

// Identifier octets of the universal and context-specific tags the parsers use.
inline constexpr uint8_t kBoolean = 0x01;
inline constexpr uint8_t kInteger = 0x02;
inline constexpr uint8_t kBitString = 0x03;
inline constexpr uint8_t kOctetString = 0x04;
inline constexpr uint8_t kNull = 0x05;
inline constexpr uint8_t kObjectIdentifier = 0x06;
inline constexpr uint8_t kSequence = 0x30;
inline constexpr uint8_t kSet = 0x31;
inline constexpr uint8_t kConstructed = 0x20;
inline constexpr uint8_t kContextSpecific = 0x80;

class Reader {
 public:
  explicit Reader(absl::string_view input) : rest_(input) {}

  bool empty() const { return rest_.empty(); }
  size_t remaining() const { return rest_.size(); }

  // The identifier octet of the next element, or false at the end of the input.
  bool PeekTag(uint8_t* tag) const;

  // Reads the next element whatever its tag. `contents` is its value, `element` (if not null)
  // the whole encoding including tag and length. False (and nothing consumed) if it is malformed.
  bool ReadAny(uint8_t* tag, absl::string_view* contents, absl::string_view* element = nullptr);

  // Reads the next element if its tag is `tag`; false (nothing consumed) otherwise.
  bool Read(uint8_t tag, absl::string_view* contents, absl::string_view* element = nullptr);

  // Reads the next element if it is present with `tag`: *present says whether it was. False only
  // if the next element is malformed.
  bool ReadOptional(uint8_t tag, absl::string_view* contents, bool* present);

 private:
  absl::string_view rest_;
};

// True if `contents` is a well-formed OBJECT IDENTIFIER value: at least one byte, every
// sub-identifier minimally encoded (no leading 0x80) and terminated (last byte below 0x80).
bool IsValidOid(absl::string_view contents);

// The value of a BIT STRING that must hold whole bytes (a key or a signature): the contents minus
// the leading "unused bits" octet, which must be 0. False otherwise.
bool BitStringBytes(absl::string_view contents, absl::string_view* bytes);

}  // namespace trellis::identity::der
