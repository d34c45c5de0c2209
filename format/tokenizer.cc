#include "format/tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#include <unicode/utypes.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/absl_compat.h"
#include "base/status_macros.h"
#include "format/internal/unicode.h"
#include "format/json.h"
#include "format/mapped_file.h"

namespace saetrack::format {
namespace {

using internal::DecodeUtf8;

// The NFC form of `text` when it differs, else nullopt. Runs of bytes that
// are not valid UTF-8 are kept as they are (NFC leaves non-text alone; ICU
// would replace them with U+FFFD). Errors: kInternal when ICU fails, naming
// `offset`, the segment's byte offset in the input.
absl::StatusOr<std::optional<std::string>> NormalizeNfc(std::string_view text,
                                                        size_t offset) {
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(error);
  if (U_FAILURE(error)) {
    return absl::InternalError(
        absl::StrCat("NFC normalizer: ICU: ", u_errorName(error)));
  }
  std::string out;
  bool changed = false;
  size_t i = 0;
  while (i < text.size()) {
    // The next maximal run of valid UTF-8, then the bytes that are not.
    size_t run_end = i;
    while (run_end < text.size()) {
      if (static_cast<unsigned char>(text[run_end]) < 0x80) {
        ++run_end;
        continue;
      }
      char32_t cp;
      const int length =
          DecodeUtf8(text.data() + run_end, text.size() - run_end, &cp);
      if (length == 0) break;
      run_end += length;
    }
    if (run_end > i) {
      const std::string_view run = text.substr(i, run_end - i);
      const icu::UnicodeString source = icu::UnicodeString::fromUTF8(
          icu::StringPiece(run.data(), static_cast<int32_t>(run.size())));
      error = U_ZERO_ERROR;
      if (nfc->isNormalized(source, error) && U_SUCCESS(error)) {
        out.append(run);
      } else {
        error = U_ZERO_ERROR;
        const icu::UnicodeString composed = nfc->normalize(source, error);
        if (U_FAILURE(error)) {
          return absl::InternalError(
              absl::StrCat("NFC normalizer: ICU failed on the text at byte ",
                           offset + i, ": ", u_errorName(error)));
        }
        composed.toUTF8String(out);
        changed = true;
      }
    }
    // Bytes that are not text pass through.
    i = run_end;
    while (i < text.size()) {
      char32_t cp;
      if (static_cast<unsigned char>(text[i]) < 0x80 ||
          DecodeUtf8(text.data() + i, text.size() - i, &cp) != 0) {
        break;
      }
      out.push_back(text[i]);
      ++i;
    }
  }
  if (!changed) return std::nullopt;
  return out;
}

// Bounds the id -> bytes table that a hostile file could otherwise make
// huge; far above real vocabularies (GPT-2 50257, Llama 3 128256).
constexpr uint64_t kMaxVocabSize = uint64_t{1} << 24;

// Bytes that can occur in valid UTF-8: all but C0, C1 and F5..FF.
bool OccursInUtf8(int byte) {
  return byte < 0xC0 || (byte >= 0xC2 && byte <= 0xF4);
}

// ---------------------------------------------------------------------------
// GPT-2's byte <-> character map: printable Latin-1 bytes stand for
// themselves, the other 68 bytes for U+0100.. in byte order, so that every
// byte-level token is printable text.

struct ByteLevelAlphabet {
  std::array<char32_t, 256> char_of_byte;
  std::array<std::string, 256> utf8_of_byte;
  // Index: code point < 324; -1 where the code point stands for no byte.
  std::array<int16_t, 324> byte_of_char;
};

void AppendUtf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* const alphabet = [] {
    auto* a = new ByteLevelAlphabet;
    a->byte_of_char.fill(-1);
    char32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : next_extra++;
      a->char_of_byte[b] = cp;
      AppendUtf8(cp, a->utf8_of_byte[b]);
      a->byte_of_char[cp] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

std::string ByteLevelSpelling(std::string_view bytes) {
  const ByteLevelAlphabet& alphabet = Alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += alphabet.utf8_of_byte[b];
  return out;
}

// The bytes a model token stands for, or nullopt when one of its characters
// is outside the byte-level alphabet.
std::optional<std::string> ByteLevelBytes(std::string_view token) {
  const ByteLevelAlphabet& alphabet = Alphabet();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    char32_t cp;
    const int length = DecodeUtf8(token.data() + i, token.size() - i, &cp);
    if (length == 0 || cp >= alphabet.byte_of_char.size() ||
        alphabet.byte_of_char[cp] < 0) {
      return std::nullopt;
    }
    out += static_cast<char>(alphabet.byte_of_char[cp]);
    i += length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Pre-tokenization: the GPT-2 split pattern, by hand.

enum class CharClass : uint8_t { kLetter, kNumber, kWhitespace, kOther };

struct CharInfo {
  CharClass cls;
  int length;  // bytes
  char32_t code_point;
};

const std::array<CharClass, 128>& AsciiClasses() {
  static const std::array<CharClass, 128> classes = [] {
    std::array<CharClass, 128> c;
    for (char32_t cp = 0; cp < 128; ++cp) {
      c[cp] = internal::IsLetter(cp)       ? CharClass::kLetter
              : internal::IsNumber(cp)     ? CharClass::kNumber
              : internal::IsWhitespace(cp) ? CharClass::kWhitespace
                                           : CharClass::kOther;
    }
    return c;
  }();
  return classes;
}

// REQUIRES: pos < text.size().
CharInfo Classify(std::string_view text, size_t pos) {
  const unsigned char lead = text[pos];
  if (lead < 0x80) return {AsciiClasses()[lead], 1, lead};
  char32_t cp;
  const int length = DecodeUtf8(text.data() + pos, text.size() - pos, &cp);
  // An undecodable byte is one code point of the "anything else" class.
  if (length == 0) return {CharClass::kOther, 1, 0xFFFD};
  const CharClass cls = internal::IsLetter(cp)       ? CharClass::kLetter
                        : internal::IsNumber(cp)     ? CharClass::kNumber
                        : internal::IsWhitespace(cp) ? CharClass::kWhitespace
                                                     : CharClass::kOther;
  return {cls, length, cp};
}

// Length of the contraction ('s 't 're 've 'm 'll 'd, case-sensitive) at
// text[pos] == '\'', or 0.
size_t ContractionLength(std::string_view text, size_t pos) {
  if (pos + 1 >= text.size()) return 0;
  const char c1 = text[pos + 1];
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char c2 = text[pos + 2];
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
      (c1 == 'l' && c2 == 'l')) {
    return 3;
  }
  return 0;
}

// Calls emit(word) for each match of
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// over `text`, in order. The matches tile the text.
template <typename Emit>
void SplitGpt2Words(std::string_view text, Emit&& emit) {
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const CharInfo c = Classify(text, i);
    if (c.code_point == '\'') {
      const size_t length = ContractionLength(text, i);
      if (length > 0) {
        emit(text.substr(i, length));
        i += length;
        continue;
      }
    }
    // " ?X+" for X in letter / number / other: an optional U+0020 and a run.
    size_t run_start = i;
    CharInfo first = c;
    if (c.code_point == ' ' && i + 1 < n) {
      const CharInfo next = Classify(text, i + 1);
      if (next.cls != CharClass::kWhitespace) {
        run_start = i + 1;
        first = next;
      }
    }
    if (first.cls != CharClass::kWhitespace) {
      size_t end = run_start + first.length;
      while (end < n) {
        const CharInfo e = Classify(text, end);
        if (e.cls != first.cls) break;
        end += e.length;
      }
      emit(text.substr(i, end - i));
      i = end;
      continue;
    }
    // "\s+(?!\S)|\s+": a whitespace run, less its last character when a
    // non-space follows and the run has more than one (that character then
    // prefixes the next word when it is U+0020).
    size_t end = i + c.length;
    size_t last_start = i;
    while (end < n) {
      const CharInfo e = Classify(text, end);
      if (e.cls != CharClass::kWhitespace) break;
      last_start = end;
      end += e.length;
    }
    if (end < n && last_start > i) end = last_start;
    emit(text.substr(i, end - i));
    i = end;
  }
}

// ---------------------------------------------------------------------------
// Reading tokenizer.json.

class FieldReader {
 public:
  explicit FieldReader(std::string_view origin)
      : prefix_(origin.empty() ? "" : absl::StrCat(AsAbsl(origin), ": ")) {}

