#include "format/tokenizer.h"

#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "format/internal/unicode.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef SAETRACK_PYTHIA_TOKENIZER
#error "SAETRACK_PYTHIA_TOKENIZER must name testdata/pythia-20b-tokenizer.json"
#endif
#ifndef SAETRACK_TOKENIZER_GOLDEN
#error \
    "SAETRACK_TOKENIZER_GOLDEN must name testdata/pythia_tokenizer_golden.json"
#endif
#ifndef SAETRACK_TINY_SHAKESPEARE
#error "SAETRACK_TINY_SHAKESPEARE must name deploy/demo/tinyshakespeare.txt"
#endif
#ifndef SAETRACK_SHAKESPEARE_BPE
#error "SAETRACK_SHAKESPEARE_BPE must name testdata/shakespeare-bpe-4096.json"
#endif
#ifndef SAETRACK_SHAKESPEARE_BPE_GOLDEN
#error \
    "SAETRACK_SHAKESPEARE_BPE_GOLDEN must name testdata/shakespeare_bpe_golden.json"
#endif

namespace saetrack::format {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Ids looked up by hand in testdata/pythia-20b-tokenizer.json.
constexpr uint32_t kHello = 12092;            // "Hello"
constexpr uint32_t kSpaceWorld = 1533;        // "Ġworld"
constexpr uint32_t kEndOfText = 0;            // added token "<|endoftext|>"
constexpr uint32_t kTwoSpaces = 50276;        // added token "  "
constexpr uint32_t kPythiaVocabSize = 50277;  // largest added id 50276, + 1

// A case of a golden file written by testdata/make_tokenizer_golden.js:
// the text, its NFC form and Hugging Face's ids for it.
struct GoldenCase {
  std::string text;
  std::string nfc;
  std::vector<uint32_t> ids;
};

// The cases of golden file `path`; a test failure (and no cases) when it
// cannot be read or has the wrong shape.
std::vector<GoldenCase> ReadGolden(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    ADD_FAILURE() << text.status();
    return {};
  }
  absl::StatusOr<JsonValue> golden = ParseJson(*text, path);
  if (!golden.ok() || !golden->is_array()) {
    ADD_FAILURE() << path << ": not a JSON array: " << golden.status();
    return {};
  }
  std::vector<GoldenCase> cases;
  for (const JsonValue& entry : golden->array()) {
    const JsonValue* input = entry.Find("text");
    const JsonValue* nfc = entry.Find("nfc");
    const JsonValue* ids = entry.Find("ids");
    if (input == nullptr || !input->is_string() || nfc == nullptr ||
        !nfc->is_string() || ids == nullptr || !ids->is_array()) {
      ADD_FAILURE() << path << ": a case without text, nfc or ids";
      return {};
    }
    GoldenCase& c = cases.emplace_back();
    c.text = input->string_value();
    c.nfc = nfc->string_value();
    for (const JsonValue& id : ids->array()) {
      c.ids.push_back(static_cast<uint32_t>(id.AsInt64().value_or(-1)));
    }
  }
  return cases;
}

// One Pythia tokenizer for the whole suite: loading parses 2.4 MB of JSON.
class PythiaTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Tokenizer> loaded =
        Tokenizer::Load(SAETRACK_PYTHIA_TOKENIZER);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = new Tokenizer(*std::move(loaded));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  static std::vector<uint32_t> EncodeOk(const std::string& text) {
    absl::StatusOr<std::vector<uint32_t>> ids = tokenizer_->Encode(text);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<uint32_t>{};
  }
  static uint32_t Id(const std::string& token) {
    std::optional<uint32_t> id = tokenizer_->TokenToId(token);
    EXPECT_TRUE(id.has_value()) << token;
    return id.value_or(~0u);
  }
  static void ExpectRoundTrip(const std::string& text) {
    absl::StatusOr<std::string> decoded = tokenizer_->Decode(EncodeOk(text));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text);
  }

  static Tokenizer* tokenizer_;
};

