#include "format/token_file.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/absl_compat.h"
#include "base/status_macros.h"

namespace saetrack::format {

absl::StatusOr<TokenDtype> ParseTokenDtype(std::string_view name) {
  if (name == "uint16") return TokenDtype::kUint16;
  if (name == "uint32") return TokenDtype::kUint32;
  return absl::InvalidArgumentError(absl::StrCat(
      "token dtype \"", AsAbsl(name), "\" is not \"uint16\" or \"uint32\""));
}

absl::StatusOr<TokenFile> TokenFile::Open(const std::string& path,
                                          TokenDtype dtype) {
  SAETRACK_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  const int element_size = dtype == TokenDtype::kUint16 ? 2 : 4;
  if (file.size() % element_size != 0) {
    return absl::DataLossError(absl::StrCat(
        path, ": size ", file.size(), " bytes is not a multiple of the ",
        element_size, "-byte element size of ",
        dtype == TokenDtype::kUint16 ? "uint16" : "uint32",
        " tokens (truncated file or wrong token dtype?)"));
  }
  return TokenFile(std::move(file), element_size);
}

absl::Status TokenFile::CheckVocab(int64_t vocab_size, int64_t begin,
                                   int64_t count) const {
  for (int64_t i = begin; i < begin + count; ++i) {
    const uint32_t token = (*this)[i];
    if (token >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          path(), ": token id ", token, " at byte ", i * element_size_,
          " (token ", i, ") is >= the model's vocab_size ", vocab_size));
    }
  }
  return absl::OkStatus();
}

}  // namespace saetrack::format
