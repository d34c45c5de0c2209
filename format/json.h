// A strict JSON (RFC 8259) parser and serialiser.
//
// Used for config.json, safetensors headers and job files. Parsing is built
// on nlohmann-json's SAX parser (nlohmann-json3-dev, used only inside
// json.cc): a handler builds the JsonValue tree, records where each value
// starts, and turns nlohmann's errors into messages that name a byte offset.
// nlohmann's parser is iterative, so no input, however malformed or deeply
// nested, can crash the process. Serialising is saetrack's own.
//
// Strictness: no comments, no trailing commas, no NaN/Infinity, no byte order
// mark, no duplicate object keys, strings must be valid UTF-8 without raw
// control characters, \u escapes must form valid code points (surrogates
// only in pairs).
#ifndef SAETRACK_FORMAT_JSON_H_
#define SAETRACK_FORMAT_JSON_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::format {

// One node of a parsed JSON document. A value type: copies are deep. Objects
// keep their members in document order.
class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<JsonValue>;
  using Member = std::pair<std::string, JsonValue>;
  using Object = std::vector<Member>;

  // Null.
  JsonValue() = default;

  static JsonValue Bool(bool value);
  // REQUIRES: `value` is finite.
  static JsonValue Number(double value);
  // Exact integers (safetensors offsets, shapes) serialise without rounding.
  static JsonValue Integer(int64_t value);
  static JsonValue String(std::string value);
  static JsonValue MakeArray(Array elements);
  // REQUIRES: keys are unique.
  static JsonValue MakeObject(Object members);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Typed accessors. REQUIRES: the value has that type (checked in debug
  // builds; otherwise they return false / 0 / an empty string / an empty
  // container).
  bool bool_value() const;
  double number_value() const;
  const std::string& string_value() const;
  const Array& array() const;
  const Object& members() const;

  // The number as an int64 when it is one exactly (no fraction, in range;
  // "3", "3.0" and "3e0" all qualify, "3.5" and "1e30" do not); nullopt for
  // other numbers and non-numbers.
  std::optional<int64_t> AsInt64() const;

  // The member named `key`, or nullptr when absent or when this is not an
  // object. The pointer lives as long as this value is not modified.
  const JsonValue* Find(std::string_view key) const;

  // Byte offset in the parsed text where this value starts (0 for values
  // built in code). Lets callers name the offset of semantic errors too.
  size_t offset() const { return offset_; }

  // Human-readable type name ("null", "boolean", "number", "string", "array",
  // "object") for error messages.
  static const char* TypeName(Type type);

 private:
  friend class JsonParser;

  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  // Set when the number literal was an integer that fits in int64, so that
  // values above 2^53 survive exactly.
  std::optional<int64_t> integer_;
  std::string string_;
  Array array_;
  Object object_;
  size_t offset_ = 0;
};

// Nesting deeper than this is rejected rather than risking the stack.
inline constexpr int kMaxJsonDepth = 256;

// Parses a whole JSON document (leading and trailing whitespace allowed).
// On a syntax error returns kInvalidArgument with a message of the form
// "[<origin>: ]invalid JSON at byte <offset> (line L, column C): <what>",
// e.g. "config.json: invalid JSON at byte 57 (line 3, column 12): expected
// ':'". `origin` (a file name) is omitted from the message when empty.
absl::StatusOr<JsonValue> ParseJson(std::string_view text,
                                    std::string_view origin = {});

// Compact serialisation (no whitespace) that ParseJson reads back to an
// equal tree; doubles are written with the fewest digits that round-trip.
std::string SerializeJson(const JsonValue& value);

// `text` as a quoted JSON string literal with the required escapes.
std::string JsonQuote(std::string_view text);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_JSON_H_