  absl::Status Invalid(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix_, AsAbsl(field), ": ", AsAbsl(what)));
  }
  absl::Status Unsupported(std::string_view field,
                           std::string_view what) const {
    return absl::UnimplementedError(
        absl::StrCat(prefix_, AsAbsl(field), ": ", AsAbsl(what)));
  }

  absl::Status ExpectType(const JsonValue& value, std::string_view field,
                          JsonValue::Type type) const {
    if (value.type() == type) return absl::OkStatus();
    return Invalid(
        field, absl::StrCat("expected ", JsonValue::TypeName(type), ", got ",
                            JsonValue::TypeName(value.type())));
  }

  // The member, or nullptr when absent or null.
  static const JsonValue* Optional(const JsonValue& object,
                                   std::string_view key) {
    const JsonValue* value = object.Find(key);
    return value == nullptr || value->is_null() ? nullptr : value;
  }

  absl::StatusOr<bool> Bool(const JsonValue& object, std::string_view field,
                            std::string_view key, bool default_value) const {
    const JsonValue* value = Optional(object, key);
    if (value == nullptr) return default_value;
    SAETRACK_RETURN_IF_ERROR(
        ExpectType(*value, Join(field, key), JsonValue::Type::kBool));
    return value->bool_value();
  }

  // A token id: an integer in [0, kMaxVocabSize).
  absl::StatusOr<uint32_t> Id(const JsonValue& value,
                              std::string_view field) const {
    const std::optional<int64_t> id = value.AsInt64();
    if (!id.has_value() || *id < 0 ||
        static_cast<uint64_t>(*id) >= kMaxVocabSize) {
      return Invalid(
          field, absl::StrCat("expected a token id, an integer in [0, ",
                              kMaxVocabSize, "), got ", SerializeJson(value)));
    }
    return static_cast<uint32_t>(*id);
  }

