#include "format/json.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

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

namespace {

bool IsJsonWhitespace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// An input iterator over the text whose position lives outside it, so that
// the SAX handler can read how far nlohmann's lexer has consumed (the
// adapter inside the parser holds only copies of the iterator).
class TrackingIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  explicit TrackingIterator(const char** position) : position_(position) {}

  reference operator*() const { return **position_; }
  TrackingIterator& operator++() {
    ++*position_;
    return *this;
  }
  TrackingIterator operator++(int) {
    TrackingIterator copy = *this;
    ++*this;
    return copy;
  }
  bool operator==(const TrackingIterator& other) const {
    return *position_ == *other.position_;
  }
  bool operator!=(const TrackingIterator& other) const {
    return !(*this == other);
  }

 private:
  const char** position_;
};

// Hashes / compares member indices of one object by their keys, so that the
// duplicate-key set of a large object holds no copies of the keys.
struct MemberKeyHash {
  const JsonValue::Object* members;
  size_t operator()(size_t index) const {
    return std::hash<std::string_view>()((*members)[index].first);
  }
};
struct MemberKeyEq {
  const JsonValue::Object* members;
  bool operator()(size_t a, size_t b) const {
    return (*members)[a].first == (*members)[b].first;
  }
};
using MemberKeySet = std::unordered_set<size_t, MemberKeyHash, MemberKeyEq>;

}  // namespace

// nlohmann::json SAX handler that builds the JsonValue tree. nlohmann's
// parser is iterative, so nesting costs heap, not stack; the handler stops it
// (returns false) on a duplicate key or on nesting deeper than kMaxJsonDepth.
//
// Offsets: between two SAX events the text holds only whitespace, ',' and
// ':', so a value starts at the first other byte after the end of the
// previous event's token (`cursor_`). A token's end is known from its kind;
// for strings it is where the lexer stopped reading (the closing quote).
//
// Errors: nlohmann reports where its lexer stopped; the handler turns that
// into saetrack's messages, naming the byte where the problem starts (the
// unexpected token, the bad escape, the number out of range).
class JsonParser {
 public:
  using json = nlohmann::json;

  explicit JsonParser(std::string_view text)
      : text_(text), read_(text.data()) {}

  absl::StatusOr<JsonValue> ParseDocument(std::string_view origin) {
    // nlohmann skips a UTF-8 byte order mark; RFC 8259 parsers may refuse
    // it, and saetrack always has.
    if (!text_.empty() && static_cast<unsigned char>(text_[0]) == 0xEF) {
      FailAt(0, absl::StrCat("expected a value, found ", Found(0)));
    } else {
      const char* end = text_.data() + text_.size();
      const bool ok =
          json::sax_parse(TrackingIterator(&read_), TrackingIterator(&end),
                          this, json::input_format_t::json,
                          /*strict=*/true,
                          /*ignore_comments=*/false);
      if (!ok && error_.empty()) FailAt(cursor_, "invalid JSON");
    }
    if (error_.empty()) return std::move(root_);
    return absl::InvalidArgumentError(FormatError(origin));
  }

