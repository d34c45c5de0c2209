// saetrack.v1.AdminService.
#ifndef SAETRACK_SERVER_INTERNAL_ADMIN_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_ADMIN_SERVICE_H_

#include <string>
#include <utility>

#include "saetrack/v1/admin.grpc.pb.h"
#include "server/internal/coordinator_metrics.h"
#include "storage/kv_store.h"

namespace saetrack::server {

// Backups of the database into `backup_root` (empty: Backup is
// FAILED_PRECONDITION), by name. The coordinator checks at start that the
// root does not overlap its data directory. Does not own its collaborators
// (both must outlive it). Thread-safe.
class AdminServiceImpl final : public v1::AdminService::Service {
 public:
  AdminServiceImpl(storage::KvStore* store, CoordinatorMetrics* metrics,
                   std::string backup_root = "")
      : store_(store),
        metrics_(metrics),
        backup_root_(std::move(backup_root)) {}

  grpc::Status Backup(grpc::ServerContext* context,
                      const v1::BackupRequest* request,
                      v1::BackupResponse* response) override;

 private:
  absl::Status DoBackup(const v1::BackupRequest& request,
                        v1::BackupResponse* response);

  storage::KvStore* const store_;
  CoordinatorMetrics* const metrics_;
  const std::string backup_root_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_ADMIN_SERVICE_H_
