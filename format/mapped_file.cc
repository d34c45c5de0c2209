#include "format/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/absl_compat.h"

namespace saetrack::format {
namespace {

absl::Status ErrnoError(int error_number, std::string_view action,
                        std::string_view path) {
  return absl::ErrnoToStatus(error_number,
                             absl::StrCat(AsAbsl(action), " ", AsAbsl(path)));
}

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  void Release() { fd_ = -1; }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<ReadOnlyFile> ReadOnlyFile::Open(const std::string& path) {
  return Open(path, DataRoots());
}

absl::StatusOr<ReadOnlyFile> ReadOnlyFile::Open(const std::string& path,
                                                const DataRoots& roots) {
  // Opened without blocking: a FIFO would otherwise wait for a writer,
  // forever; it is refused below instead.
  absl::StatusOr<int> opened = roots.OpenConfined(path);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  FdCloser closer(fd);
  struct stat info;
  if (::fstat(fd, &info) != 0) return ErrnoError(errno, "cannot stat", path);
  if (S_ISDIR(info.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is a directory, expected a file"));
  }
  if (!S_ISREG(info.st_mode)) {
    const char* what = S_ISFIFO(info.st_mode)   ? "a FIFO"
                       : S_ISSOCK(info.st_mode) ? "a socket"
                       : S_ISCHR(info.st_mode)  ? "a character device"
                       : S_ISBLK(info.st_mode)  ? "a block device"
                                                : "not a regular file";
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is ", what, ", expected a regular file"));
  }
  closer.Release();
  return ReadOnlyFile(path, fd, static_cast<int64_t>(info.st_size));
}

ReadOnlyFile::ReadOnlyFile(ReadOnlyFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(std::exchange(other.size_, 0)) {}

ReadOnlyFile& ReadOnlyFile::operator=(ReadOnlyFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

ReadOnlyFile::~ReadOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status ReadOnlyFile::ReadAt(int64_t offset, size_t n, char* out) const {
  size_t done = 0;
  while (done < n) {
    const ssize_t got =
        ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoError(errno, "cannot read", path_);
    }
    if (got == 0) {
      struct stat info;
      const int64_t now = ::fstat(fd_, &info) == 0
                              ? static_cast<int64_t>(info.st_size)
                              : static_cast<int64_t>(offset + done);
      return absl::DataLossError(absl::StrCat(
          path_, ": the file ends at byte ", now, ", before byte ", offset + n,
          " (it was ", size_,
          " bytes when opened: truncated or replaced while in use)"));
    }
    done += static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  return Open(path, DataRoots());
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path,
                                            const DataRoots& roots) {
  absl::StatusOr<ReadOnlyFile> file = ReadOnlyFile::Open(path, roots);
  if (!file.ok()) return file.status();
  const size_t size = static_cast<size_t>(file->size());
  if (size == 0) return MappedFile(path, nullptr, 0);
  void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file->fd(), 0);
  if (address == MAP_FAILED) return ErrnoError(errno, "cannot mmap", path);
  return MappedFile(path, address, size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      address_(std::exchange(other.address_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (address_ != nullptr) ::munmap(address_, size_);
    path_ = std::move(other.path_);
    address_ = std::exchange(other.address_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (address_ != nullptr) ::munmap(address_, size_);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  absl::StatusOr<MappedFile> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  return std::string(file->data());
}

absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view contents) {
  const std::string temp_path = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd =
      ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot create", temp_path);
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n =
        ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error_number = errno;
      ::close(fd);
      ::unlink(temp_path.c_str());
      return ErrnoError(error_number, "cannot write", temp_path);
    }
    written += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    const int error_number = errno;
    ::unlink(temp_path.c_str());
    return ErrnoError(error_number, "cannot close", temp_path);
  }
  if (::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int error_number = errno;
    ::unlink(temp_path.c_str());
    return ErrnoError(error_number, "cannot rename to", path);
  }
  return absl::OkStatus();
}

}  // namespace saetrack::format