  // SAX interface.
  bool null() {
    JsonValue* slot = BeginValue(4);
    return slot != nullptr;
  }
  bool boolean(bool value) {
    JsonValue* slot = BeginValue(value ? 4 : 5);
    if (slot == nullptr) return false;
    slot->type_ = JsonValue::Type::kBool;
    slot->bool_ = value;
    return true;
  }
  bool number_integer(json::number_integer_t value) {
    JsonValue* slot = BeginNumber();
    if (slot == nullptr) return false;
    slot->integer_ = static_cast<int64_t>(value);
    slot->number_ = static_cast<double>(value);
    return true;
  }
  bool number_unsigned(json::number_unsigned_t value) {
    JsonValue* slot = BeginNumber();
    if (slot == nullptr) return false;
    if (value <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      slot->integer_ = static_cast<int64_t>(value);
    }
    slot->number_ = static_cast<double>(value);
    return true;
  }
  bool number_float(json::number_float_t value, const std::string& /*text*/) {
    JsonValue* slot = BeginNumber();
    if (slot == nullptr) return false;
    slot->number_ = value;
    return true;
  }
  bool string(std::string& value) {
    JsonValue* slot = BeginValue(ReadOffset() - ValueStart());
    if (slot == nullptr) return false;
    slot->type_ = JsonValue::Type::kString;
    slot->string_ = std::move(value);
    return true;
  }
  bool binary(json::binary_t& /*value*/) {
    return FailAt(cursor_, "binary values are not JSON");
  }
  bool start_object(size_t /*elements*/) {
    JsonValue* slot = BeginValue(1);
    if (slot == nullptr) return false;
    slot->type_ = JsonValue::Type::kObject;
    stack_.push_back(Frame{slot, {}});
    return true;
  }
  bool key(std::string& key) {
    const size_t key_pos = ValueStart();
    cursor_ = ReadOffset();
    awaiting_value_ = true;
    Frame& frame = stack_.back();
    JsonValue::Object& members = frame.value->object_;
    // A duplicate key is a real ambiguity (which tensor offsets win?).
    // Small objects scan their members; large ones (a tokenizer's 50k-entry
    // vocab) switch to a hash set of member indices, which keeps parsing
    // linear.
    bool duplicate;
    if (members.size() < kLinearKeyScanLimit) {
      duplicate = frame.value->Find(key) != nullptr;
      members.emplace_back(std::move(key), JsonValue());
    } else {
      if (!frame.keys.has_value()) {
        frame.keys.emplace(2 * kLinearKeyScanLimit, MemberKeyHash{&members},
                           MemberKeyEq{&members});
        for (size_t i = 0; i < members.size(); ++i) frame.keys->insert(i);
      }
      members.emplace_back(std::move(key), JsonValue());
      duplicate = !frame.keys->insert(members.size() - 1).second;
    }
    if (duplicate) {
      return FailAt(key_pos, absl::StrCat("duplicate key \"",
                                          members.back().first, "\""));
    }
    return true;
  }
  bool end_object() { return EndContainer(); }
  bool start_array(size_t /*elements*/) {
    JsonValue* slot = BeginValue(1);
    if (slot == nullptr) return false;
    slot->type_ = JsonValue::Type::kArray;
    stack_.push_back(Frame{slot, {}});
    return true;
  }
  bool end_array() { return EndContainer(); }
  bool parse_error(size_t chars_read, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& error) {
    DiagnoseError(chars_read, error);
    return false;
  }

 private:
  struct Frame {
    JsonValue* value;
    // Filled only once the object outgrows a linear key scan.
    std::optional<MemberKeySet> keys;
  };

  enum class Expect { kValue, kKey, kColon, kCommaOrClose, kEnd };

  size_t ReadOffset() const {
    return static_cast<size_t>(read_ - text_.data());
  }

  // Where the token of the current SAX event starts.
  size_t ValueStart() const {
    size_t pos = cursor_;
    while (pos < text_.size() && (IsJsonWhitespace(text_[pos]) ||
                                  text_[pos] == ',' || text_[pos] == ':')) {
      ++pos;
    }
    return pos;
  }

  // The slot the next value fills (root, array element or the member whose
  // key came last), with its offset set and the cursor moved past its token
  // of `length` bytes; nullptr when nesting is too deep.
  JsonValue* BeginValue(size_t length) {
    const size_t start = ValueStart();
    if (stack_.size() > static_cast<size_t>(kMaxJsonDepth)) {
      FailAt(start, absl::StrCat("nesting deeper than ", kMaxJsonDepth));
      return nullptr;
    }
    cursor_ = start + length;
    awaiting_value_ = false;
    JsonValue* slot;
    if (stack_.empty()) {
      root_started_ = true;
      slot = &root_;
    } else if (JsonValue* parent = stack_.back().value; parent->is_array()) {
      // Safe to keep pointers into the vectors: only the innermost open
      // container grows, and it is never an ancestor's element.
      slot = &parent->array_.emplace_back();
    } else {
      slot = &parent->object_.back().second;
    }
    slot->offset_ = start;
    return slot;
  }

  JsonValue* BeginNumber() {
    const size_t start = ValueStart();
    // The lexer accepted -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    // here; find where it ends (a digit right after a leading 0 does not
    // belong to it).
    size_t end = start;
    auto digits = [&] {
      while (end < text_.size() && IsDigit(text_[end])) ++end;
    };
    if (end < text_.size() && text_[end] == '-') ++end;
    if (end < text_.size() && text_[end] == '0') {
      ++end;
    } else {
      digits();
    }
    if (end < text_.size() && text_[end] == '.') {
      ++end;
      digits();
    }
    if (end < text_.size() && (text_[end] == 'e' || text_[end] == 'E')) {
      ++end;
      if (end < text_.size() && (text_[end] == '+' || text_[end] == '-')) ++end;
      digits();
    }
    JsonValue* slot = BeginValue(end - start);
    if (slot != nullptr) {
      slot->type_ = JsonValue::Type::kNumber;
      last_number_ = text_.substr(start, end - start);
    }
    return slot;
  }