  // The "type" of a component object (`normalizer`, `decoder`, ...), or ""
  // when the component is absent or null.
  absl::StatusOr<std::string> ComponentType(const JsonValue& root,
                                            std::string_view key) const {
    const JsonValue* component = Optional(root, key);
    if (component == nullptr) return std::string();
    SAETRACK_RETURN_IF_ERROR(
        ExpectType(*component, key, JsonValue::Type::kObject));
    const JsonValue* type = component->Find("type");
    const std::string field = Join(key, "type");
    if (type == nullptr) return Invalid(field, "missing");
    SAETRACK_RETURN_IF_ERROR(
        ExpectType(*type, field, JsonValue::Type::kString));
    return type->string_value();
  }

  static std::string Join(std::string_view field, std::string_view key) {
    return absl::StrCat(AsAbsl(field), ".", AsAbsl(key));
  }

 private:
  std::string prefix_;
};

}  // namespace

// ---------------------------------------------------------------------------

void Tokenizer::AddedTokenMatcher::Build() {
  for (auto& bucket : by_first_byte) bucket.clear();
  for (uint32_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].content.empty()) continue;
    by_first_byte[static_cast<unsigned char>(tokens[i].content[0])].push_back(
        i);
  }
  for (auto& bucket : by_first_byte) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](uint32_t a, uint32_t b) {
      return tokens[a].content.size() > tokens[b].content.size();
    });
  }
}

int Tokenizer::AddedTokenMatcher::MatchAt(std::string_view text,
                                          size_t pos) const {
  for (uint32_t index : by_first_byte[static_cast<unsigned char>(text[pos])]) {
    const std::string& content = tokens[index].content;
    if (text.size() - pos >= content.size() &&
        text.compare(pos, content.size(), content) == 0) {
      return static_cast<int>(index);
    }
  }
  return -1;
}

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& path) {
  SAETRACK_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return FromJson(text, path);
}