Tokenizer* PythiaTokenizerTest::tokenizer_ = nullptr;

TEST_F(PythiaTokenizerTest, VocabSizeCountsAddedTokens) {
  EXPECT_EQ(tokenizer_->vocab_size(), kPythiaVocabSize);
}

TEST_F(PythiaTokenizerTest, CommonWordsAreSingleTokens) {
  EXPECT_EQ(Id("Hello"), kHello);
  EXPECT_EQ(Id("\xC4\xA0world"), kSpaceWorld);  // "Ġworld"
  EXPECT_THAT(EncodeOk("Hello world"), ElementsAre(kHello, kSpaceWorld));
  EXPECT_THAT(EncodeOk("Hello"), ElementsAre(kHello));
}

TEST_F(PythiaTokenizerTest, EndOfTextIsItsAddedTokenId) {
  EXPECT_EQ(Id("<|endoftext|>"), kEndOfText);
  EXPECT_THAT(EncodeOk("<|endoftext|>"), ElementsAre(kEndOfText));
  EXPECT_THAT(EncodeOk("Hello<|endoftext|>Hello"),
              ElementsAre(kHello, kEndOfText, kHello));
  // Text right after an added token is a fresh piece: no space prefix.
  EXPECT_THAT(EncodeOk("<|endoftext|> world"),
              ElementsAre(kEndOfText, kSpaceWorld));
}

TEST_F(PythiaTokenizerTest, SpaceRunsBecomeAddedWhitespaceTokens) {
  // Pythia's added tokens "  " .. 24 spaces match before pre-tokenization,
  // leftmost-longest.
  EXPECT_THAT(EncodeOk("Hello  world"),
              ElementsAre(kHello, kTwoSpaces, Id("world")));
  EXPECT_THAT(EncodeOk("Hello   "), ElementsAre(kHello, kTwoSpaces - 1));
  // 25 spaces: the 24-space token (id 50254), then a single space.
  EXPECT_THAT(EncodeOk(std::string(25, ' ')),
              ElementsAre(50254, Id("\xC4\xA0")));
}

TEST_F(PythiaTokenizerTest, ContractionsAndPunctuationSplit) {
  EXPECT_THAT(EncodeOk("don't"), ElementsAre(Id("don"), Id("'t")));
  EXPECT_THAT(EncodeOk("Hello, world!"),
              ElementsAre(kHello, Id(","), kSpaceWorld, Id("!")));
}

TEST_F(PythiaTokenizerTest, InvalidUtf8RoundTripsThroughByteTokens) {
  // A lone continuation byte 0x80 stands for "Ģ" (U+0122) in the
  // byte-level alphabet.
  EXPECT_THAT(EncodeOk("\x80"), ElementsAre(Id("\xC4\xA2")));
  // Truncated, surrogate and beyond-U+10FFFF sequences.
  ExpectRoundTrip(
      "\x80\xBF abc \xC3( \xED\xA0\x80 \xF4\x90\x80\x80 tail\xE4\xB8");
}

TEST_F(PythiaTokenizerTest, BytesWithoutTokensAreRefused) {
  // Pythia has no token for the bytes that never occur in UTF-8.
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer_->Encode("ok \xFF");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ids.status().message(), HasSubstr("byte 0xFF at offset 3"));
}

TEST_F(PythiaTokenizerTest, UnicodeTextRoundTrips) {
  ExpectRoundTrip(
      "naïve café Ελληνικά Русский 日本語 中文 한국어 😀🎉 ٣ ²\t\n\r\n "
      "\u00a0nbsp\u2003em  x   ");
}