  bool EndContainer() {
    cursor_ = ValueStart() + 1;
    stack_.pop_back();
    return true;
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }
  static bool IsHex(char c) {
    return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }

  // Whether text_[pos..pos+6) is a \u escape of a high surrogate.
  bool IsHighSurrogateEscape(size_t pos) const {
    if (pos + 6 > text_.size() || text_[pos] != '\\' || text_[pos + 1] != 'u') {
      return false;
    }
    for (size_t i = pos + 2; i < pos + 6; ++i) {
      if (!IsHex(text_[i])) return false;
    }
    const char c = text_[pos + 2];
    const char d = text_[pos + 3];
    return (c == 'd' || c == 'D') && (d == '8' || d == '9' || d == 'a' ||
                                      d == 'A' || d == 'b' || d == 'B');
  }

  // Turns nlohmann's error into saetrack's message and offset. Walks the
  // separators the grammar allows after the last event (`cursor_`) to the
  // token that failed, then names what was expected there, or, when that
  // token starts right but is malformed inside, what is wrong with it.
  void DiagnoseError(size_t chars_read,
                     const nlohmann::detail::exception& error) {
    // Where the lexer stopped: the byte it could not accept (or the end).
    const size_t stop =
        std::min(chars_read == 0 ? 0 : chars_read - 1, text_.size());
    const std::string_view what = error.what();
    if (error.id == 406) {  // out_of_range: a number that overflows a double
      FailAt(ValueStart(), "number out of range");
      return;
    }
    Expect expect;
    if (stack_.empty()) {
      expect = root_started_ ? Expect::kEnd : Expect::kValue;
    } else if (stack_.back().value->is_array()) {
      expect = stack_.back().value->array_.empty() ? Expect::kValue
                                                   : Expect::kCommaOrClose;
    } else if (stack_.back().value->object_.empty()) {
      expect = Expect::kKey;
    } else {
      expect = awaiting_value_ ? Expect::kColon : Expect::kCommaOrClose;
    }
    size_t pos = cursor_;
    auto skip_ws = [&] {
      while (pos < text_.size() && IsJsonWhitespace(text_[pos])) ++pos;
    };
    skip_ws();
    const char close =
        !stack_.empty() && stack_.back().value->is_object() ? '}' : ']';
    const bool leading_zero =
        (last_number_ == "0" || last_number_ == "-0") &&
        last_number_.data() + last_number_.size() == text_.data() + cursor_ &&
        pos == cursor_ && pos < text_.size() && IsDigit(text_[pos]);
    switch (expect) {
      case Expect::kEnd:
        if (leading_zero) {
          FailAt(pos, "leading zeros are not allowed in numbers");
        } else {
          FailAt(pos, "unexpected data after the JSON value");
        }
        return;
      case Expect::kColon:
        if (pos < text_.size() && text_[pos] == ':') {
          ++pos;
          skip_ws();
          expect = Expect::kValue;
          break;
        }
        FailAt(pos, absl::StrCat("expected ':', found ", Found(pos)));
        return;
      case Expect::kCommaOrClose:
        if (pos < text_.size() && text_[pos] == ',') {
          ++pos;
          skip_ws();
          expect = close == '}' ? Expect::kKey : Expect::kValue;
          break;
        }
        if (leading_zero) {
          FailAt(pos, "leading zeros are not allowed in numbers");
        } else {
          FailAt(pos, absl::StrCat("expected ',' or '", std::string(1, close),
                                   "', found ", Found(pos)));
        }
        return;
      default:
        break;
    }
    const char c = pos < text_.size() ? text_[pos] : '\0';
    if (expect == Expect::kKey && (pos >= text_.size() || c != '"')) {
      FailAt(pos, absl::StrCat("expected a string key, found ", Found(pos)));
      return;
    }
    if (pos >= text_.size()) {
      FailAt(pos, "expected a value, found end of input");
      return;
    }
    if (c == '"') {
      DiagnoseString(stop, what);
    } else if (c == '-' || IsDigit(c)) {
      DiagnoseNumber(stop, what);
    } else if (c == 't' || c == 'f' || c == 'n') {
      const char* literal = c == 't' ? "true" : c == 'f' ? "false" : "null";
      FailAt(pos, absl::StrCat("invalid literal, expected '", literal, "'"));
    } else {
      FailAt(pos, absl::StrCat("expected a value, found ", Found(pos)));
    }
  }

