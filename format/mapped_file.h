// Read-only access to whole files: memory-mapped for large binary inputs
// (weights, token files), or read into a string for small text files.
#ifndef SAETRACK_FORMAT_MAPPED_FILE_H_
#define SAETRACK_FORMAT_MAPPED_FILE_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"

namespace saetrack::format {

// A file mapped read-only into memory. Move-only; owns the mapping, which is
// released on destruction. data() stays valid (and at the same address) for
// the lifetime of the object, including across moves. Thread-safe for
// concurrent reads.
class MappedFile {
 public:
  // Maps `path`. Errors: kNotFound naming the path when it does not exist,
  // another code from errno (kPermissionDenied, ...) naming the path, or
  // kFailedPrecondition for a directory. An empty file maps to an empty view.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::string_view data() const {
    return {static_cast<const char*>(address_), size_};
  }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, void* address, size_t size)
      : path_(std::move(path)), address_(address), size_(size) {}

  std::string path_;
  void* address_ = nullptr;  // nullptr for an empty file
  size_t size_ = 0;
};

// Reads the whole of `path`. Errors as MappedFile::Open.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically (a temporary file in the same
// directory, then rename), so readers never see a half-written file.
absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view contents);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_MAPPED_FILE_H_