TEST_F(PythiaTokenizerTest, NfcNormalisesTextAsHuggingFaceDoes) {
  ExpectRoundTrip("caf\xC3\xA9");  // precomposed é: already NFC
  // e + COMBINING ACUTE ACCENT is tokenized as its NFC form, precomposed é.
  EXPECT_EQ(EncodeOk("cafe\xCC\x81"), EncodeOk("caf\xC3\xA9"));
  // ANGSTROM SIGN -> Å; A + COMBINING RING ABOVE -> Å.
  EXPECT_EQ(EncodeOk("\xE2\x84\xAB"), EncodeOk("\xC3\x85"));
  EXPECT_EQ(EncodeOk("A\xCC\x8A"), EncodeOk("\xC3\x85"));
  // NFC text with combining marks that compose with nothing is kept as is
  // (DEVANAGARI VIRAMA; q + COMBINING ACUTE ACCENT).
  ExpectRoundTrip("\xE0\xA4\x95\xE0\xA5\x8D\xE0\xA4\xB7");  // क्ष
  ExpectRoundTrip("q\xCC\x81");
  // Bytes that are not UTF-8 next to text NFC changes stay as they are.
  absl::StatusOr<std::vector<uint32_t>> ids =
      tokenizer_->Encode("e\xCC\x81\xFF");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PythiaTokenizerTest, DecodeRejectsOutOfRangeIds) {
  absl::StatusOr<std::string> text =
      tokenizer_->Decode({kHello, kPythiaVocabSize});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(),
              HasSubstr("token id 50277 at position 1 is out of range"));
}

TEST_F(PythiaTokenizerTest, DecodeOfSpecialTokensIsVerbatim) {
  absl::StatusOr<std::string> text =
      tokenizer_->Decode({kHello, kTwoSpaces, kEndOfText});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "Hello  <|endoftext|>");
}

TEST_F(PythiaTokenizerTest, TinyShakespeareRoundTrips) {
  absl::StatusOr<std::string> text =
      ReadFileToString(SAETRACK_TINY_SHAKESPEARE);
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_GT(text->size(), 1000000u);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<uint32_t> ids = EncodeOk(*text);
  const std::chrono::duration<double> seconds =
      std::chrono::steady_clock::now() - start;
  // BPE compresses English about 3-4x; far fewer ids than bytes.
  EXPECT_GT(ids.size(), text->size() / 6);
  EXPECT_LT(ids.size(), text->size() / 2);
  absl::StatusOr<std::string> decoded = tokenizer_->Decode(ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(*decoded == *text) << "decode(encode(x)) differs from x";
  std::cout << "tiny shakespeare: " << text->size() << " bytes -> "
            << ids.size() << " tokens in " << seconds.count() << " s\n";
}

// Compares with the ids of Hugging Face's own library (committed; made by
// testdata/make_tokenizer_golden.js with the npm `tokenizers` 0.23.2).
TEST_F(PythiaTokenizerTest, TokenizerGoldenTest) {
  const std::vector<GoldenCase> golden = ReadGolden(SAETRACK_TOKENIZER_GOLDEN);
  ASSERT_FALSE(golden.empty());
  for (const GoldenCase& entry : golden) {
    const std::vector<uint32_t> actual = EncodeOk(entry.text);
    EXPECT_EQ(actual, entry.ids) << "text: " << JsonQuote(entry.text);
    // The ids decode to the text as NFC normalised it.
    absl::StatusOr<std::string> decoded = tokenizer_->Decode(actual);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, entry.nfc) << "text: " << JsonQuote(entry.text);
  }
}

// ---------------------------------------------------------------------------
// A tiny byte-level BPE built in the test, to check split points and merge
// order exactly: merges across a split point must never apply.

std::string ByteLevelChar(int byte) {
  int extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : extra++;
    if (b == byte) {
      std::string utf8;
      if (cp < 0x80) {
        utf8 += static_cast<char>(cp);
      } else {
        utf8 += static_cast<char>(0xC0 | (cp >> 6));
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      }
      return utf8;
    }
  }
  return "";
}

struct TinyBpeSpec {
  std::vector<std::pair<std::string, std::string>> merges;
  bool merges_as_arrays = false;
  bool add_prefix_space = false;
  std::string normalizer = "null";
  std::string model_type = "BPE";
};

