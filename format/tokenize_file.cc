#include "format/tokenize_file.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "format/mapped_file.h"
#include "format/tokenizer.h"

namespace saetrack::format {

absl::StatusOr<TokenizeFileResult> TokenizeFile(
    const TokenizeFileOptions& options) {
  SAETRACK_ASSIGN_OR_RETURN(Tokenizer tokenizer,
                            Tokenizer::Load(options.tokenizer_path));
  constexpr uint64_t kUint16Ids = uint64_t{1} << 16;
  const TokenDtype dtype = options.dtype.value_or(
      tokenizer.vocab_size() <= kUint16Ids ? TokenDtype::kUint16
                                           : TokenDtype::kUint32);
  if (dtype == TokenDtype::kUint16 && tokenizer.vocab_size() > kUint16Ids) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype uint16 cannot hold the ids of ", options.tokenizer_path,
        " (vocab size ", tokenizer.vocab_size(), " > 65536); use uint32"));
  }
  std::optional<uint32_t> eos;
  if (options.append_eos) {
    eos = tokenizer.TokenToId(kEndOfTextToken);
    if (!eos.has_value()) {
      return absl::FailedPreconditionError(
          absl::StrCat(options.tokenizer_path, " has no ", kEndOfTextToken,
                       " token to append"));
    }
  }
  SAETRACK_ASSIGN_OR_RETURN(std::string text,
                            ReadFileToString(options.input_path));

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer.Encode(text);
  const std::chrono::duration<double> elapsed =
      std::chrono::steady_clock::now() - start;
  if (!ids.ok()) {
    return absl::Status(
        ids.status().code(),
        absl::StrCat(options.input_path, ": ", ids.status().message()));
  }
  if (eos.has_value()) ids->push_back(*eos);

  const int element_size = dtype == TokenDtype::kUint16 ? 2 : 4;
  std::string bytes(ids->size() * element_size, '\0');
  for (size_t i = 0; i < ids->size(); ++i) {
    const uint32_t id = (*ids)[i];
    for (int k = 0; k < element_size; ++k) {
      bytes[i * element_size + k] = static_cast<char>((id >> (8 * k)) & 0xFF);
    }
  }
  SAETRACK_RETURN_IF_ERROR(WriteFileAtomically(options.output_path, bytes));

  TokenizeFileResult result;
  result.tokens = static_cast<int64_t>(ids->size());
  result.dtype = dtype;
  result.bytes = static_cast<int64_t>(bytes.size());
  result.encode_seconds = elapsed.count();
  return result;
}

}  // namespace saetrack::format
