// Paths confined to data roots: a coordinator or worker that serves files
// named by clients opens them only under directories its operator chose, and
// re-checks every open, so that a symlink swapped in after a job was
// accepted reads nothing outside the roots.
#ifndef SAETRACK_FORMAT_CONFINED_PATH_H_
#define SAETRACK_FORMAT_CONFINED_PATH_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saetrack::format {

// True when `path` has a ".." component (e.g. "/data/../etc/passwd").
bool HasDotDotComponent(const std::string& path);

// True when the absolute, symlink-free `resolved` path is `root` or lies
// under it (compared component-wise: "/data2" is not under "/data").
bool IsUnderRoot(const std::string& resolved, const std::string& root);

// A set of data roots, each resolved (realpath) when constructed; a root that
// does not exist is kept as given (lexically normalised), so nothing lies
// under it until it does. Immutable after construction: thread-safe.
class DataRoots {
 public:
  DataRoots() = default;
  explicit DataRoots(const std::vector<std::string>& roots);

  // No roots: paths are not confined (a loopback development setup).
  bool empty() const { return roots_.empty(); }
  const std::vector<std::string>& roots() const { return roots_; }

  // True when `resolved` (absolute, symlinks resolved) lies under a root.
  bool Contains(const std::string& resolved) const;

  // `path` resolved (every symlink followed, realpath), when it has no ".."
  // component and the result lies under a root; `path` itself when there
  // are no roots. Errors (kPermissionDenied for a path outside the roots,
  // kInvalidArgument for "..", errno codes naming the path when it cannot
  // be resolved) name `path`. The result can change under a later open;
  // opens that matter use OpenConfined.
  absl::StatusOr<std::string> Resolve(const std::string& path) const;

  // Opens `path` for reading without blocking: O_NOFOLLOW refuses a final
  // component that is a symlink, and the file actually opened (its
  // /proc/self/fd link) must lie under a root, so no swap of any component
  // before or after the call makes it read a file outside the roots.
  // Without roots a plain open. Returns an owned file descriptor (close it).
  // Errors name `path`: kPermissionDenied for a symlink or a file outside the
  // roots, kInvalidArgument for "..", errno codes otherwise.
  absl::StatusOr<int> OpenConfined(const std::string& path) const;

  // OK when the file open as `fd` (however it was reached: its
  // /proc/self/fd link) lies under a root, or there are no roots; otherwise
  // the error OpenConfined gives for `path`. Does not close `fd`.
  absl::Status CheckOpened(int fd, const std::string& path) const;

 private:
  std::vector<std::string> roots_;  // Resolved.
};

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_CONFINED_PATH_H_