std::string TinyBpeJson(const TinyBpeSpec& spec) {
  JsonValue::Object vocab;
  int next_id = 0;
  for (int b = 0; b < 256; ++b) {
    vocab.emplace_back(ByteLevelChar(b), JsonValue::Integer(next_id++));
  }
  JsonValue::Array merges;
  for (const auto& [left, right] : spec.merges) {
    vocab.emplace_back(left + right, JsonValue::Integer(next_id++));
    merges.push_back(spec.merges_as_arrays
                         ? JsonValue::MakeArray({JsonValue::String(left),
                                                 JsonValue::String(right)})
                         : JsonValue::String(left + " " + right));
  }
  const std::string model = SerializeJson(JsonValue::MakeObject({
      {"type", JsonValue::String(spec.model_type)},
      {"vocab", JsonValue::MakeObject(std::move(vocab))},
      {"merges", JsonValue::MakeArray(std::move(merges))},
  }));
  return "{\"added_tokens\": [], \"normalizer\": " + spec.normalizer +
         ", \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
         "\"add_prefix_space\": " +
         (spec.add_prefix_space ? "true" : "false") +
         "}, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": " + model + "}";
}

// Encodes with a tiny BPE and returns the tokens' byte-level spellings.
std::vector<std::string> TinyTokens(const TinyBpeSpec& spec,
                                    const std::string& text) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson(TinyBpeJson(spec), "tiny.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return {};
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer->Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  std::vector<std::string> tokens;
  for (uint32_t id : *ids) {
    absl::StatusOr<std::string> piece = tokenizer->Decode({id});
    tokens.push_back(piece.ok() ? *piece : "?");
  }
  return tokens;
}

const std::string kG = "\xC4\xA0";  // "Ġ", the byte-level space

TEST(TinyBpeTest, MergesApplyByRankWithinWords) {
  TinyBpeSpec spec;
  spec.merges = {{"b", "c"}, {"a", "b"}, {"a", "bc"}};
  // "bc" (rank 0) first, then "a"+"bc"; "ab" (rank 1) never gets a chance.
  EXPECT_THAT(TinyTokens(spec, "abc"), ElementsAre("abc"));
  EXPECT_THAT(TinyTokens(spec, "abab"), ElementsAre("ab", "ab"));
  spec.merges_as_arrays = true;
  EXPECT_THAT(TinyTokens(spec, "abc"), ElementsAre("abc"));
}

TEST(TinyBpeTest, EqualRanksMergeLeftmostFirst) {
  TinyBpeSpec spec;
  spec.merges = {{"a", "a"}};
  EXPECT_THAT(TinyTokens(spec, "aaa"), ElementsAre("aa", "a"));
  EXPECT_THAT(TinyTokens(spec, "aaaa"), ElementsAre("aa", "aa"));
}

