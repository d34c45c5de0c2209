#include "format/json.h"

#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

using ::testing::HasSubstr;

absl::Status ParseError(std::string_view text) {
  absl::StatusOr<JsonValue> value = ParseJson(text);
  EXPECT_FALSE(value.ok()) << "parsed: " << text;
  return value.status();
}

TEST(JsonTest, ParsesNestedDocument) {
  absl::StatusOr<JsonValue> value = ParseJson(
      R"( {"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "d"}, "e": {}} )");
  ASSERT_TRUE(value.ok()) << value.status();
  ASSERT_TRUE(value->is_object());
  ASSERT_EQ(value->members().size(), 3u);
  const JsonValue* a = value->Find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->array().size(), 6u);
  EXPECT_EQ(a->array()[0].AsInt64(), 1);
  EXPECT_DOUBLE_EQ(a->array()[1].number_value(), 2.5);
  EXPECT_EQ(a->array()[1].AsInt64(), std::nullopt);
  EXPECT_DOUBLE_EQ(a->array()[2].number_value(), -300.0);
  EXPECT_EQ(a->array()[2].AsInt64(), -300);
  EXPECT_TRUE(a->array()[3].bool_value());
  EXPECT_FALSE(a->array()[4].bool_value());
  EXPECT_TRUE(a->array()[5].is_null());
  EXPECT_EQ(value->Find("b")->Find("c")->string_value(), "d");
  EXPECT_TRUE(value->Find("e")->members().empty());
  EXPECT_EQ(value->Find("missing"), nullptr);
  EXPECT_EQ(a->Find("a"), nullptr);  // not an object
}

TEST(JsonTest, RecordsValueOffsets) {
  absl::StatusOr<JsonValue> value = ParseJson(R"({"key": [10, "x"]})");
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(value->offset(), 0u);
  EXPECT_EQ(value->Find("key")->offset(), 8u);
  EXPECT_EQ(value->Find("key")->array()[1].offset(), 13u);
}

TEST(JsonTest, Numbers) {
  struct Case {
    const char* text;
    double value;
  };
  for (const Case& c :
       {Case{"0", 0}, Case{"-0", 0}, Case{"1e3", 1000}, Case{"1E+3", 1000},
        Case{"2.5e-3", 0.0025}, Case{"-12.75", -12.75}, Case{"1e-400", 0},
        Case{"123456789012", 123456789012.0}}) {
    absl::StatusOr<JsonValue> value = ParseJson(c.text);
    ASSERT_TRUE(value.ok()) << c.text << ": " << value.status();
    EXPECT_DOUBLE_EQ(value->number_value(), c.value) << c.text;
  }
  // Integers beyond 2^53 stay exact.
  absl::StatusOr<JsonValue> big = ParseJson("9007199254740993");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->AsInt64(), int64_t{9007199254740993});
  EXPECT_EQ(ParseJson("1e30")->AsInt64(), std::nullopt);
}

TEST(JsonTest, RejectsMalformedNumbers) {
  for (const char* text : {"01", "-", "1.", ".5", "1e", "1e+", "+1", "0x10",
                           "NaN", "Infinity", "-Infinity", "1e999"}) {
    const absl::Status status = ParseError(text);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << text;
  }
  EXPECT_THAT(ParseError("[1e999]").message(),
              HasSubstr("at byte 1 (line 1, column 2): number out of range"));
}

TEST(JsonTest, StringEscapes) {
  absl::StatusOr<JsonValue> value =
      ParseJson(R"("a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00")");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->string_value(),
            "a\"b\\c/d\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  // Raw UTF-8 passes through.
  EXPECT_EQ(ParseJson("\"\xE2\x82\xAC\"")->string_value(), "\xE2\x82\xAC");
}

TEST(JsonTest, RejectsBadStrings) {
  EXPECT_THAT(ParseError(R"("\ud83d")").message(),
              HasSubstr("at byte 1 (line 1, column 2): high surrogate"));
  EXPECT_THAT(ParseError(R"("\ud83dx")").message(),
              HasSubstr("high surrogate"));
  EXPECT_THAT(ParseError(R"("\ud83d\u0041")").message(),
              HasSubstr("high surrogate not followed by a low surrogate"));
  EXPECT_THAT(ParseError(R"("\ude00")").message(),
              HasSubstr("unpaired low surrogate"));
  EXPECT_THAT(ParseError(R"("\u12g4")").message(), HasSubstr("invalid hex"));
  EXPECT_THAT(ParseError(R"("\u12")").message(), HasSubstr("4 hex digits"));
  EXPECT_THAT(ParseError(R"("\x")").message(),
              HasSubstr("at byte 1 (line 1, column 2): invalid escape"));
  EXPECT_THAT(ParseError("\"a\nb\"").message(),
              HasSubstr("at byte 2 (line 1, column 3): raw control character"));
  EXPECT_THAT(ParseError("\"abc").message(), HasSubstr("unterminated string"));
  EXPECT_THAT(ParseError("\"\xC0\xAF\"").message(),
              HasSubstr("invalid UTF-8"));  // overlong '/'
  EXPECT_THAT(ParseError("\"\xED\xA0\x80\"").message(),
              HasSubstr("invalid UTF-8"));  // encoded surrogate
  EXPECT_THAT(ParseError("\"\xE2\x82\"").message(), HasSubstr("UTF-8"));
}

