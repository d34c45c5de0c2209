#include "server/internal/admin_service.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
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
        absl::StrCat("to_dir: cannot list '", dir, "': ", ec.message()));
  }
  return total;
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
  const std::string& dir = request.to_dir();
  if (dir.empty()) return absl::InvalidArgumentError("to_dir: required");
  if (!std::filesystem::path(dir).is_absolute()) {
    return absl::InvalidArgumentError(
        absl::StrCat("to_dir: '", dir, "' must be an absolute path"));
  }
  if (absl::Status s = store_->Checkpoint(dir); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("to_dir: ", s.message()));
  }
  absl::StatusOr<int64_t> bytes = DirectoryBytes(dir);
  if (!bytes.ok()) return bytes.status();
  response->set_dir(dir);
  response->set_bytes(*bytes);
  return absl::OkStatus();
}

}  // namespace saetrack::server