TEST(TinyBpeTest, MergesNeverCrossSplitPoints) {
  TinyBpeSpec spec;
  // Each of these would join two pieces of the GPT-2 split pattern.
  const std::string newline = ByteLevelChar('\n');
  spec.merges = {{"a", kG},
                 {kG, kG},
                 {"a", "1"},
                 {"a", "!"},
                 {"!", "b"},
                 {kG, "b"},
                 {"'", "s"},
                 {"d", "'"},
                 {kG, newline},
                 {newline, kG},
                 {"a", newline},
                 {newline, "b"},
                 {"a", ByteLevelChar(0xCE)},
                 {"a", ByteLevelChar(0xE4)},
                 {"a", ByteLevelChar(0xC2)}};
  EXPECT_THAT(TinyTokens(spec, "a b"), ElementsAre("a", " b"));
  // "\s+(?!\S)": a space run gives its last space to the next word.
  EXPECT_THAT(TinyTokens(spec, "a  b"), ElementsAre("a", " ", " b"));
  // ... and keeps it at the end of the text.
  EXPECT_THAT(TinyTokens(spec, "a  "), ElementsAre("a", "  "));
  EXPECT_THAT(TinyTokens(spec, "a1"), ElementsAre("a", "1"));
  EXPECT_THAT(TinyTokens(spec, "a!b"), ElementsAre("a", "!", "b"));
  EXPECT_THAT(TinyTokens(spec, "d's"), ElementsAre("d", "'s"));
  // Contractions are case-sensitive: "'S" is punctuation then a letter.
  EXPECT_THAT(TinyTokens(spec, "d'S"), ElementsAre("d", "'", "S"));
  // A newline is not a space prefix: "\n" then "b".
  EXPECT_THAT(TinyTokens(spec, "a\nb"), ElementsAre("a", "\n", "b"));
  EXPECT_THAT(TinyTokens(spec, "a \n b"), ElementsAre("a", " \n", " b"));
  // Letters of any script continue a run (the merges join "a" with the
  // first byte of the next letter); U+00A0 is whitespace, so it does not.
  EXPECT_THAT(TinyTokens(spec, "a\xCE\xB1"), ElementsAre("a\xCE", "\xB1"));
  EXPECT_THAT(TinyTokens(spec, "a\xE4\xB8\xAD"),
              ElementsAre("a\xE4", "\xB8", "\xAD"));
  EXPECT_THAT(TinyTokens(spec, "a\xC2\xA0"), ElementsAre("a", "\xC2", "\xA0"));
}

TEST(TinyBpeTest, AddPrefixSpace) {
  TinyBpeSpec spec;
  spec.merges = {{kG, "b"}};
  spec.add_prefix_space = true;
  EXPECT_THAT(TinyTokens(spec, "b"), ElementsAre(" b"));
  EXPECT_THAT(TinyTokens(spec, " b"), ElementsAre(" b"));
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::Load("/nonexistent/tokenizer.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("/nonexistent/tokenizer.json"));
}

TEST(TokenizerLoadTest, BadJsonNamesTheOrigin) {
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson("{\"model\": ", "tok.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("tok.json: "));
}

TEST(TokenizerLoadTest, UnsupportedModelTypeNamesTheField) {
  TinyBpeSpec spec;
  spec.model_type = "WordPiece";
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson(TinyBpeJson(spec), "tok.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(
      tokenizer.status().message(),
      HasSubstr("tok.json: model.type: \"WordPiece\" is not supported"));
}

TEST(TokenizerLoadTest, UnsupportedNormalizerNamesTheField) {
  TinyBpeSpec spec;
  spec.normalizer = "{\"type\": \"NFKC\"}";
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson(TinyBpeJson(spec), "tok.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("tok.json: normalizer.type: \"NFKC\""));
}

TEST(TokenizerLoadTest, MissingMergesNamesTheField) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(
      "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
      "\"model\": {\"type\": \"BPE\", \"vocab\": {}}}",
      "tok.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("tok.json: model.vocab: lacks the byte-level token"));
}

TEST(TokenizerLoadTest, MergeOfUnknownTokenNamesTheMerge) {
  std::string json = TinyBpeJson(TinyBpeSpec{});
  json.replace(json.find("\"merges\":[]"), 11, "\"merges\":[\"a zz\"]");
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(json, "tok.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("tok.json: model.merges[0]: token \"zz\" is not in "
                        "model.vocab"));
}

TEST(TokenizerLoadTest, MissingModelNamesTheField) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(
      "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "tok.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("tok.json: model: missing"));
}