  void DiagnoseString(size_t stop, std::string_view what) {
    auto has = [&](std::string_view needle) {
      return what.find(needle) != std::string_view::npos;
    };
    if (has("missing closing quote")) {
      FailAt(stop, "unterminated string");
    } else if (has("must be followed by 4 hex digits")) {
      if (stop >= text_.size() || text_[stop] == '"') {
        FailAt(stop, "expected 4 hex digits after \\u");
      } else {
        FailAt(stop, absl::StrCat("invalid hex digit ", Found(stop),
                                  " in \\u escape"));
      }
    } else if (has("must follow U+D800")) {
      FailAt(stop >= 5 ? stop - 5 : stop,
             "unpaired low surrogate in \\u escape");
    } else if (has("must be followed by U+DC00")) {
      // Either "\uD8xx\uXXXX" with no low surrogate in the second escape
      // (stopped on its last hex digit), or "\uD8xx" followed by something
      // other than "\u" (stopped on the byte after "\uD8xx" or after '\').
      if (stop >= 11 && IsHighSurrogateEscape(stop - 11) &&
          text_[stop - 5] == '\\' && text_[stop - 4] == 'u') {
        FailAt(stop - 11, "high surrogate not followed by a low surrogate");
      } else {
        size_t escape = stop;
        if (stop >= 6 && IsHighSurrogateEscape(stop - 6)) {
          escape = stop - 6;
        } else if (stop >= 7 && IsHighSurrogateEscape(stop - 7)) {
          escape = stop - 7;
        }
        FailAt(escape, "high surrogate not followed by a \\u low surrogate");
      }
    } else if (has("forbidden character after backslash")) {
      FailAt(stop >= 1 ? stop - 1 : stop, "invalid escape sequence");
    } else if (has("control character")) {
      FailAt(stop,
             absl::StrFormat("raw control character 0x%02x in string (must be "
                             "escaped)",
                             stop < text_.size()
                                 ? static_cast<unsigned char>(text_[stop])
                                 : 0));
    } else if (has("ill-formed UTF-8")) {
      // Blame the sequence the bad byte belongs to: back up over
      // continuation bytes to a lead byte whose sequence covers `stop`.
      size_t lead = stop;
      size_t back = stop;
      while (back > 0 && stop - back < 3 &&
             (static_cast<unsigned char>(text_[back - 1]) & 0xC0) == 0x80) {
        --back;
      }
      if (back > 0) {
        const unsigned char b = static_cast<unsigned char>(text_[back - 1]);
        const size_t length = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 0;
        if (length > stop - (back - 1)) lead = back - 1;
      }
      if (lead == stop && stop >= text_.size()) {
        FailAt(stop, "truncated UTF-8 sequence in string");
      } else {
        FailAt(lead, "invalid UTF-8 in string");
      }
    } else {
      FailAt(stop, NlohmannReason(what));
    }
  }

  void DiagnoseNumber(size_t stop, std::string_view what) {
    auto has = [&](std::string_view needle) {
      return what.find(needle) != std::string_view::npos;
    };
    if (has("expected digit after '-'")) {
      FailAt(stop, absl::StrCat("expected a digit, found ", Found(stop)));
    } else if (has("expected digit after '.'")) {
      FailAt(stop,
             absl::StrCat("expected a digit after '.', found ", Found(stop)));
    } else if (has("after exponent")) {
      FailAt(stop, absl::StrCat("expected a digit in the exponent, found ",
                                Found(stop)));
    } else {
      FailAt(stop, NlohmannReason(what));
    }
  }

  // The part of nlohmann's message after "syntax error while parsing ... - ".
  static std::string NlohmannReason(std::string_view what) {
    const size_t dash = what.find(" - ");
    if (dash != std::string_view::npos) what.remove_prefix(dash + 3);
    return std::string(what);
  }

  // Describes the byte at `pos` for "expected X, found Y" messages.
  std::string Found(size_t pos) const {
    if (pos >= text_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(text_[pos]);
    if (c >= 0x20 && c < 0x7F) return absl::StrCat("'", std::string(1, c), "'");
    return absl::StrFormat("byte 0x%02x", c);
  }

  bool FailAt(size_t pos, std::string what) {
    if (error_.empty()) {
      error_ = std::move(what);
      error_pos_ = pos;
    }
    return false;
  }

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

  std::string_view text_;
  // How far nlohmann's lexer has read (shared with the TrackingIterator).
  const char* read_;
  // End of the token of the last SAX event.
  size_t cursor_ = 0;
  std::string_view last_number_;
  // Set by a key event until its value's event.
  bool awaiting_value_ = false;
  bool root_started_ = false;
  JsonValue root_;
  std::vector<Frame> stack_;
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
