// Tokenised text as a flat little-endian array of uint16 or uint32 token ids
// (the nanoGPT / Pythia convention), memory-mapped.
#ifndef SAETRACK_FORMAT_TOKEN_FILE_H_
#define SAETRACK_FORMAT_TOKEN_FILE_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/mapped_file.h"

namespace saetrack::format {

enum class TokenDtype { kUint16, kUint32 };

// "uint16" or "uint32". Errors: kInvalidArgument naming the value.
absl::StatusOr<TokenDtype> ParseTokenDtype(std::string_view name);

// A read-only token file. Move-only; immutable, so thread-safe for concurrent
// reads.
class TokenFile {
 public:
  // Maps `path`. Errors: kNotFound (and other errno codes) naming the path;
  // kDataLoss naming the path when the file size is not a multiple of the
  // element size.
  static absl::StatusOr<TokenFile> Open(const std::string& path,
                                        TokenDtype dtype);

  // Number of tokens.
  int64_t size() const { return size_; }
  // Bytes per token (2 or 4).
  int element_size() const { return element_size_; }
  const std::string& path() const { return file_.path(); }

  // The token id at `index`. REQUIRES: 0 <= index < size().
  uint32_t operator[](int64_t index) const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(
        file_.data().data() + index * element_size_);
    if (element_size_ == 2) return p[0] | (uint32_t{p[1]} << 8);
    return p[0] | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
           (uint32_t{p[3]} << 24);
  }

  // Checks that every token in [begin, begin + count) is < vocab_size.
  // REQUIRES: the range lies within [0, size()). Errors: kInvalidArgument
  // naming the path, the byte offset and value of the first offending token
  // and the vocab size.
  absl::Status CheckVocab(int64_t vocab_size, int64_t begin,
                          int64_t count) const;
  // The same over the whole file.
  absl::Status CheckVocab(int64_t vocab_size) const {
    return CheckVocab(vocab_size, 0, size_);
  }

 private:
  TokenFile(MappedFile file, int element_size)
      : file_(std::move(file)),
        element_size_(element_size),
        size_(static_cast<int64_t>(file_.size()) / element_size) {}

  MappedFile file_;
  int element_size_;
  int64_t size_;
};

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_TOKEN_FILE_H_