TEST(UnicodeTest, LetterAndNumberTablesCoverTheMainScripts) {
  using internal::IsLetter;
  using internal::IsNumber;
  for (char32_t letter :
       {U'a', U'Z', U'é', U'ß', U'Ω', U'ж', U'Ѳ', U'א', U'ب', U'क', U'ก', U'中',
        U'龥', U'あ', U'カ', U'한', U'\U00020000'}) {
    EXPECT_TRUE(IsLetter(letter)) << static_cast<uint32_t>(letter);
    EXPECT_FALSE(IsNumber(letter)) << static_cast<uint32_t>(letter);
  }
  for (char32_t number :
       {U'0', U'9', U'²', U'½', U'٣', U'३', U'Ⅻ', U'〇', U'①'}) {
    EXPECT_TRUE(IsNumber(number)) << static_cast<uint32_t>(number);
    EXPECT_FALSE(IsLetter(number)) << static_cast<uint32_t>(number);
  }
  for (char32_t other : {U' ', U'!', U'\'', U'\u0301', U'€', U'😀', U'。'}) {
    EXPECT_FALSE(IsLetter(other)) << static_cast<uint32_t>(other);
    EXPECT_FALSE(IsNumber(other)) << static_cast<uint32_t>(other);
  }
  EXPECT_TRUE(internal::IsWhitespace(U'\u3000'));
  EXPECT_TRUE(internal::IsWhitespace(U'\u0085'));
  EXPECT_FALSE(internal::IsWhitespace(U'\u200B'));  // ZWSP is a format char
}

TEST(UnicodeTest, DecodeUtf8RejectsMalformedSequences) {
  char32_t cp = 0;
  EXPECT_EQ(internal::DecodeUtf8("\xE4\xB8\xAD", 3, &cp), 3);
  EXPECT_EQ(cp, U'中');
  EXPECT_EQ(internal::DecodeUtf8("\xF0\x9F\x98\x80", 4, &cp), 4);
  EXPECT_EQ(cp, U'😀');
  EXPECT_EQ(internal::DecodeUtf8("\xC0\x80", 2, &cp), 0);          // overlong
  EXPECT_EQ(internal::DecodeUtf8("\xED\xA0\x80", 3, &cp), 0);      // surrogate
  EXPECT_EQ(internal::DecodeUtf8("\xF4\x90\x80\x80", 4, &cp), 0);  // > 10FFFF
  EXPECT_EQ(internal::DecodeUtf8("\xE4\xB8", 2, &cp), 0);          // truncated
  EXPECT_EQ(internal::DecodeUtf8("\x80", 1, &cp), 0);  // lone continuation
}

// ---------------------------------------------------------------------------
// TrainByteLevelBpe.

// Trains on `corpus` and loads the result.
Tokenizer TrainOk(std::string_view corpus, uint32_t vocab_size,
                  int64_t min_frequency = 2) {
  BpeTrainOptions options;
  options.vocab_size = vocab_size;
  options.min_frequency = min_frequency;
  absl::StatusOr<std::string> json = TrainByteLevelBpe(corpus, options);
  EXPECT_TRUE(json.ok()) << json.status();
  absl::StatusOr<Tokenizer> tokenizer =
      Tokenizer::FromJson(json.value_or("{}"), "trained");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *std::move(tokenizer);
}

std::vector<uint32_t> Ids(const Tokenizer& tokenizer, std::string_view text) {
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer.Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.value_or(std::vector<uint32_t>{});
}

// Words "aab" x1, " aab" x2, " ab" x1: pair counts (a,b) 4, (a,a) 3,
// (" ",a) 3, so "ab" first; then (a,ab) 3 -> "aab"; then (" ",aab) 2 ->
// " aab"; (" ",ab) occurs once, below min_frequency 2.
TEST(BpeTrainerTest, MergesTheMostFrequentPairFirst) {
  const Tokenizer tokenizer = TrainOk("aab aab aab ab", 4096);
  EXPECT_EQ(tokenizer.merge_count(), 3u);
  EXPECT_EQ(tokenizer.vocab_size(), 256u + 3 + 1);
  EXPECT_EQ(tokenizer.TokenToId("ab"), 256u);
  EXPECT_EQ(tokenizer.TokenToId("aab"), 257u);
  EXPECT_EQ(tokenizer.TokenToId("\u0120aab"), 258u);
  EXPECT_EQ(tokenizer.TokenToId("<|endoftext|>"), 259u);
  EXPECT_THAT(Ids(tokenizer, "aab ab aab<|endoftext|>"),
              ElementsAre(257, 32, 256, 258, 259));
  // Ids 0..255 are the bytes in byte order.
  EXPECT_THAT(Ids(tokenizer, "\x01z\xff"), ElementsAre(1, 'z', 255));
}

