// Tokenised text as a flat little-endian array of uint16 or uint32 token ids
// (the nanoGPT / Pythia convention).
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

// A read-only token file, read with pread() (not mapped), so that a file
// truncated or replaced while a task trains on it gives an error naming the
// byte, never SIGBUS. Move-only; thread-safe for concurrent reads.
class TokenFile {
 public:
  // Opens `path` (a regular file; FIFOs and devices are refused without
  // blocking). Errors: kNotFound (and other errno codes) naming the path;
  // kFailedPrecondition for a directory, FIFO, socket or device; kDataLoss
  // naming the path when the file size is not a multiple of the element
  // size.
  static absl::StatusOr<TokenFile> Open(const std::string& path,
                                        TokenDtype dtype);
  // The same, confined to `roots` (see ReadOnlyFile::Open).
  static absl::StatusOr<TokenFile> Open(const std::string& path,
                                        TokenDtype dtype,
                                        const DataRoots& roots);

  // Number of tokens when opened.
  int64_t size() const { return size_; }
  // Bytes per token (2 or 4).
  int element_size() const { return element_size_; }
  const std::string& path() const { return file_.path(); }

  // The token ids [begin, begin + count) into out[0, count). REQUIRES:
  // 0 <= begin, begin + count <= size(). Errors: kDataLoss naming the path
  // and byte when the file has shrunk since Open; errno errors.
  absl::Status Read(int64_t begin, int64_t count, uint32_t* out) const;

  // As Read, then checks that every id is < vocab_size. Errors as Read, and
  // kInvalidArgument naming the path, the byte offset and value of the
  // first offending token and the vocab size.
  absl::Status ReadChecked(int64_t begin, int64_t count, int64_t vocab_size,
                           uint32_t* out) const;

  // Checks that every token in [begin, begin + count) is < vocab_size.
  // REQUIRES: the range lies within [0, size()). Errors as ReadChecked.
  absl::Status CheckVocab(int64_t vocab_size, int64_t begin,
                          int64_t count) const;
  // The same over the whole file.
  absl::Status CheckVocab(int64_t vocab_size) const {
    return CheckVocab(vocab_size, 0, size_);
  }

 private:
  TokenFile(ReadOnlyFile file, int element_size)
      : file_(std::move(file)),
        element_size_(element_size),
        size_(file_.size() / element_size) {}

  ReadOnlyFile file_;
  int element_size_;
  int64_t size_;
};

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_TOKEN_FILE_H_
