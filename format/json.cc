#include "format/json.h"

#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <unordered_set>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/absl_compat.h"

namespace saetrack::format {
namespace {

// Objects with more members than this detect duplicate keys with a hash set.
constexpr size_t kLinearKeyScanLimit = 32;

}  // namespace

JsonValue JsonValue::Bool(bool value) {
  JsonValue v;
  v.type_ = Type::kBool;
  v.bool_ = value;
  return v;
}

JsonValue JsonValue::Number(double value) {
  assert(std::isfinite(value));
  JsonValue v;
  v.type_ = Type::kNumber;
  v.number_ = value;
  return v;
}

JsonValue JsonValue::Integer(int64_t value) {
  JsonValue v;
  v.type_ = Type::kNumber;
  v.number_ = static_cast<double>(value);
  v.integer_ = value;
  return v;
}

JsonValue JsonValue::String(std::string value) {
  JsonValue v;
  v.type_ = Type::kString;
  v.string_ = std::move(value);
  return v;
}

JsonValue JsonValue::MakeArray(Array elements) {
  JsonValue v;
  v.type_ = Type::kArray;
  v.array_ = std::move(elements);
  return v;
}

JsonValue JsonValue::MakeObject(Object members) {
  JsonValue v;
  v.type_ = Type::kObject;
  v.object_ = std::move(members);
  return v;
}

bool JsonValue::bool_value() const {
  assert(is_bool());
  return bool_;
}

double JsonValue::number_value() const {
  assert(is_number());
  return number_;
}

const std::string& JsonValue::string_value() const {
  assert(is_string());
  return string_;
}

const JsonValue::Array& JsonValue::array() const {
  assert(is_array());
  return array_;
}

const JsonValue::Object& JsonValue::members() const {
  assert(is_object());
  return object_;
}

std::optional<int64_t> JsonValue::AsInt64() const {
  if (!is_number()) return std::nullopt;
  if (integer_.has_value()) return integer_;
  // 2^63 is exactly representable; anything >= it does not fit.
  constexpr double kTwoTo63 = 9223372036854775808.0;
  if (std::trunc(number_) != number_ || number_ >= kTwoTo63 ||
      number_ < -kTwoTo63) {
    return std::nullopt;
  }
  return static_cast<int64_t>(number_);
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const Member& member : object_) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

const char* JsonValue::TypeName(Type type) {
  switch (type) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "boolean";
    case Type::kNumber:
      return "number";
    case Type::kString:
      return "string";
    case Type::kArray:
      return "array";
    case Type::kObject:
      return "object";
  }
  return "unknown";
}