// Equal counts: the pair whose merged spelling sorts first wins, every time.
TEST(BpeTrainerTest, TiesGoToTheSmallestSpelling) {
  // Words "xy", " xy", " yz" x2: (x,y) 2, (" ",y) 2, (y,z) 2, (" ",x) 1.
  // " y" < "xy" < "yz"; then (" y",z) 2 gives " yz" < "xy"; then "xy".
  const Tokenizer tokenizer = TrainOk("xy xy yz yz", 4096);
  EXPECT_EQ(tokenizer.merge_count(), 3u);
  EXPECT_EQ(tokenizer.TokenToId("\u0120y"), 256u);
  EXPECT_EQ(tokenizer.TokenToId("\u0120yz"), 257u);
  EXPECT_EQ(tokenizer.TokenToId("xy"), 258u);
  EXPECT_THAT(Ids(tokenizer, "xy yz"), ElementsAre(258, 257));
}

TEST(BpeTrainerTest, VocabSizeCapsTheMerges) {
  const Tokenizer tokenizer = TrainOk("aab aab aab ab", 258);
  EXPECT_EQ(tokenizer.merge_count(), 1u);
  EXPECT_EQ(tokenizer.vocab_size(), 258u);
  EXPECT_EQ(tokenizer.TokenToId("<|endoftext|>"), 257u);
  // min_frequency 1 also merges pairs seen once.
  EXPECT_EQ(TrainOk("aab aab aab ab", 4096, 1).merge_count(), 4u);
}

TEST(BpeTrainerTest, BadOptionsNameTheField) {
  BpeTrainOptions options;
  options.vocab_size = 256;
  absl::StatusOr<std::string> json = TrainByteLevelBpe("ab ab", options);
  EXPECT_EQ(json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(json.status().message(), HasSubstr("vocab_size"));
  options.vocab_size = 300;
  options.min_frequency = 0;
  json = TrainByteLevelBpe("ab ab", options);
  EXPECT_EQ(json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(json.status().message(), HasSubstr("min_frequency"));
}

TEST(BpeTrainerTest, EmptyCorpusGivesTheByteVocabulary) {
  const Tokenizer tokenizer = TrainOk("", 4096);
  EXPECT_EQ(tokenizer.merge_count(), 0u);
  EXPECT_EQ(tokenizer.vocab_size(), 257u);
}

// The committed testdata/shakespeare-bpe-4096.json is what TrainByteLevelBpe
// learns on Tiny Shakespeare at 4096 ids, and Hugging Face's `tokenizers`
// (npm 0.23.2, testdata/make_tokenizer_golden.js) encodes with it exactly
// as saetrack does.
class ShakespeareBpeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> corpus =
        ReadFileToString(SAETRACK_TINY_SHAKESPEARE);
    ASSERT_TRUE(corpus.ok()) << corpus.status();
    corpus_ = new std::string(*std::move(corpus));
    BpeTrainOptions options;
    options.vocab_size = 4096;
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<std::string> json = TrainByteLevelBpe(*corpus_, options);
    ASSERT_TRUE(json.ok()) << json.status();
    std::cout << "learnt 4096 ids on " << corpus_->size() << " bytes in "
              << std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - start)
                     .count()
              << " s\n";
    json_ = new std::string(*std::move(json));
  }
  static void TearDownTestSuite() {
    delete corpus_;
    delete json_;
  }
  static std::string* corpus_;
  static std::string* json_;
};
std::string* ShakespeareBpeTest::corpus_ = nullptr;
std::string* ShakespeareBpeTest::json_ = nullptr;

