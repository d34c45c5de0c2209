// A Hugging Face `tokenizer.json` tokenizer for byte-level BPE models (GPT-2,
// Pythia / GPT-NeoX): turns text into the token ids a data file holds, and ids
// back into text for humans.
//
// Supported tokenizer.json, anything else is refused at load time:
//   model          {"type": "BPE"} with `vocab` (token -> id) and `merges`
//                  (either "a b" strings or ["a", "b"] pairs; rank = index),
//                  optional `ignore_merges`; `dropout`,
//                  `continuing_subword_prefix`, `end_of_word_suffix` must be
//                  null or empty, `byte_fallback` false. The vocab must hold
//                  the byte-level symbol of every byte that can occur in
//                  valid UTF-8 (all but 0xC0, 0xC1, 0xF5..0xFF, which
//                  Pythia's vocab lacks).
//   added_tokens   matched verbatim in the text before pre-tokenization,
//                  leftmost-longest, as Hugging Face does: tokens with
//                  "normalized": false on the raw text first, then those with
//                  "normalized": true on the normalized remainder.
//                  `single_word`, `lstrip` and `rstrip` must be false.
//   normalizer     null or {"type": "NFC"} (ICU's NFC, see below).
//   pre_tokenizer  {"type": "ByteLevel"} with `add_prefix_space` and
//                  `use_regex` (default true: the GPT-2 split pattern
//                  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
//                  ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ , implemented by hand).
//   post_processor null or ByteLevel (adds no ids).
//   decoder        null or ByteLevel.
//
// Unicode coverage of the split pattern: \p{L} (general categories Lu, Ll,
// Lt, Lm, Lo) and \p{N} (Nd, Nl, No) are ICU's general categories, complete
// for every code point assigned in ICU's Unicode version (15.0 for Debian
// bookworm's ICU 72). \s is the White_Space property, as in Oniguruma.
// Bytes that are not valid UTF-8 are accepted: each such byte is one code
// point of class [^\s\p{L}\p{N}] and is encoded through its byte-level token,
// so it round-trips (the Hugging Face library cannot take such input at all)
// — unless the vocab has no token for the byte (see Encode).
//
// NFC: with the NFC normalizer on, each stretch of valid UTF-8 between raw
// added tokens that NFC would change is replaced by its NFC form (ICU's
// Normalizer2), as Hugging Face's normalizer does; bytes that are not UTF-8
// stay as they are. Text already in NFC is used in place, so error offsets
// are those of the caller's text; in a stretch NFC changed, they refer to
// the normalised text. Decode returns the normalised text.
#ifndef SAETRACK_FORMAT_TOKENIZER_H_
#define SAETRACK_FORMAT_TOKENIZER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saetrack::format {

// A loaded tokenizer. A value type (copyable, movable); immutable after
// loading, so one instance may be used from many threads at once.
class Tokenizer {
 public:
  // Reads and parses `path`. Errors: those of ReadFileToString (kNotFound
  // naming the path, ...), then those of FromJson with `path` as origin.
  static absl::StatusOr<Tokenizer> Load(const std::string& path);

  // Parses tokenizer.json text. Errors name `origin` (when not empty) and the
  // offending field, e.g. "tokenizer.json: model.merges[12]: token \"ab\" is
  // not in model.vocab":
  //   kInvalidArgument  malformed JSON, a missing or mistyped field, an id
  //                     out of [0, 2^24), a merge of unknown tokens;
  //   kUnimplemented    a well-formed feature this class does not support
  //                     (another model type, normalizer, pre-tokenizer,
  //                     decoder or post-processor, BPE dropout, ...).
  static absl::StatusOr<Tokenizer> FromJson(std::string_view text,
                                            std::string_view origin = {});

  // Token ids of `text` (any bytes), as Hugging Face's
  // `Tokenizer.encode(text).ids` (post-processing adds nothing here).
  // Errors: kInvalidArgument naming the byte and its offset when `text` has
  // a byte whose byte-level token the vocab lacks (only bytes that never
  // occur in valid UTF-8 can be missing; Hugging Face would drop them);
  // kInternal when ICU's normaliser fails.
  absl::StatusOr<std::vector<uint32_t>> Encode(std::string_view text) const;

  // The bytes the ids stand for, special tokens included. Added tokens
  // decode to their content verbatim; model tokens through the inverse GPT-2
  // byte map (a token with a character outside that map decodes to its own
  // UTF-8, as Hugging Face does). Unlike Hugging Face, invalid UTF-8 is
  // returned as is, not replaced with U+FFFD, so Decode(Encode(x)) == x for
  // every x that Encode accepts and NFC (where on) leaves alone. Errors:
  // kInvalidArgument naming the first bad id and its position, when it is >=
  // vocab_size() or names no token.
  absl::StatusOr<std::string> Decode(const std::vector<uint32_t>& ids) const;