absl::StatusOr<Tokenizer> Tokenizer::FromJson(std::string_view text,
                                              std::string_view origin) {
  const FieldReader fields(origin);
  SAETRACK_ASSIGN_OR_RETURN(JsonValue root, ParseJson(text, origin));
  SAETRACK_RETURN_IF_ERROR(
      fields.ExpectType(root, "(root)", JsonValue::Type::kObject));

  Tokenizer tokenizer;

  // Pipeline components.
  SAETRACK_ASSIGN_OR_RETURN(std::string normalizer,
                            fields.ComponentType(root, "normalizer"));
  if (normalizer == "NFC") {
    tokenizer.nfc_ = true;
  } else if (!normalizer.empty()) {
    return fields.Unsupported("normalizer.type",
                              absl::StrCat("\"", normalizer,
                                           "\" is not supported (only null "
                                           "and \"NFC\")"));
  }
  SAETRACK_ASSIGN_OR_RETURN(std::string pre_tokenizer,
                            fields.ComponentType(root, "pre_tokenizer"));
  if (pre_tokenizer != "ByteLevel") {
    return fields.Unsupported(
        "pre_tokenizer.type",
        absl::StrCat(
            pre_tokenizer.empty() ? "null" : "\"" + pre_tokenizer + "\"",
            " is not supported (only \"ByteLevel\")"));
  }
  const JsonValue& byte_level = *root.Find("pre_tokenizer");
  // Hugging Face's ByteLevel defaults: add_prefix_space and use_regex true.
  SAETRACK_ASSIGN_OR_RETURN(
      tokenizer.add_prefix_space_,
      fields.Bool(byte_level, "pre_tokenizer", "add_prefix_space", true));
  SAETRACK_ASSIGN_OR_RETURN(
      tokenizer.use_regex_,
      fields.Bool(byte_level, "pre_tokenizer", "use_regex", true));
  for (const char* key : {"post_processor", "decoder"}) {
    SAETRACK_ASSIGN_OR_RETURN(std::string type,
                              fields.ComponentType(root, key));
    if (!type.empty() && type != "ByteLevel") {
      return fields.Unsupported(
          FieldReader::Join(key, "type"),
          absl::StrCat("\"", type,
                       "\" is not supported (only null and \"ByteLevel\")"));
    }
  }

  // The BPE model.
  const JsonValue* model = root.Find("model");
  if (model == nullptr) return fields.Invalid("model", "missing");
  SAETRACK_RETURN_IF_ERROR(
      fields.ExpectType(*model, "model", JsonValue::Type::kObject));
  const JsonValue* model_type = model->Find("type");
  if (model_type == nullptr) return fields.Invalid("model.type", "missing");
  SAETRACK_RETURN_IF_ERROR(
      fields.ExpectType(*model_type, "model.type", JsonValue::Type::kString));
  if (model_type->string_value() != "BPE") {
    return fields.Unsupported(
        "model.type", absl::StrCat("\"", model_type->string_value(),
                                   "\" is not supported (only \"BPE\")"));
  }
  if (const JsonValue* dropout = FieldReader::Optional(*model, "dropout")) {
    return fields.Unsupported(
        "model.dropout", absl::StrCat("BPE dropout (", SerializeJson(*dropout),
                                      ") is not supported; it must be null"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const JsonValue* affix = FieldReader::Optional(*model, key);
    if (affix != nullptr &&
        !(affix->is_string() && affix->string_value().empty())) {
      return fields.Unsupported(FieldReader::Join("model", key),
                                "must be null or empty");
    }
  }
  SAETRACK_ASSIGN_OR_RETURN(
      bool byte_fallback, fields.Bool(*model, "model", "byte_fallback", false));
  if (byte_fallback) {
    return fields.Unsupported("model.byte_fallback", "must be false");
  }
  SAETRACK_ASSIGN_OR_RETURN(
      tokenizer.ignore_merges_,
      fields.Bool(*model, "model", "ignore_merges", false));

  const JsonValue* vocab = model->Find("vocab");
  if (vocab == nullptr) return fields.Invalid("model.vocab", "missing");
  SAETRACK_RETURN_IF_ERROR(
      fields.ExpectType(*vocab, "model.vocab", JsonValue::Type::kObject));
  uint64_t vocab_size = 0;
  tokenizer.vocab_.reserve(vocab->members().size());
  for (const auto& [token, id_value] : vocab->members()) {
    SAETRACK_ASSIGN_OR_RETURN(
        uint32_t id, fields.Id(id_value, absl::StrCat("model.vocab[",
                                                      JsonQuote(token), "]")));
    tokenizer.vocab_.emplace(token, id);
    vocab_size = std::max<uint64_t>(vocab_size, uint64_t{id} + 1);
  }
  // Real vocabularies lack some of the 13 bytes that never occur in valid
  // UTF-8 (Pythia lacks all of them); Encode refuses those bytes.
  const ByteLevelAlphabet& alphabet = Alphabet();
  for (int b = 0; b < 256; ++b) {
    const auto it = tokenizer.vocab_.find(alphabet.utf8_of_byte[b]);
    if (it != tokenizer.vocab_.end()) {
      tokenizer.byte_ids_[b] = it->second;
      continue;
    }
    tokenizer.byte_ids_[b] = kNoToken;
    tokenizer.all_bytes_have_tokens_ = false;
    if (OccursInUtf8(b)) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02X", b);
      return fields.Invalid(
          "model.vocab",
          absl::StrCat("lacks the byte-level token ",
                       JsonQuote(alphabet.utf8_of_byte[b]), " of byte ", hex,
                       "; not a byte-level BPE vocabulary"));
    }
  }

  const JsonValue* merges = model->Find("merges");
  if (merges == nullptr) return fields.Invalid("model.merges", "missing");
  SAETRACK_RETURN_IF_ERROR(
      fields.ExpectType(*merges, "model.merges", JsonValue::Type::kArray));
  tokenizer.merges_.reserve(merges->array().size());
  for (size_t rank = 0; rank < merges->array().size(); ++rank) {
    const JsonValue& merge = merges->array()[rank];
    const std::string field = absl::StrCat("model.merges[", rank, "]");
    std::string left, right;
    if (merge.is_string()) {
      const std::string& line = merge.string_value();
      const size_t space = line.find(' ');
      if (space == std::string::npos ||
          line.find(' ', space + 1) != std::string::npos) {
        return fields.Invalid(
            field,
            absl::StrCat("expected \"<left> <right>\", got ", JsonQuote(line)));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.array().size() == 2 &&
               merge.array()[0].is_string() && merge.array()[1].is_string()) {
      left = merge.array()[0].string_value();
      right = merge.array()[1].string_value();
    } else {
      return fields.Invalid(
          field, absl::StrCat("expected \"<left> <right>\" or [left, right], "
                              "got ",
                              SerializeJson(merge)));
    }
    uint32_t ids[3];
    const std::string parts[3] = {left, right, left + right};
    for (int k = 0; k < 3; ++k) {
      const auto it = tokenizer.vocab_.find(parts[k]);
      if (it == tokenizer.vocab_.end()) {
        return fields.Invalid(field, absl::StrCat("token ", JsonQuote(parts[k]),
                                                  " is not in model.vocab"));
      }
      ids[k] = it->second;
    }
    // A repeated pair takes its last rank, as in Hugging Face.
    tokenizer.merges_[(uint64_t{ids[0]} << 32) | ids[1]] = {
        static_cast<uint32_t>(rank), ids[2]};
  }

  // Added tokens.
  std::vector<std::pair<uint32_t, std::string>> added;
  if (const JsonValue* added_tokens =
          FieldReader::Optional(root, "added_tokens")) {
    SAETRACK_RETURN_IF_ERROR(fields.ExpectType(*added_tokens, "added_tokens",
                                               JsonValue::Type::kArray));
    for (size_t i = 0; i < added_tokens->array().size(); ++i) {
      const JsonValue& token = added_tokens->array()[i];
      const std::string field = absl::StrCat("added_tokens[", i, "]");
      SAETRACK_RETURN_IF_ERROR(
          fields.ExpectType(token, field, JsonValue::Type::kObject));
      const JsonValue* id_value = token.Find("id");
      if (id_value == nullptr) {
        return fields.Invalid(FieldReader::Join(field, "id"), "missing");
      }
      SAETRACK_ASSIGN_OR_RETURN(
          uint32_t id, fields.Id(*id_value, FieldReader::Join(field, "id")));
      const JsonValue* content = token.Find("content");
      if (content == nullptr) {
        return fields.Invalid(FieldReader::Join(field, "content"), "missing");
      }
      SAETRACK_RETURN_IF_ERROR(
          fields.ExpectType(*content, FieldReader::Join(field, "content"),
                            JsonValue::Type::kString));
      for (const char* key : {"single_word", "lstrip", "rstrip"}) {
        SAETRACK_ASSIGN_OR_RETURN(bool set,
                                  fields.Bool(token, field, key, false));
        if (set) {
          return fields.Unsupported(FieldReader::Join(field, key),
                                    "must be false");
        }
      }
      SAETRACK_ASSIGN_OR_RETURN(bool special,
                                fields.Bool(token, field, "special", false));
      // Hugging Face's default: special tokens match the raw text.
      SAETRACK_ASSIGN_OR_RETURN(
          bool normalized, fields.Bool(token, field, "normalized", !special));
      AddedTokenMatcher& matcher =
          normalized ? tokenizer.normalized_added_ : tokenizer.raw_added_;
      matcher.tokens.push_back({content->string_value(), id});
      added.emplace_back(id, content->string_value());
      vocab_size = std::max<uint64_t>(vocab_size, uint64_t{id} + 1);
    }
  }
  tokenizer.raw_added_.Build();
  tokenizer.normalized_added_.Build();

  // Decoding table: model tokens through the byte map (their own UTF-8 when
  // a character is outside it, as Hugging Face's ByteLevel decoder does),
  // added tokens verbatim so that they round-trip.
  tokenizer.vocab_size_ = static_cast<uint32_t>(vocab_size);
  tokenizer.id_bytes_.resize(vocab_size);
  tokenizer.has_token_.assign(vocab_size, false);
  for (const auto& [token, id] : tokenizer.vocab_) {
    std::optional<std::string> bytes = ByteLevelBytes(token);
    tokenizer.id_bytes_[id] = bytes.has_value() ? *std::move(bytes) : token;
    tokenizer.has_token_[id] = true;
  }
  for (auto& [id, content] : added) {
    tokenizer.id_bytes_[id] = std::move(content);
    tokenizer.has_token_[id] = true;
  }
  return tokenizer;
}

// ---------------------------------------------------------------------------
// Encoding.

struct Tokenizer::EncodeState {
  std::vector<uint32_t> ids;
  // Words repeat (Zipf), so each distinct word is merged once per call.
  std::unordered_map<std::string, std::vector<uint32_t>> word_cache;
};

absl::StatusOr<std::vector<uint32_t>> Tokenizer::Encode(
    std::string_view text) const {
  if (!all_bytes_have_tokens_) {
    for (size_t i = 0; i < text.size(); ++i) {
      const unsigned char byte = text[i];
      if (byte_ids_[byte] == kNoToken) {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02X", byte);
        return absl::InvalidArgumentError(absl::StrCat(
            "byte ", hex, " at offset ", i,
            " has no token in this vocabulary (such bytes never occur in "
            "valid UTF-8)"));
      }
    }
  }
  EncodeState state;
  state.ids.reserve(text.size() / 3 + 16);
  // Added tokens that match the raw text split it first.
  size_t segment_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const int match = raw_added_.MatchAt(text, pos);
    if (match < 0) {
      ++pos;
      continue;
    }
    SAETRACK_RETURN_IF_ERROR(EncodeSegment(
        text.substr(segment_start, pos - segment_start), segment_start, state));
    const AddedToken& token = raw_added_.tokens[match];
    state.ids.push_back(token.id);
    pos += token.content.size();
    segment_start = pos;
  }
  SAETRACK_RETURN_IF_ERROR(
      EncodeSegment(text.substr(segment_start), segment_start, state));
  return std::move(state.ids);
}

// Normalizes `segment` (text between raw-matched added tokens, starting at
// byte `offset` of the input), splits it at normalized added tokens and
// encodes the pieces between them.
absl::Status Tokenizer::EncodeSegment(std::string_view segment, size_t offset,
                                      EncodeState& state) const {
  if (segment.empty()) return absl::OkStatus();
  // Text NFC would change is normalised (as Hugging Face's NFC normalizer
  // does); the rest of the segment is used in place, so that the offsets
  // errors name stay those of the caller's text for NFC input.
  std::string normalized;
  if (nfc_) {
    SAETRACK_ASSIGN_OR_RETURN(std::optional<std::string> changed,
                              NormalizeNfc(segment, offset));
    if (changed.has_value()) {
      normalized = std::move(*changed);
      segment = normalized;
    }
  }
  size_t piece_start = 0;
  size_t pos = 0;
  while (pos < segment.size()) {
    const int match = normalized_added_.MatchAt(segment, pos);
    if (match < 0) {
      ++pos;
      continue;
    }
    EncodePiece(segment.substr(piece_start, pos - piece_start), state);
    const AddedToken& token = normalized_added_.tokens[match];
    state.ids.push_back(token.id);
    pos += token.content.size();
    piece_start = pos;
  }
  EncodePiece(segment.substr(piece_start), state);
  return absl::OkStatus();
}

// ByteLevel pre-tokenization of one piece of normalized text, then BPE.
void Tokenizer::EncodePiece(std::string_view piece, EncodeState& state) const {
  if (piece.empty()) return;
  if (add_prefix_space_ && piece.front() != ' ') {
    std::string prefixed = absl::StrCat(" ", AsAbsl(piece));
    EncodePiece(prefixed, state);
    return;
  }
  if (!use_regex_) {
    EncodeWord(piece, state);
    return;
  }
  SplitGpt2Words(piece,
                 [&](std::string_view word) { EncodeWord(word, state); });
}

void Tokenizer::EncodeWord(std::string_view word, EncodeState& state) const {
  if (word.size() == 1) {
    state.ids.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  auto [it, inserted] = state.word_cache.try_emplace(std::string(word));
  if (inserted) it->second = BytePairMerge(word);
  state.ids.insert(state.ids.end(), it->second.begin(), it->second.end());
}

// Hugging Face's BPE merge: repeatedly merge the adjacent pair of lowest
// rank (leftmost first among equal ranks), with a heap and a linked list so
// that long words cost O(n log n).
std::vector<uint32_t> Tokenizer::BytePairMerge(std::string_view word) const {
  if (ignore_merges_) {
    const auto it = vocab_.find(ByteLevelSpelling(word));
    if (it != vocab_.end()) return {it->second};
  }
  const int n = static_cast<int>(word.size());
  std::vector<uint32_t> ids(n);
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    ids[i] = byte_ids_[static_cast<unsigned char>(word[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    uint32_t rank;
    int pos;
    uint32_t new_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>,
                      std::greater<Candidate>>
      queue;
  const auto push_pair = [&](int left) {
    const int right = next[left];
    if (right < 0) return;
    const auto it = merges_.find((uint64_t{ids[left]} << 32) | ids[right]);
    if (it != merges_.end()) {
      queue.push({it->second.rank, left, it->second.new_id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int right = next[top.pos];
    // Skip stale entries: a side of the pair has merged since.
    const auto it = merges_.find((uint64_t{ids[top.pos]} << 32) | ids[right]);
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    ids[top.pos] = top.new_id;
    alive[right] = false;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) push_pair(prev[top.pos]);
    push_pair(top.pos);
  }
  std::vector<uint32_t> out;
  for (int i = 0; i >= 0; i = next[i]) out.push_back(ids[i]);
  return out;
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::string> Tokenizer::Decode(
    const std::vector<uint32_t>& ids) const {
  size_t size = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab_size_ || !has_token_[ids[i]]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", ids[i], " at position ", i,
          ids[i] >= vocab_size_
              ? absl::StrCat(" is out of range (vocab size ", vocab_size_, ")")
              : std::string(" has no token in the vocab")));
    }
    size += id_bytes_[ids[i]].size();
  }
  std::string text;
  text.reserve(size);
  for (uint32_t id : ids) text += id_bytes_[id];
  return text;
}

std::optional<uint32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const AddedTokenMatcher* matcher : {&raw_added_, &normalized_added_}) {
    for (const AddedToken& added : matcher->tokens) {
      if (added.content == token) return added.id;
    }
  }
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::string> TrainByteLevelBpe(std::string_view corpus,
                                              const BpeTrainOptions& options) {
  if (options.vocab_size < 257 || options.vocab_size > (1u << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("BpeTrainOptions.vocab_size ", options.vocab_size,
                     " out of range [257, 2^24]"));
  }
  if (options.min_frequency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("BpeTrainOptions.min_frequency ", options.min_frequency,
                     " must be >= 1"));
  }
  SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> normalised,
                            NormalizeNfc(corpus, 0));
  const std::string_view text =
      normalised.has_value() ? std::string_view(*normalised) : corpus;

  // Distinct words and their counts, in first-occurrence order.
  std::unordered_map<std::string, int64_t> index;
  std::vector<std::vector<uint32_t>> words;
  std::vector<int64_t> counts;
  SplitGpt2Words(text, [&](std::string_view word) {
    auto [it, inserted] = index.try_emplace(std::string(word), words.size());
    if (inserted) {
      std::vector<uint32_t> symbols;
      symbols.reserve(word.size());
      for (unsigned char b : word) symbols.push_back(b);
      words.push_back(std::move(symbols));
      counts.push_back(0);
    }
    ++counts[it->second];
  });

  // Symbol spellings (bytes) by id; the byte symbols first.
  // Two merges can spell the same token ("ab c" and "a bc"): the second
  // reuses the first one's id, so the vocabulary has no duplicate.
  std::vector<std::string> spelling;
  std::unordered_map<std::string, uint32_t> spelling_ids;
  for (int b = 0; b < 256; ++b) {
    spelling.emplace_back(1, static_cast<char>(b));
    spelling_ids.emplace(spelling.back(), b);
  }
  const auto key = [](uint32_t a, uint32_t b) {
    return (static_cast<uint64_t>(a) << 32) | b;
  };
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;
  std::vector<uint64_t> touched;  // pairs whose count changed
  const auto add_pairs = [&](uint32_t w, int64_t sign) {
    const std::vector<uint32_t>& symbols = words[w];
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const uint64_t k = key(symbols[i], symbols[i + 1]);
      pair_counts[k] += sign * counts[w];
      touched.push_back(k);
      if (sign > 0) pair_words[k].push_back(w);
    }
  };
  for (uint32_t w = 0; w < words.size(); ++w) add_pairs(w, +1);

  // Candidates by count, then smallest merged spelling, then left symbol.
  // An entry is current while its count is the pair's count; every change
  // of a count pushes a new entry, and stale ones are skipped when popped.
  struct Candidate {
    int64_t count;
    std::string spelling;
    uint32_t a;
    uint32_t b;
  };
  const auto lower_priority = [](const Candidate& x, const Candidate& y) {
    if (x.count != y.count) return x.count < y.count;
    if (x.spelling != y.spelling) return x.spelling > y.spelling;
    return x.a > y.a;
  };
  std::priority_queue<Candidate, std::vector<Candidate>,
                      decltype(lower_priority)>
      candidates(lower_priority);
  const auto push_touched = [&] {
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (const uint64_t k : touched) {
      const auto it = pair_counts.find(k);
      if (it == pair_counts.end()) continue;
      if (it->second <= 0) {
        pair_counts.erase(it);
        continue;
      }
      if (it->second < options.min_frequency) continue;
      const uint32_t a = static_cast<uint32_t>(k >> 32);
      const uint32_t b = static_cast<uint32_t>(k);
      candidates.push({it->second, spelling[a] + spelling[b], a, b});
    }
    touched.clear();
  };
  push_touched();

  std::vector<std::pair<uint32_t, uint32_t>> merges;
  // The last id is <|endoftext|>.
  while (spelling.size() + 1 < options.vocab_size && !candidates.empty()) {
    Candidate best = candidates.top();
    candidates.pop();
    const uint64_t best_key = key(best.a, best.b);
    const auto current = pair_counts.find(best_key);
    if (current == pair_counts.end() || current->second != best.count) {
      continue;  // stale
    }
    const uint32_t a = best.a;
    const uint32_t b = best.b;
    const auto [named, is_new] = spelling_ids.try_emplace(
        best.spelling, static_cast<uint32_t>(spelling.size()));
    const uint32_t merged_id = named->second;
    if (is_new) spelling.push_back(best.spelling);
    merges.emplace_back(a, b);
    // Re-spell every word holding the pair (the list may name a word more
    // than once, or words that no longer hold it).
    std::vector<uint32_t> holders = std::move(pair_words[best_key]);
    pair_words.erase(best_key);
    std::sort(holders.begin(), holders.end());
    holders.erase(std::unique(holders.begin(), holders.end()), holders.end());
    for (uint32_t w : holders) {
      std::vector<uint32_t>& symbols = words[w];
      bool holds = false;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        if (symbols[i] == a && symbols[i + 1] == b) holds = true;
      }
      if (!holds) continue;
      add_pairs(w, -1);
      std::vector<uint32_t> merged;
      merged.reserve(symbols.size());
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
          merged.push_back(merged_id);
          ++i;
        } else {
          merged.push_back(symbols[i]);
        }
      }
      symbols = std::move(merged);
      add_pairs(w, +1);
    }
    pair_counts.erase(best_key);
    push_touched();
  }

  return ByteLevelBpeJson(spelling, merges, /*nfc=*/true,
                          /*end_of_text=*/true);
}