TEST(JsonTest, SyntaxErrorsNameByteOffsetAndOrigin) {
  const std::string text = "{\n  \"hidden_size\" 64\n}";
  absl::StatusOr<JsonValue> value = ParseJson(text, "config.json");
  ASSERT_FALSE(value.ok());
  EXPECT_EQ(value.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(value.status().message(),
            "config.json: invalid JSON at byte 18 (line 2, column 17): "
            "expected ':', found '6'");
}

TEST(JsonTest, StructuralErrors) {
  EXPECT_THAT(ParseError("").message(),
              HasSubstr("at byte 0 (line 1, column 1): expected a value, "
                        "found end of input"));
  EXPECT_THAT(ParseError("[1,]").message(),
              HasSubstr("at byte 3 (line 1, column 4): expected a value"));
  EXPECT_THAT(ParseError("{\"a\":1,}").message(),
              HasSubstr("at byte 7 (line 1, column 8): expected a string key"));
  EXPECT_THAT(ParseError("[1 2]").message(),
              HasSubstr("at byte 3 (line 1, column 4): expected ',' or ']'"));
  EXPECT_THAT(ParseError("{\"a\":1 \"b\":2}").message(),
              HasSubstr("expected ',' or '}'"));
  EXPECT_THAT(ParseError("{} x").message(),
              HasSubstr("at byte 3 (line 1, column 4): unexpected data after"));
  EXPECT_THAT(ParseError("{\"a\":1,\"a\":2}").message(),
              HasSubstr("at byte 7 (line 1, column 8): duplicate key \"a\""));
  EXPECT_THAT(ParseError("tru").message(), HasSubstr("invalid literal"));
  EXPECT_THAT(ParseError("// c\n{}").message(), HasSubstr("expected a value"));
  EXPECT_THAT(ParseError("[").message(), HasSubstr("end of input"));
  EXPECT_THAT(ParseError(std::string("[\0]", 3)).message(),
              HasSubstr("found byte 0x00"));
}

// Large objects detect duplicates through a hash set rather than a scan;
// the key repeated may be one seen before or after the switch.
TEST(JsonTest, DuplicateKeysInLargeObjects) {
  for (int repeated : {3, 60}) {
    std::string text = "{";
    for (int i = 0; i < 100; ++i) {
      text += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    }
    text += "\"k" + std::to_string(repeated) + "\":0}";
    EXPECT_THAT(ParseError(text).message(),
                HasSubstr("duplicate key \"k" + std::to_string(repeated)))
        << repeated;
  }
  std::string unique = "{";
  for (int i = 0; i < 100; ++i) {
    unique += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":1";
  }
  unique += "}";
  absl::StatusOr<JsonValue> value = ParseJson(unique);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->members().size(), 100u);
}

