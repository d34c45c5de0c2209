// Tokenizes a text file into a token file (flat little-endian ids, see
// token_file.h): the step that prepares a tracking job's data. The library
// side of saetrack-tokenize.
#ifndef SAETRACK_FORMAT_TOKENIZE_FILE_H_
#define SAETRACK_FORMAT_TOKENIZE_FILE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "format/token_file.h"

namespace saetrack::format {

// The end-of-text token that --append_eos appends (GPT-2, Pythia).
inline constexpr char kEndOfTextToken[] = "<|endoftext|>";

struct TokenizeFileOptions {
  // A Hugging Face tokenizer.json (see tokenizer.h for what is supported).
  std::string tokenizer_path;
  // The text to tokenize, read whole into memory.
  std::string input_path;
  // The token file to write, atomically (replaced if it exists).
  std::string output_path;
  // Element type of the output; nullopt picks uint16 when every id fits
  // (vocab_size() <= 65536), else uint32.
  std::optional<TokenDtype> dtype;
  // Append the id of kEndOfTextToken after the text.
  bool append_eos = false;
};

struct TokenizeFileResult {
  int64_t tokens = 0;
  TokenDtype dtype = TokenDtype::kUint16;
  int64_t bytes = 0;
  // Wall time of Encode alone (not reading, loading or writing).
  double encode_seconds = 0;
};

// Reads, encodes and writes. Errors: those of Tokenizer::Load and of reading
// the input (naming the path); Encode's errors prefixed with the input path;
// kInvalidArgument when `dtype` is uint16 and vocab_size() > 65536;
// kFailedPrecondition when `append_eos` is set and the tokenizer has no
// kEndOfTextToken; WriteFileAtomically's errors. Nothing is written on error.
absl::StatusOr<TokenizeFileResult> TokenizeFile(
    const TokenizeFileOptions& options);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_TOKENIZE_FILE_H_
