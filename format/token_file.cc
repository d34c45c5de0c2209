#include "format/token_file.h"

#include <algorithm>
#include <utility>
#include <vector>

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
  return Open(path, dtype, DataRoots());
}

absl::StatusOr<TokenFile> TokenFile::Open(const std::string& path,
                                          TokenDtype dtype,
                                          const DataRoots& roots) {
  SAETRACK_ASSIGN_OR_RETURN(ReadOnlyFile file, ReadOnlyFile::Open(path, roots));
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

absl::Status TokenFile::Read(int64_t begin, int64_t count,
                             uint32_t* out) const {
  if (count <= 0) return absl::OkStatus();
  std::vector<unsigned char> bytes(static_cast<size_t>(count) * element_size_);
  SAETRACK_RETURN_IF_ERROR(file_.ReadAt(begin * element_size_, bytes.size(),
                                        reinterpret_cast<char*>(bytes.data())));
  const unsigned char* p = bytes.data();
  for (int64_t i = 0; i < count; ++i, p += element_size_) {
    out[i] = element_size_ == 2
                 ? p[0] | (uint32_t{p[1]} << 8)
                 : p[0] | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
                       (uint32_t{p[3]} << 24);
  }
  return absl::OkStatus();
}

absl::Status TokenFile::ReadChecked(int64_t begin, int64_t count,
                                    int64_t vocab_size, uint32_t* out) const {
  SAETRACK_RETURN_IF_ERROR(Read(begin, count, out));
  for (int64_t i = 0; i < count; ++i) {
    if (out[i] >= vocab_size) {
      const int64_t index = begin + i;
      return absl::InvalidArgumentError(absl::StrCat(
          path(), ": token id ", out[i], " at byte ", index * element_size_,
          " (token ", index, ") is >= the model's vocab_size ", vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status TokenFile::CheckVocab(int64_t vocab_size, int64_t begin,
                                   int64_t count) const {
  constexpr int64_t kChunk = int64_t{1} << 18;
  std::vector<uint32_t> ids(static_cast<size_t>(std::min(count, kChunk)));
  for (int64_t at = begin; at < begin + count; at += kChunk) {
    const int64_t n = std::min(kChunk, begin + count - at);
    SAETRACK_RETURN_IF_ERROR(ReadChecked(at, n, vocab_size, ids.data()));
  }
  return absl::OkStatus();
}

}  // namespace saetrack::format
