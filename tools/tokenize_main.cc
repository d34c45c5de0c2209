// saetrack-tokenize: turns a text file into a token file with a Hugging Face
// tokenizer.json, or (--learn_bpe) learns a byte-level BPE tokenizer.json on
// a text file. Parses flags into TokenizeFileOptions / BpeTrainOptions and
// runs.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "format/mapped_file.h"
#include "format/token_file.h"
#include "format/tokenize_file.h"
#include "format/tokenizer.h"

namespace {

constexpr char kUsage[] =
    R"(Usage: saetrack-tokenize --tokenizer FILE --in FILE --out FILE [flags]
       saetrack-tokenize --learn_bpe --in FILE --out FILE [--vocab_size N]

Encodes the text file --in with the Hugging Face tokenizer.json --tokenizer
(byte-level BPE: GPT-2, Pythia) and writes the ids to --out as a flat
little-endian token file, atomically. Prints one line: tokens written, dtype,
bytes and encoding speed.

With --learn_bpe, learns byte-level BPE merges on the text --in instead (NFC,
GPT-2 pre-tokenisation, most frequent pair first) and writes a standard
tokenizer.json to --out, atomically: ids 0..255 are the bytes, then the merged
tokens, then <|endoftext|> as the last id. Hugging Face's `tokenizers` loads
it and encodes as saetrack does. Prints one line: merges, vocabulary size and
the corpus's length in tokens under the new vocabulary.

Flags (--flag VALUE or --flag=VALUE):
  --tokenizer FILE    tokenizer.json (required unless --learn_bpe)
  --in FILE           text to encode or learn from (required); read whole
  --out FILE          token file, or with --learn_bpe the tokenizer.json, to
                      write (required); replaced if it exists
  --dtype TYPE        auto, uint16 or uint32 (default auto: uint16 when the
                      vocabulary has at most 65536 ids)
  --append_eos        append the <|endoftext|> id after the text
  --learn_bpe         learn a tokenizer.json on --in (see above)
  --vocab_size N      with --learn_bpe: ids in the vocabulary, 257..16777216
                      (default 4096); fewer when no pair repeats enough
  --min_frequency N   with --learn_bpe: a pair is merged only if it occurs at
                      least N times (default 2)
  --help              show this help
)";

int UsageError(const std::string& message) {
  std::cerr << "saetrack-tokenize: " << message
            << "\nRun saetrack-tokenize --help for usage.\n";
  return 2;
}

}  // namespace

// --learn_bpe: trains on options.input_path, writes options.output_path.
int LearnBpe(const saetrack::format::TokenizeFileOptions& options,
             const saetrack::format::BpeTrainOptions& bpe) {
  namespace format = saetrack::format;
  const auto fail = [](const absl::Status& status) {
    std::cerr << "saetrack-tokenize: " << status.message() << "\n";
    return 1;
  };
  absl::StatusOr<std::string> corpus =
      format::ReadFileToString(options.input_path);
  if (!corpus.ok()) return fail(corpus.status());
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> json = format::TrainByteLevelBpe(*corpus, bpe);
  if (!json.ok()) return fail(json.status());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  // Loads what was learnt, as every consumer will, and measures it.
  absl::StatusOr<format::Tokenizer> tokenizer =
      format::Tokenizer::FromJson(*json, options.output_path);
  if (!tokenizer.ok()) return fail(tokenizer.status());
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer->Encode(*corpus);
  if (!ids.ok()) return fail(ids.status());
  const absl::Status written =
      format::WriteFileAtomically(options.output_path, *json);
  if (!written.ok()) return fail(written);
  std::cout << absl::StrFormat(
      "learnt %d merges in %.1f s; vocabulary %d ids; %s: %d bytes -> %d "
      "tokens (%.2f bytes/token); wrote %s\n",
      tokenizer->merge_count(), seconds, tokenizer->vocab_size(),
      options.input_path, corpus->size(), ids->size(),
      ids->empty() ? 0.0 : static_cast<double>(corpus->size()) / ids->size(),
      options.output_path);
  return 0;
}

int main(int argc, char** argv) {
  saetrack::format::TokenizeFileOptions options;
  saetrack::format::BpeTrainOptions bpe;
  bool learn_bpe = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (flag.rfind("--", 0) != 0) {
      return UsageError("unexpected argument " + flag);
    }
    std::string value;
    const size_t equals = flag.find('=');
    const bool has_value = equals != std::string::npos;
    if (has_value) {
      value = flag.substr(equals + 1);
      flag = flag.substr(0, equals);
    }
    const std::string name = flag.substr(2);
    if (name == "append_eos" || name == "learn_bpe") {
      if (has_value && value != "true" && value != "false") {
        return UsageError("invalid value \"" + value + "\" for " + flag);
      }
      (name == "append_eos" ? options.append_eos : learn_bpe) =
          !has_value || value == "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return UsageError(flag + " needs a value");
      value = argv[++i];
    }
    if (name == "tokenizer") {
      options.tokenizer_path = value;
    } else if (name == "in") {
      options.input_path = value;
    } else if (name == "out") {
      options.output_path = value;
    } else if (name == "dtype") {
      if (value == "auto") {
        options.dtype.reset();
      } else {
        auto dtype = saetrack::format::ParseTokenDtype(value);
        if (!dtype.ok()) {
          return UsageError("invalid value \"" + value + "\" for " + flag +
                            " (auto, uint16 or uint32)");
        }
        options.dtype = *dtype;
      }
    } else if (name == "vocab_size") {
      uint32_t parsed = 0;
      if (!absl::SimpleAtoi(value, &parsed) || parsed < 257 ||
          parsed > (1u << 24)) {
        return UsageError("invalid value \"" + value + "\" for " + flag +
                          " (an integer in [257, 16777216])");
      }
      bpe.vocab_size = parsed;
    } else if (name == "min_frequency") {
      int64_t parsed = 0;
      if (!absl::SimpleAtoi(value, &parsed) || parsed < 1) {
        return UsageError("invalid value \"" + value + "\" for " + flag +
                          " (an integer >= 1)");
      }
      bpe.min_frequency = parsed;
    } else {
      return UsageError("unknown flag " + flag);
    }
  }
  if (options.input_path.empty()) return UsageError("--in is required");
  if (options.output_path.empty()) return UsageError("--out is required");
  if (learn_bpe) {
    if (!options.tokenizer_path.empty()) {
      return UsageError("--tokenizer and --learn_bpe exclude each other");
    }
    return LearnBpe(options, bpe);
  }
  if (options.tokenizer_path.empty())
    return UsageError("--tokenizer is required");

  auto result = saetrack::format::TokenizeFile(options);
  if (!result.ok()) {
    std::cerr << "saetrack-tokenize: " << result.status().message() << "\n";
    return 1;
  }
  const double seconds =
      result->encode_seconds > 0 ? result->encode_seconds : 1e-9;
  std::cout << absl::StrFormat(
      "wrote %d tokens (%s, %d bytes) to %s; encoded at %.0f tokens/s\n",
      result->tokens,
      result->dtype == saetrack::format::TokenDtype::kUint16 ? "uint16"
                                                             : "uint32",
      result->bytes, options.output_path, result->tokens / seconds);
  return 0;
}