TEST(JsonTest, DepthLimit) {
  const std::string ok_depth =
      std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(ParseJson(ok_depth).ok());
  // Far deeper than any stack would survive without the limit.
  const std::string too_deep = std::string(1'000'000, '[');
  EXPECT_THAT(ParseError(too_deep).message(),
              HasSubstr("nesting deeper than 256"));
  const std::string objects = std::string(100'000, '{');
  EXPECT_EQ(ParseError(objects).code(), absl::StatusCode::kInvalidArgument);
}

// nlohmann's parser is iterative: no depth of nesting reaches the stack,
// and the handler stops at the first value deeper than kMaxJsonDepth.
TEST(JsonTest, DepthLimitNamesTheOffendingValue) {
  // 257 nested arrays hold values at depth 256: allowed when empty.
  EXPECT_TRUE(ParseJson(std::string(kMaxJsonDepth + 1, '[') +
                        std::string(kMaxJsonDepth + 1, ']'))
                  .ok());
  // The 258th '[' (byte 257) is at depth 257.
  EXPECT_THAT(ParseError(std::string(100'000, '[')).message(),
              HasSubstr("at byte 257 (line 1, column 258): nesting deeper "
                        "than 256"));
  // A scalar at depth 257 is refused as well, at its own offset.
  std::string scalar_too_deep = std::string(kMaxJsonDepth + 1, '[') + "7" +
                                std::string(kMaxJsonDepth + 1, ']');
  EXPECT_THAT(ParseError(scalar_too_deep).message(),
              HasSubstr("at byte 257 (line 1, column 258): nesting deeper"));
  // Objects nest the same way.
  std::string objects;
  for (int i = 0; i < 100'000; ++i) objects += "{\"k\":";
  EXPECT_THAT(
      ParseError(objects).message(),
      HasSubstr(absl::StrCat("at byte ", 257 * 5, " (line 1, column ",
                             257 * 5 + 1, "): nesting deeper than 256")));
}

TEST(JsonTest, RecordsOffsetsOfEveryKind) {
  const std::string text =
      "{\n \"s\" : \"a\\\"b\" ,\"n\":-12.5e1, \"i\":42,\"t\":true,"
      "\"f\":false,\"z\":null,\"a\":[ {}, [], \"\\u00e9\" ]}";
  absl::StatusOr<JsonValue> value = ParseJson(text);
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->Find("s")->offset(), text.find("\"a\\"));
  EXPECT_EQ(value->Find("s")->string_value(), "a\"b");
  EXPECT_EQ(value->Find("n")->offset(), text.find("-12.5e1"));
  EXPECT_EQ(value->Find("i")->offset(), text.find("42"));
  EXPECT_EQ(value->Find("t")->offset(), text.find("true"));
  EXPECT_EQ(value->Find("f")->offset(), text.find("false"));
  EXPECT_EQ(value->Find("z")->offset(), text.find("null"));
  const JsonValue* array = value->Find("a");
  EXPECT_EQ(array->offset(), text.find("[ {"));
  EXPECT_EQ(array->array()[0].offset(), text.find("{}"));
  EXPECT_EQ(array->array()[1].offset(), text.find("[]"));
  EXPECT_EQ(array->array()[2].offset(), text.find("\"\\u00e9"));
}

TEST(JsonTest, DuplicateKeyNamesItsOffset) {
  const std::string text = "{\"a\": {\"x\": 1,\n  \"x\": 2}}";
  EXPECT_THAT(ParseError(text).message(),
              HasSubstr("at byte 17 (line 2, column 3): duplicate key \"x\""));
  std::string large = "{";
  for (int i = 0; i < 100; ++i) large += "\"k" + std::to_string(i) + "\":1,";
  const size_t repeat_at = large.size();
  large += "\"k7\":2}";
  EXPECT_THAT(
      ParseError(large).message(),
      HasSubstr(absl::StrCat("at byte ", repeat_at, " (line 1, column ",
                             repeat_at + 1, "): duplicate key \"k7\"")));
}

TEST(JsonTest, ErrorOffsetsInsideTokens) {
  EXPECT_THAT(ParseError("[0, 012]").message(),
              HasSubstr("at byte 5 (line 1, column 6): leading zeros"));
  EXPECT_THAT(ParseError("-01").message(),
              HasSubstr("at byte 2 (line 1, column 3): leading zeros"));
  EXPECT_THAT(ParseError("[1.x]").message(),
              HasSubstr("at byte 3 (line 1, column 4): expected a digit after "
                        "'.', found 'x'"));
  EXPECT_THAT(ParseError("[1e+]").message(),
              HasSubstr("at byte 4 (line 1, column 5): expected a digit in the "
                        "exponent, found ']'"));
  EXPECT_THAT(ParseError("-").message(),
              HasSubstr("at byte 1 (line 1, column 2): expected a digit, found "
                        "end of input"));
  EXPECT_THAT(ParseError("[true, nul]").message(),
              HasSubstr("at byte 7 (line 1, column 8): invalid literal, "
                        "expected 'null'"));
  EXPECT_THAT(ParseError(R"(["ok", "x\ud83d\u0041"])").message(),
              HasSubstr("at byte 9 (line 1, column 10): high surrogate not "
                        "followed by a low surrogate"));
  EXPECT_THAT(ParseError(R"(["x\ud83d"])").message(),
              HasSubstr("at byte 3 (line 1, column 4): high surrogate not "
                        "followed by a \\u low surrogate"));
  EXPECT_THAT(
      ParseError(R"(["ab\ude00"])").message(),
      HasSubstr("at byte 4 (line 1, column 5): unpaired low surrogate"));
  EXPECT_THAT(ParseError(R"({"k\q": 1})").message(),
              HasSubstr("at byte 3 (line 1, column 4): invalid escape"));
  EXPECT_THAT(ParseError("[\"\xC3\xA9\xE2\x82\"]").message(),
              HasSubstr("at byte 4 (line 1, column 5): invalid UTF-8"));
  EXPECT_THAT(ParseError("[\"a\x80\"]").message(),
              HasSubstr("at byte 3 (line 1, column 4): invalid UTF-8"));
  EXPECT_THAT(ParseError("[\"a\tb\"]").message(),
              HasSubstr("at byte 3 (line 1, column 4): raw control character "
                        "0x09"));
  EXPECT_THAT(ParseError("{\"a\" : 1 , }").message(),
              HasSubstr("at byte 11 (line 1, column 12): expected a string "
                        "key, found '}'"));
  EXPECT_THAT(ParseError("{\"a\" : }").message(),
              HasSubstr("at byte 7 (line 1, column 8): expected a value, "
                        "found '}'"));
  EXPECT_THAT(ParseError("[1e999, 2]").message(),
              HasSubstr("at byte 1 (line 1, column 2): number out of range"));
}

TEST(JsonTest, RejectsByteOrderMark) {
  EXPECT_THAT(ParseError("\xEF\xBB\xBF{}").message(),
              HasSubstr("at byte 0 (line 1, column 1): expected a value, found "
                        "byte 0xef"));
}

TEST(JsonTest, LargeIntegers) {
  // Beyond int64: a double, not an exact integer.
  absl::StatusOr<JsonValue> value = ParseJson(
      "[9223372036854775807, "
      "9223372036854775808, "
      "-9223372036854775808, "
      "100000000000000000000000]");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(value->array()[0].AsInt64(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(value->array()[1].AsInt64(), std::nullopt);
  EXPECT_DOUBLE_EQ(value->array()[1].number_value(), 9223372036854775808.0);
  EXPECT_EQ(value->array()[2].AsInt64(), std::numeric_limits<int64_t>::min());
  EXPECT_DOUBLE_EQ(value->array()[3].number_value(), 1e23);
}

TEST(JsonTest, SerializeRoundTrips) {
  const std::string text =
      R"({"name":"a\"\\\n\u0001\u00e9","n":[0,-1,2.5,1e+30,9007199254740993,)"
      R"(0.1,-3.0000000000000004e-05],"t":true,"f":false,"z":null,"o":{}})";
  absl::StatusOr<JsonValue> value = ParseJson(text);
  ASSERT_TRUE(value.ok()) << value.status();
  const std::string serialized = SerializeJson(*value);
  absl::StatusOr<JsonValue> reparsed = ParseJson(serialized);
  ASSERT_TRUE(reparsed.ok()) << reparsed.status() << " in " << serialized;
  EXPECT_EQ(SerializeJson(*reparsed), serialized);
  const JsonValue::Array& numbers = reparsed->Find("n")->array();
  EXPECT_EQ(numbers[4].AsInt64(), int64_t{9007199254740993});
  EXPECT_EQ(numbers[5].number_value(), 0.1);
  EXPECT_EQ(numbers[6].number_value(), -3.0000000000000004e-05);
  EXPECT_EQ(reparsed->Find("name")->string_value(), "a\"\\\n\x01\xC3\xA9");
}

TEST(JsonTest, BuildsValuesInCode) {
  const JsonValue value = JsonValue::MakeObject(
      {{"shape",
        JsonValue::MakeArray({JsonValue::Integer(3), JsonValue::Integer(4)})},
       {"dtype", JsonValue::String("F32")},
       {"lr", JsonValue::Number(0.003)},
       {"ok", JsonValue::Bool(true)},
       {"none", JsonValue()}});
  EXPECT_EQ(
      SerializeJson(value),
      R"({"shape":[3,4],"dtype":"F32","lr":0.003,"ok":true,"none":null})");
}

// No input may crash the parser: mutate a valid document at random.
TEST(JsonTest, RandomMutationsNeverCrash) {
  const std::string seed_text =
      R"({"a": [1, -2.5e3, "x\u00e9\ud83d\ude00", {"b": null}], "c": true})";
  std::mt19937 rng(7);
  int accepted = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string text = seed_text;
    const int edits = 1 + rng() % 4;
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % (text.size() + 1);
      switch (rng() % 3) {
        case 0:
          if (pos < text.size()) text[pos] = static_cast<char>(rng() % 256);
          break;
        case 1:
          text.insert(pos, 1, static_cast<char>(rng() % 256));
          break;
        case 2:
          if (pos < text.size()) text.erase(pos, 1);
          break;
      }
    }
    absl::StatusOr<JsonValue> value = ParseJson(text);
    if (value.ok()) {
      ++accepted;
      // Whatever parses must serialise to something that parses again.
      EXPECT_TRUE(ParseJson(SerializeJson(*value)).ok()) << text;
    } else {
      EXPECT_EQ(value.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(value.status().message(), HasSubstr("invalid JSON at byte"));
    }
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace saetrack::format
