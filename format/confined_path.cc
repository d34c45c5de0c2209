#include "format/confined_path.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace saetrack::format {
namespace {

absl::Status OutsideRoots(const std::string& path, const DataRoots& roots) {
  return absl::PermissionDeniedError(
      absl::StrCat("'", path, "' resolves outside the data roots (",
                   absl::StrJoin(roots.roots(), ", "), ")"));
}

}  // namespace

bool HasDotDotComponent(const std::string& path) {
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return true;
  }
  return false;
}

bool IsUnderRoot(const std::string& resolved, const std::string& root) {
  if (root.empty()) return false;
  if (root == "/") return !resolved.empty() && resolved[0] == '/';
  if (resolved.size() < root.size() ||
      resolved.compare(0, root.size(), root) != 0) {
    return false;
  }
  return resolved.size() == root.size() || resolved[root.size()] == '/';
}

DataRoots::DataRoots(const std::vector<std::string>& roots) {
  for (const std::string& root : roots) {
    if (root.empty()) continue;
    char buffer[PATH_MAX];
    if (::realpath(root.c_str(), buffer) != nullptr) {
      roots_.push_back(buffer);
    } else {
      std::string normal =
          std::filesystem::path(root).lexically_normal().string();
      while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
      roots_.push_back(normal);
    }
  }
}

bool DataRoots::Contains(const std::string& resolved) const {
  for (const std::string& root : roots_) {
    if (IsUnderRoot(resolved, root)) return true;
  }
  return false;
}

absl::StatusOr<std::string> DataRoots::Resolve(const std::string& path) const {
  if (HasDotDotComponent(path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' has a '..' component"));
  }
  if (empty()) return path;
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("cannot resolve '", path, "'"));
  }
  if (!Contains(buffer)) return OutsideRoots(path, *this);
  return std::string(buffer);
}

absl::StatusOr<int> DataRoots::OpenConfined(const std::string& path) const {
  if (HasDotDotComponent(path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' has a '..' component"));
  }
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK;
  if (!empty()) flags |= O_NOFOLLOW;
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) {
    if (errno == ELOOP && !empty()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "'", path,
          "' is a symbolic link; files under data roots are opened without "
          "following links"));
    }
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  }
  if (absl::Status inside = CheckOpened(fd, path); !inside.ok()) {
    ::close(fd);
    return inside;
  }
  return fd;
}

absl::Status DataRoots::CheckOpened(int fd, const std::string& path) const {
  if (empty()) return absl::OkStatus();
  // The file this descriptor refers to, whatever happened to `path` since.
  char buffer[PATH_MAX];
  const std::string link = absl::StrCat("/proc/self/fd/", fd);
  const ssize_t n = ::readlink(link.c_str(), buffer, sizeof(buffer) - 1);
  if (n < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot resolve ", path));
  }
  buffer[n] = '\0';
  if (!Contains(buffer)) return OutsideRoots(path, *this);
  return absl::OkStatus();
}

}  // namespace saetrack::format
