#include "server/internal/admin_service.h"

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace saetrack::server {
namespace {

// Sum of the sizes of the regular files under `dir`.
absl::StatusOr<int64_t> DirectoryBytes(const std::string& dir) {
  std::error_code ec;
  int64_t total = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      total += static_cast<int64_t>(it->file_size(ec));
    }
    if (ec) break;
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat("backup: cannot list '", dir, "': ", ec.message()));
  }
  return total;
}

// A backup name: one plain path component.
absl::Status CheckBackupName(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("name: required");
  if (name == "." || name == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("name: '", name, "' is not a backup name"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' &&
        c != '_' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          "name: '", name,
          "' may hold only letters, digits, '.', '_' and '-' (no '/')"));
    }
  }
  return absl::OkStatus();
}

// Directories under and including `dir` become 0700, files 0600 (hard links
// into the live database share its inodes, which are the service user's
// own files: restricting them does not change what the database reads).
absl::Status RestrictModes(const std::string& dir) {
  std::error_code ec;
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    const bool is_dir = it->is_directory(ec);
    std::filesystem::permissions(it->path(),
                                 is_dir
                                     ? std::filesystem::perms::owner_all
                                     : std::filesystem::perms::owner_read |
                                           std::filesystem::perms::owner_write,
                                 std::filesystem::perm_options::replace, ec);
    if (ec) break;
  }
  if (ec) {
    return absl::InternalError(absl::StrCat(
        "backup '", dir, "': cannot restrict modes: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

grpc::Status AdminServiceImpl::Backup(grpc::ServerContext* /*context*/,
                                      const v1::BackupRequest* request,
                                      v1::BackupResponse* response) {
  RpcTimer timer(metrics_, "Backup");
  return timer.Finish(DoBackup(*request, response));
}

absl::Status AdminServiceImpl::DoBackup(const v1::BackupRequest& request,
                                        v1::BackupResponse* response) {
  if (!request.to_dir().empty()) {
    return absl::InvalidArgumentError(
        "to_dir: no longer accepted; backups go into the coordinator's "
        "--backup_root, named by `name`");
  }
  if (backup_root_.empty()) {
    return absl::FailedPreconditionError(
        "the coordinator has no --backup_root; start it with one to take "
        "backups");
  }
  const std::string& name = request.name();
  if (absl::Status s = CheckBackupName(name); !s.ok()) return s;
  std::error_code ec;
  if (!std::filesystem::is_directory(backup_root_, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--backup_root '", backup_root_, "' is not an existing directory"));
  }
  const std::string dir = (std::filesystem::path(backup_root_) / name).string();
  if (std::filesystem::exists(std::filesystem::symlink_status(dir, ec))) {
    return absl::AlreadyExistsError(
        absl::StrCat("name: backup '", name, "' already exists"));
  }
  // Readable by the service user only from the first file written on. The
  // umask is process-wide: files other threads create meanwhile are
  // owner-only too, which is harmless; the modes are set again below.
  const mode_t old_mask = ::umask(077);
  absl::Status s = store_->Checkpoint(dir);
  ::umask(old_mask);
  if (!s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("name: backup '", name, "': ", s.message()));
  }
  if (absl::Status m = RestrictModes(dir); !m.ok()) return m;
  absl::StatusOr<int64_t> bytes = DirectoryBytes(dir);
  if (!bytes.ok()) return bytes.status();
  response->set_dir(dir);
  response->set_bytes(*bytes);
  return absl::OkStatus();
}

}  // namespace saetrack::server