// Recursive-descent parser over a string_view. Each Parse* function either
// consumes one production and returns true, or records the first error (with
// its byte offset) and returns false.
class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  absl::StatusOr<JsonValue> ParseDocument(std::string_view origin) {
    JsonValue root;
    SkipWhitespace();
    if (ParseValue(root, /*depth=*/0)) {
      SkipWhitespace();
      if (pos_ != text_.size()) Fail("unexpected data after the JSON value");
    }
    if (error_.empty()) return root;
    return absl::InvalidArgumentError(FormatError(origin));
  }

 private:
  std::string FormatError(std::string_view origin) const {
    size_t line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < error_pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        line_start = i + 1;
      }
    }
    std::string message =
        absl::StrFormat("invalid JSON at byte %d (line %d, column %d): %s",
                        error_pos_, line, error_pos_ - line_start + 1, error_);
    if (origin.empty()) return message;
    return absl::StrCat(AsAbsl(origin), ": ", message);
  }

  bool Fail(std::string what) { return FailAt(pos_, std::move(what)); }
  bool FailAt(size_t pos, std::string what) {
    if (error_.empty()) {
      error_ = std::move(what);
      error_pos_ = pos;
    }
    return false;
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }

  void SkipWhitespace() {
    while (!AtEnd()) {
      const char c = Peek();
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++pos_;
    }
  }

  // Describes the byte at pos_ for "expected X, found Y" messages.
  std::string Found() const {
    if (AtEnd()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(Peek());
    if (c >= 0x20 && c < 0x7F) return absl::StrCat("'", std::string(1, c), "'");
    return absl::StrFormat("byte 0x%02x", c);
  }

  bool Expect(char c) {
    if (!AtEnd() && Peek() == c) {
      ++pos_;
      return true;
    }
    return Fail(
        absl::StrCat("expected '", std::string(1, c), "', found ", Found()));
  }

  bool ConsumeLiteral(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) {
      return Fail(
          absl::StrCat("invalid literal, expected '", AsAbsl(literal), "'"));
    }
    pos_ += literal.size();
    return true;
  }

  bool ParseValue(JsonValue& out, int depth) {
    if (depth > kMaxJsonDepth) {
      return Fail(absl::StrCat("nesting deeper than ", kMaxJsonDepth));
    }
    if (AtEnd()) return Fail("expected a value, found end of input");
    out.offset_ = pos_;
    switch (Peek()) {
      case '{':
        return ParseObject(out, depth);
      case '[':
        return ParseArray(out, depth);
      case '"':
        out.type_ = JsonValue::Type::kString;
        return ParseString(out.string_);
      case 't':
        out.type_ = JsonValue::Type::kBool;
        out.bool_ = true;
        return ConsumeLiteral("true");
      case 'f':
        out.type_ = JsonValue::Type::kBool;
        out.bool_ = false;
        return ConsumeLiteral("false");
      case 'n':
        out.type_ = JsonValue::Type::kNull;
        return ConsumeLiteral("null");
      default:
        if (Peek() == '-' || (Peek() >= '0' && Peek() <= '9')) {
          return ParseNumber(out);
        }
        return Fail(absl::StrCat("expected a value, found ", Found()));
    }
  }

  bool ParseObject(JsonValue& out, int depth) {
    // Keys seen so far; filled only once the object outgrows a linear scan.
    std::unordered_set<std::string> keys;
    out.type_ = JsonValue::Type::kObject;
    ++pos_;  // '{'
    SkipWhitespace();
    if (!AtEnd() && Peek() == '}') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipWhitespace();
      const size_t key_pos = pos_;
      if (AtEnd() || Peek() != '"') {
        return Fail(absl::StrCat("expected a string key, found ", Found()));
      }
      std::string key;
      if (!ParseString(key)) return false;
      // A duplicate key is a real ambiguity (which tensor offsets win?).
      // Small objects scan their members; large ones (a tokenizer's 50k-entry
      // vocab) switch to a hash set, which keeps parsing linear.
      bool duplicate;
      if (out.object_.size() < kLinearKeyScanLimit) {
        duplicate = out.Find(key) != nullptr;
      } else {
        if (keys.empty()) {
          keys.reserve(2 * kLinearKeyScanLimit);
          for (const auto& member : out.object_) keys.insert(member.first);
        }
        duplicate = !keys.insert(key).second;
      }
      if (duplicate) {
        return FailAt(key_pos, absl::StrCat("duplicate key \"", key, "\""));
      }
      SkipWhitespace();
      if (!Expect(':')) return false;
      SkipWhitespace();
      JsonValue value;
      if (!ParseValue(value, depth + 1)) return false;
      out.object_.emplace_back(std::move(key), std::move(value));
      SkipWhitespace();
      if (AtEnd()) return Fail("expected ',' or '}', found end of input");
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() == '}') {
        ++pos_;
        return true;
      }
      return Fail(absl::StrCat("expected ',' or '}', found ", Found()));
    }
  }

  bool ParseArray(JsonValue& out, int depth) {
    out.type_ = JsonValue::Type::kArray;
    ++pos_;  // '['
    SkipWhitespace();
    if (!AtEnd() && Peek() == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipWhitespace();
      JsonValue element;
      if (!ParseValue(element, depth + 1)) return false;
      out.array_.push_back(std::move(element));
      SkipWhitespace();
      if (AtEnd()) return Fail("expected ',' or ']', found end of input");
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() == ']') {
        ++pos_;
        return true;
      }
      return Fail(absl::StrCat("expected ',' or ']', found ", Found()));
    }
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  // Grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  bool ParseNumber(JsonValue& out) {
    const size_t start = pos_;
    bool integral = true;
    if (Peek() == '-') ++pos_;
    if (AtEnd() || !IsDigit(Peek())) {
      return Fail(absl::StrCat("expected a digit, found ", Found()));
    }
    if (Peek() == '0') {
      ++pos_;
      if (!AtEnd() && IsDigit(Peek())) {
        return Fail("leading zeros are not allowed in numbers");
      }
    } else {
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && Peek() == '.') {
      integral = false;
      ++pos_;
      if (AtEnd() || !IsDigit(Peek())) {
        return Fail(
            absl::StrCat("expected a digit after '.', found ", Found()));
      }
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && (Peek() == 'e' || Peek() == 'E')) {
      integral = false;
      ++pos_;
      if (!AtEnd() && (Peek() == '+' || Peek() == '-')) ++pos_;
      if (AtEnd() || !IsDigit(Peek())) {
        return Fail(
            absl::StrCat("expected a digit in the exponent, found ", Found()));
      }
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    const std::string_view literal = text_.substr(start, pos_ - start);
    out.type_ = JsonValue::Type::kNumber;
    int64_t integer = 0;
    if (integral && absl::SimpleAtoi(AsAbsl(literal), &integer)) {
      out.integer_ = integer;
      out.number_ = static_cast<double>(integer);
      return true;
    }
    double number = 0;
    // SimpleAtod is locale-independent, unlike strtod. It fails or yields
    // infinity on overflow; underflow to 0 is acceptable.
    if (!absl::SimpleAtod(AsAbsl(literal), &number) || !std::isfinite(number)) {
      return FailAt(start, "number out of range");
    }
    out.number_ = number;
    return true;
  }

  // Reads four hex digits at pos_.
  bool ParseHex4(uint32_t& out) {
    if (text_.size() - pos_ < 4) {
      return Fail("expected 4 hex digits after \\u");
    }
    out = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_];
      uint32_t digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        digit = c - 'A' + 10;
      } else {
        return Fail(
            absl::StrCat("invalid hex digit ", Found(), " in \\u escape"));
      }
      out = out * 16 + digit;
      ++pos_;
    }
    return true;
  }

  static void AppendUtf8(uint32_t code_point, std::string& out) {
    if (code_point < 0x80) {
      out.push_back(static_cast<char>(code_point));
    } else if (code_point < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
      out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    } else if (code_point < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
      out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
      out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    }
  }

  // Validates one raw UTF-8 sequence starting at pos_ (a non-ASCII byte) and
  // copies it to `out`. Rejects overlong forms, surrogates and > U+10FFFF.
  bool CopyUtf8Sequence(std::string& out) {
    const size_t start = pos_;
    const unsigned char lead = static_cast<unsigned char>(text_[pos_]);
    int length;
    uint32_t code_point;
    uint32_t min_code_point;
    if ((lead & 0xE0) == 0xC0) {
      length = 2;
      code_point = lead & 0x1F;
      min_code_point = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3;
      code_point = lead & 0x0F;
      min_code_point = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4;
      code_point = lead & 0x07;
      min_code_point = 0x10000;
    } else {
      return Fail("invalid UTF-8 in string");
    }
    if (text_.size() - pos_ < static_cast<size_t>(length)) {
      return Fail("truncated UTF-8 sequence in string");
    }
    for (int i = 1; i < length; ++i) {
      const unsigned char c = static_cast<unsigned char>(text_[pos_ + i]);
      if ((c & 0xC0) != 0x80) return Fail("invalid UTF-8 in string");
      code_point = (code_point << 6) | (c & 0x3F);
    }
    if (code_point < min_code_point || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return Fail("invalid UTF-8 in string");
    }
    out.append(text_.substr(start, length));
    pos_ += length;
    return true;
  }

  bool ParseString(std::string& out) {
    ++pos_;  // opening quote
    while (true) {
      if (AtEnd()) return Fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(Peek());
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c < 0x20) {
        return Fail(absl::StrFormat(
            "raw control character 0x%02x in string (must be escaped)", c));
      }
      if (c >= 0x80) {
        if (!CopyUtf8Sequence(out)) return false;
        continue;
      }
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      const size_t escape_pos = pos_;
      ++pos_;
      if (AtEnd()) return Fail("unterminated string");
      const char e = Peek();
      ++pos_;
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          uint32_t unit;
          if (!ParseHex4(unit)) return false;
          if (unit >= 0xDC00 && unit <= 0xDFFF) {
            return FailAt(escape_pos, "unpaired low surrogate in \\u escape");
          }
          if (unit >= 0xD800 && unit <= 0xDBFF) {
            if (text_.substr(pos_, 2) != "\\u") {
              return FailAt(escape_pos,
                            "high surrogate not followed by a \\u low "
                            "surrogate");
            }
            pos_ += 2;
            uint32_t low;
            if (!ParseHex4(low)) return false;
            if (low < 0xDC00 || low > 0xDFFF) {
              return FailAt(escape_pos,
                            "high surrogate not followed by a low surrogate");
            }
            unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(unit, out);
          break;
        }
        default:
          return FailAt(escape_pos, "invalid escape sequence");
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::string error_;
  size_t error_pos_ = 0;
};