std::string ByteLevelBpeJson(
    const std::vector<std::string>& tokens,
    const std::vector<std::pair<uint32_t, uint32_t>>& merges, bool nfc,
    bool end_of_text) {
  JsonValue::Object vocab;
  for (uint32_t id = 0; id < tokens.size(); ++id) {
    vocab.emplace_back(ByteLevelSpelling(tokens[id]), JsonValue::Integer(id));
  }
  JsonValue::Array merge_values;
  for (const auto& [a, b] : merges) {
    merge_values.push_back(JsonValue::String(absl::StrCat(
        ByteLevelSpelling(tokens[a]), " ", ByteLevelSpelling(tokens[b]))));
  }
  const auto byte_level = [] {
    return JsonValue::MakeObject({
        {"type", JsonValue::String("ByteLevel")},
        {"add_prefix_space", JsonValue::Bool(false)},
        {"trim_offsets", JsonValue::Bool(true)},
        {"use_regex", JsonValue::Bool(true)},
    });
  };
  JsonValue::Array added_tokens;
  if (end_of_text) {
    added_tokens.push_back(JsonValue::MakeObject({
        {"id", JsonValue::Integer(static_cast<int64_t>(tokens.size()))},
        {"content", JsonValue::String("<|endoftext|>")},
        {"single_word", JsonValue::Bool(false)},
        {"lstrip", JsonValue::Bool(false)},
        {"rstrip", JsonValue::Bool(false)},
        {"normalized", JsonValue::Bool(false)},
        {"special", JsonValue::Bool(true)},
    }));
  }
  const JsonValue json = JsonValue::MakeObject({
      {"version", JsonValue::String("1.0")},
      {"truncation", JsonValue()},
      {"padding", JsonValue()},
      {"added_tokens", JsonValue::MakeArray(std::move(added_tokens))},
      {"normalizer",
       nfc ? JsonValue::MakeObject({{"type", JsonValue::String("NFC")}})
           : JsonValue()},
      {"pre_tokenizer", byte_level()},
      {"post_processor", byte_level()},
      {"decoder", byte_level()},
      {"model", JsonValue::MakeObject({
                    {"type", JsonValue::String("BPE")},
                    {"dropout", JsonValue()},
                    {"unk_token", JsonValue()},
                    {"continuing_subword_prefix", JsonValue()},
                    {"end_of_word_suffix", JsonValue()},
                    {"fuse_unk", JsonValue::Bool(false)},
                    {"byte_fallback", JsonValue::Bool(false)},
                    {"ignore_merges", JsonValue::Bool(false)},
                    {"vocab", JsonValue::MakeObject(std::move(vocab))},
                    {"merges", JsonValue::MakeArray(std::move(merge_values))},
                })},
  });
  return SerializeJson(json);
}

std::string EscapeInvalidUtf8(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    char32_t cp = 0;
    const int n = internal::DecodeUtf8(bytes.data() + i, bytes.size() - i, &cp);
    if (n > 0) {
      out.append(bytes.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      const auto byte = static_cast<unsigned char>(bytes[i]);
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
      ++i;
    }
  }
  return out;
}

}  // namespace saetrack::format