  // Largest id of the vocab and the added tokens, plus one.
  uint32_t vocab_size() const { return vocab_size_; }

  // Number of BPE merges.
  size_t merge_count() const { return merges_.size(); }

  // The id of an added token's content (e.g. "<|endoftext|>") or of a model
  // token in its byte-level spelling (e.g. "\u0120world" for " world"), or
  // nullopt.
  std::optional<uint32_t> TokenToId(std::string_view token) const;

 private:
  struct Merge {
    uint32_t rank;
    uint32_t new_id;
  };
  struct AddedToken {
    std::string content;
    uint32_t id;
  };
  // Added tokens that can start with each byte, longest first, so the first
  // hit at a position is the leftmost-longest match.
  struct AddedTokenMatcher {
    std::vector<AddedToken> tokens;
    std::array<std::vector<uint32_t>, 256> by_first_byte;

    void Build();
    // The index in `tokens` of the longest token that starts at text[pos],
    // or -1.
    int MatchAt(std::string_view text, size_t pos) const;
  };
  // Per-Encode state: the word cache and scratch space.
  struct EncodeState;

  Tokenizer() = default;

  absl::Status EncodeSegment(std::string_view segment, size_t offset,
                             EncodeState& state) const;
  void EncodePiece(std::string_view piece, EncodeState& state) const;
  void EncodeWord(std::string_view word, EncodeState& state) const;
  std::vector<uint32_t> BytePairMerge(std::string_view word) const;

  bool nfc_ = false;
  bool add_prefix_space_ = false;
  bool use_regex_ = true;
  bool ignore_merges_ = false;
  // Model vocab, keyed by the byte-level spelling.
  std::unordered_map<std::string, uint32_t> vocab_;
  // Key: (left id << 32) | right id.
  std::unordered_map<uint64_t, Merge> merges_;
  // Id of the single-byte token of each byte value, or kNoToken.
  static constexpr uint32_t kNoToken = ~uint32_t{0};
  std::array<uint32_t, 256> byte_ids_{};
  bool all_bytes_have_tokens_ = true;
  AddedTokenMatcher raw_added_;         // "normalized": false
  AddedTokenMatcher normalized_added_;  // "normalized": true
  // Decoded bytes of every id; ids without a token are absent from
  // `has_token_`.
  std::vector<std::string> id_bytes_;
  std::vector<bool> has_token_;
  uint32_t vocab_size_ = 0;
};

struct BpeTrainOptions {
  // Ids in the trained vocabulary (vocab_size of them): the 256 byte-level
  // symbols (ids 0..255, in byte order), the tokens of the learnt merges in
  // merge order, then <|endoftext|> (the last id).
  // Training stops earlier when no pair occurs min_frequency times.
  uint32_t vocab_size = 4096;
  int64_t min_frequency = 2;
};

// Learns byte-level BPE merges on `corpus` (NFC-normalised, split with the
// GPT-2 pattern as Tokenizer::Encode splits, each distinct word weighted by
// its count): repeatedly merges the most frequent adjacent pair of symbols
// (ties: the pair whose merged spelling sorts first, then the left symbol;
// a merge whose spelling is already a token reuses its id). Returns a standard
// tokenizer.json text (normalizer NFC, ByteLevel pre-tokenizer / post-processor
// / decoder, BPE model with vocab and "a b" merges in rank order, <|endoftext|>
// as a special added token) that Tokenizer::FromJson and Hugging Face's
// `tokenizers` load and encode identically. Deterministic. Errors:
// kInvalidArgument for vocab_size < 257 or > 2^24, or min_frequency < 1;
// kInternal when ICU's normaliser fails.
absl::StatusOr<std::string> TrainByteLevelBpe(std::string_view corpus,
                                              const BpeTrainOptions& options);

// The tokenizer.json of a byte-level BPE, as Hugging Face writes it:
// `tokens` are the bytes of ids 0..n-1 (written in GPT-2's byte-level
// spelling), `merges` pairs of ids in rank order; the ByteLevel
// pre-tokenizer, post-processor and decoder without a prefix space; an NFC
// normalizer when `nfc` (else none); with `end_of_text`, "<|endoftext|>" as
// a special added token with id n.
std::string ByteLevelBpeJson(
    const std::vector<std::string>& tokens,
    const std::vector<std::pair<uint32_t, uint32_t>>& merges, bool nfc,
    bool end_of_text);

// `bytes` with each byte that starts no valid UTF-8 sequence written as
// \xNN (lowercase hex): text a protobuf string field can carry. A single
// token of a byte-level vocabulary is often only part of a character.
std::string EscapeInvalidUtf8(std::string_view bytes);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_TOKENIZER_H_
