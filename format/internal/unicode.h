// Unicode code point properties and UTF-8 decoding for the tokenizer's
// pre-tokenizer. Private to saetrack_format.
//
// The letter and number classes are ICU's general categories (the Unicode
// version ICU was built with, UnicodeVersion(): 15.0 for Debian bookworm's
// ICU 72). Code points assigned after that version count as neither.
#ifndef SAETRACK_FORMAT_INTERNAL_UNICODE_H_
#define SAETRACK_FORMAT_INTERNAL_UNICODE_H_

#include <cstddef>
#include <cstdint>

namespace saetrack::format::internal {

// The Unicode version of ICU's character data, e.g. "15.0".
const char* UnicodeVersion();

// General category L* (Lu, Ll, Lt, Lm, Lo): what a regex's \p{L} matches.
bool IsLetter(char32_t code_point);

// General category N* (Nd, Nl, No): what a regex's \p{N} matches.
bool IsNumber(char32_t code_point);

// The White_Space property, which is what Oniguruma's \s matches for UTF-8
// (the regex engine of Hugging Face tokenizers): U+0009..U+000D, U+0020,
// U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F,
// U+3000.
bool IsWhitespace(char32_t code_point);

// Decodes one UTF-8 sequence at the start of [data, data + size). Returns its
// length (1..4) and sets *code_point, or returns 0 when the bytes there are
// not a valid, shortest-form sequence of a non-surrogate scalar value (then
// the caller treats one byte as undecodable). REQUIRES: size > 0.
int DecodeUtf8(const char* data, size_t size, char32_t* code_point);

}  // namespace saetrack::format::internal

#endif  // SAETRACK_FORMAT_INTERNAL_UNICODE_H_
