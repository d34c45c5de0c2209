#include "format/internal/unicode.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>

namespace saetrack::format::internal {
namespace {

struct CodePointRange {
  char32_t first;
  char32_t last;
};

struct CodePointValueRange {
  char32_t first;
  char32_t last;
  uint8_t value;
};

#include "format/internal/unicode_tables.inc"

template <typename Range, size_t N>
const Range* FindRange(const Range (&table)[N], char32_t code_point) {
  // The first range whose last code point is >= code_point.
  const Range* it = std::lower_bound(
      std::begin(table), std::end(table), code_point,
      [](const Range& range, char32_t cp) { return range.last < cp; });
  if (it == std::end(table) || it->first > code_point) return nullptr;
  return it;
}

}  // namespace

const char* UnicodeVersion() { return kUnicodeVersion; }

bool IsLetter(char32_t code_point) {
  if (code_point < 0x80) {
    return (code_point | 0x20) >= 'a' && (code_point | 0x20) <= 'z';
  }
  return FindRange(kLetterRanges, code_point) != nullptr;
}

bool IsNumber(char32_t code_point) {
  if (code_point < 0x80) return code_point >= '0' && code_point <= '9';
  return FindRange(kNumberRanges, code_point) != nullptr;
}

bool IsWhitespace(char32_t code_point) {
  if (code_point < 0x80) {
    return code_point == ' ' || (code_point >= 0x09 && code_point <= 0x0D);
  }
  switch (code_point) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return code_point >= 0x2000 && code_point <= 0x200A;
  }
}

uint8_t CombiningClass(char32_t code_point) {
  if (code_point < 0x300) return 0;
  const CodePointValueRange* range =
      FindRange(kCombiningClassRanges, code_point);
  return range == nullptr ? 0 : range->value;
}

NfcQuickCheck NfcQuickCheckOf(char32_t code_point) {
  if (code_point < 0x300) return NfcQuickCheck::kYes;
  const CodePointValueRange* range =
      FindRange(kNfcQuickCheckRanges, code_point);
  if (range == nullptr) return NfcQuickCheck::kYes;
  return range->value == 2 ? NfcQuickCheck::kNo : NfcQuickCheck::kMaybe;
}

int DecodeUtf8(const char* data, size_t size, char32_t* code_point) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  const unsigned char lead = p[0];
  if (lead < 0x80) {
    *code_point = lead;
    return 1;
  }
  int length;
  char32_t value;
  char32_t min_value;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    value = lead & 0x1F;
    min_value = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    value = lead & 0x0F;
    min_value = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    value = lead & 0x07;
    min_value = 0x10000;
  } else {
    return 0;
  }
  if (size < static_cast<size_t>(length)) return 0;
  for (int i = 1; i < length; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    value = (value << 6) | (p[i] & 0x3F);
  }
  if (value < min_value || value > 0x10FFFF ||
      (value >= 0xD800 && value <= 0xDFFF)) {
    return 0;
  }
  *code_point = value;
  return length;
}

}  // namespace saetrack::format::internal