absl::StatusOr<JsonValue> ParseJson(std::string_view text,
                                    std::string_view origin) {
  return JsonParser(text).ParseDocument(origin);
}

std::string JsonQuote(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
  return out;
}

namespace {

// The shortest %.*g form that parses back to the same double.
std::string FormatDouble(double value) {
  for (int precision = 1; precision <= 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, value);
    double parsed;
    if (absl::SimpleAtod(text, &parsed) && parsed == value) return text;
  }
  return absl::StrFormat("%.17g", value);
}

void AppendJson(const JsonValue& value, std::string& out) {
  switch (value.type()) {
    case JsonValue::Type::kNull:
      out += "null";
      return;
    case JsonValue::Type::kBool:
      out += value.bool_value() ? "true" : "false";
      return;
    case JsonValue::Type::kNumber: {
      // Integral values (exact int64 literals, or doubles that are whole
      // numbers in int64 range, which convert exactly) print without a
      // fraction or exponent.
      if (const std::optional<int64_t> integer = value.AsInt64()) {
        absl::StrAppend(&out, *integer);
      } else {
        out += FormatDouble(value.number_value());
      }
      return;
    }
    case JsonValue::Type::kString:
      out += JsonQuote(value.string_value());
      return;
    case JsonValue::Type::kArray: {
      out.push_back('[');
      bool first = true;
      for (const JsonValue& element : value.array()) {
        if (!first) out.push_back(',');
        first = false;
        AppendJson(element, out);
      }
      out.push_back(']');
      return;
    }
    case JsonValue::Type::kObject: {
      out.push_back('{');
      bool first = true;
      for (const JsonValue::Member& member : value.members()) {
        if (!first) out.push_back(',');
        first = false;
        out += JsonQuote(member.first);
        out.push_back(':');
        AppendJson(member.second, out);
      }
      out.push_back('}');
      return;
    }
  }
}

}  // namespace

std::string SerializeJson(const JsonValue& value) {
  std::string out;
  AppendJson(value, out);
  return out;
}

}  // namespace saetrack::format