TEST_F(ShakespeareBpeTest, MatchesTheCommittedTokenizer) {
  absl::StatusOr<std::string> committed =
      ReadFileToString(SAETRACK_SHAKESPEARE_BPE);
  ASSERT_TRUE(committed.ok()) << committed.status();
  // Regenerate with: saetrack-tokenize --learn_bpe --vocab_size 4096
  //   --in deploy/demo/tinyshakespeare.txt --out <that file>
  EXPECT_TRUE(*committed == *json_)
      << "TrainByteLevelBpe no longer learns " << SAETRACK_SHAKESPEARE_BPE;
}

TEST_F(ShakespeareBpeTest, VocabularyHasOneIdPerTokenAndNoHoles) {
  absl::StatusOr<JsonValue> parsed = ParseJson(*json_, "learnt");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const JsonValue* model = parsed->Find("model");
  ASSERT_NE(model, nullptr);
  const JsonValue* vocab = model->Find("vocab");
  ASSERT_TRUE(vocab != nullptr && vocab->is_object());
  std::set<std::string> names;
  std::set<int64_t> ids;
  for (const auto& [name, id] : vocab->members()) {
    EXPECT_TRUE(names.insert(name).second) << "duplicate token " << name;
    EXPECT_TRUE(ids.insert(id.AsInt64().value_or(-1)).second);
  }
  // Ids 0..4094, then <|endoftext|> as the added token 4095.
  ASSERT_EQ(ids.size(), 4095u);
  EXPECT_EQ(*ids.begin(), 0);
  EXPECT_EQ(*ids.rbegin(), 4094);
}

TEST_F(ShakespeareBpeTest, CommonWordsAndNamesAreSingleTokens) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(*json_, "learnt");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(tokenizer->vocab_size(), 4096u);
  EXPECT_EQ(tokenizer->TokenToId("<|endoftext|>"), 4095u);
  for (const char* word : {" the", " and", " thou", " king", " love", " Romeo",
                           "ROMEO", "GLOUCESTER", "MENENIUS"}) {
    EXPECT_EQ(Ids(*tokenizer, word).size(), 1u) << "\"" << word << "\"";
  }
  const std::vector<uint32_t> ids = Ids(*tokenizer, *corpus_);
  // Byte-level BPE at 4k ids on English: about 3.5 bytes a token.
  EXPECT_GT(static_cast<double>(corpus_->size()) / ids.size(), 3.0);
  absl::StatusOr<std::string> decoded = tokenizer->Decode(ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(*decoded == *corpus_) << "decode(encode(x)) differs from x";
}

TEST_F(ShakespeareBpeTest, HuggingFaceEncodesIdentically) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(*json_, "learnt");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  size_t checked = 0;
  for (const GoldenCase& entry : ReadGolden(SAETRACK_SHAKESPEARE_BPE_GOLDEN)) {
    EXPECT_EQ(Ids(*tokenizer, entry.text), entry.ids)
        << "text: " << JsonQuote(entry.text);
    checked += entry.ids.size();
  }
  // The corner cases and a long stretch of the corpus itself.
  EXPECT_GT(checked, 10000u);
}

}  // namespace
}  // namespace saetrack::format

namespace saetrack::format {
namespace {

TEST(EscapeInvalidUtf8Test, KeepsValidTextAndEscapesStrayBytes) {
  EXPECT_EQ(EscapeInvalidUtf8("plain"), "plain");
  EXPECT_EQ(EscapeInvalidUtf8("\xc3\xa9t\xc3\xa9"), "\xc3\xa9t\xc3\xa9");
  // Half of a two-byte character, a lone continuation byte, an overlong
  // encoding of '/'.
  EXPECT_EQ(EscapeInvalidUtf8("a\xc3"), "a\\xc3");
  EXPECT_EQ(EscapeInvalidUtf8("\xa9x"), "\\xa9x");
  EXPECT_EQ(EscapeInvalidUtf8("\xc0\xaf"), "\\xc0\\xaf");
}

}  // namespace
}  // namespace saetrack::format
