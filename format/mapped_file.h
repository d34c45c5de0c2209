// Read-only access to whole files: memory-mapped for large binary inputs
// (weights, token files), or read into a string for small text files.
#ifndef SAETRACK_FORMAT_MAPPED_FILE_H_
#define SAETRACK_FORMAT_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "format/confined_path.h"

namespace saetrack::format {

// A file mapped read-only into memory. Move-only; owns the mapping, which is
// released on destruction. data() stays valid (and at the same address) for
// the lifetime of the object, including across moves. Thread-safe for
// concurrent reads.
class MappedFile {
 public:
  // Maps `path`. Errors: kNotFound naming the path when it does not exist,
  // another code from errno (kPermissionDenied, ...) naming the path, or
  // kFailedPrecondition for a directory, FIFO, socket or device (opened
  // without blocking). An empty file maps to an empty view. A file that
  // shrinks while mapped raises SIGBUS on access: inputs that may change
  // under a long-running process are read with ReadOnlyFile instead.
  static absl::StatusOr<MappedFile> Open(const std::string& path);
  // The same, confined to `roots` (see ReadOnlyFile::Open).
  static absl::StatusOr<MappedFile> Open(const std::string& path,
                                         const DataRoots& roots);

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

// A regular file opened for reading, read with pread(): unlike a mapping, a
// file truncated while it is read gives an error, never SIGBUS. Move-only;
// thread-safe for concurrent reads.
class ReadOnlyFile {
 public:
  // Opens `path` without blocking (a FIFO would wait for a writer) and
  // checks that it is a regular file. Errors as MappedFile::Open, and
  // kFailedPrecondition naming a FIFO, socket or device.
  static absl::StatusOr<ReadOnlyFile> Open(const std::string& path);
  // The same, confined to `roots` (DataRoots::OpenConfined): a symlink as
  // the final component or a file outside the roots is kPermissionDenied
  // naming the path. Empty roots: as Open(path).
  static absl::StatusOr<ReadOnlyFile> Open(const std::string& path,
                                           const DataRoots& roots);
  ReadOnlyFile(ReadOnlyFile&& other) noexcept;
  ReadOnlyFile& operator=(ReadOnlyFile&& other) noexcept;
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ~ReadOnlyFile();

  // The size when opened.
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

  // Reads `n` bytes at `offset` into `out`. Errors: kDataLoss naming the
  // path and the byte where the file now ends when it ends before
  // offset + n (it shrank since Open); errno errors naming the path.
  absl::Status ReadAt(int64_t offset, size_t n, char* out) const;

 private:
  ReadOnlyFile(std::string path, int fd, int64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  std::string path_;
  int fd_ = -1;
  int64_t size_ = 0;
};

// Reads the whole of `path`. Errors as MappedFile::Open.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically (a temporary file in the same
// directory, then rename), so readers never see a half-written file.
absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view contents);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_MAPPED_FILE_H_
