// saetrack.v1.WorkerService.
#ifndef SAETRACK_SERVER_INTERNAL_WORKER_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_WORKER_SERVICE_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "server/internal/artifact_staging.h"
#include "server/internal/auth.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/result_store.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

struct WorkerServiceOptions {
  absl::Duration lease_ttl = absl::Seconds(30);
  int64_t max_artifact_bytes = int64_t{4} << 30;
  // Uploads waiting for their CompleteTask, all tasks together: beyond this
  // an upload is refused with RESOURCE_EXHAUSTED (the worker sends it again
  // later) rather than the coordinator running out of disk.
  int64_t max_staged_bytes = int64_t{8} << 30;
  // The same for the uploads of one worker's leases.
  int64_t max_staged_bytes_per_worker = int64_t{5} << 30;
  // LeaseTask waits at most this long, whatever the worker asks for.
  absl::Duration max_lease_wait = absl::Seconds(10);
  // DownloadSae chunk size.
  int64_t download_chunk_bytes = int64_t{1} << 20;
  // The coordinator's data roots (resolved), sent with every leased task
  // (Task.data_roots) so that workers confine their opens to them.
  std::vector<std::string> data_roots;
};

// Leases, heartbeats, artifact transfer and task completion for workers.
// Every call after LeaseTask is fenced by the lease epoch and bound to the
// worker holding the lease (ABORTED when stale or another worker's), and
// every uploaded number is range-checked before anything is stored. Does not
// own its collaborators (all must outlive it). Thread-safe.
class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(TaskScheduler* scheduler, ResultStore* results,
                    ArtifactStaging* staging, CoordinatorMetrics* metrics,
                    const WorkerServiceOptions& options,
                    const Authenticator* authenticator = nullptr)
      : scheduler_(scheduler),
        results_(results),
        staging_(staging),
        metrics_(metrics),
        options_(options),
        authenticator_(authenticator) {}

  grpc::Status RegisterWorker(grpc::ServerContext* context,
                              const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;
  grpc::Status LeaseTask(grpc::ServerContext* context,
                         const v1::LeaseTaskRequest* request,
                         v1::LeaseTaskResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status UploadArtifact(grpc::ServerContext* context,
                              grpc::ServerReader<v1::ArtifactChunk>* reader,
                              v1::UploadArtifactResponse* response) override;
  grpc::Status DownloadSae(
      grpc::ServerContext* context, const v1::DownloadSaeRequest* request,
      grpc::ServerWriter<v1::DownloadChunk>* writer) override;
  grpc::Status CompleteTask(grpc::ServerContext* context,
                            const v1::CompleteTaskRequest* request,
                            v1::CompleteTaskResponse* response) override;
  grpc::Status FailTask(grpc::ServerContext* context,
                        const v1::FailTaskRequest* request,
                        v1::FailTaskResponse* response) override;

 private:
  // Frees staged uploads whose lease has ended.
  void DropStaleUploads();
  absl::Status DoRegisterWorker(const Caller& caller,
                                const v1::RegisterWorkerRequest& request,
                                v1::RegisterWorkerResponse* response);
  absl::Status DoLeaseTask(const Caller& caller, grpc::ServerContext* context,
                           const v1::LeaseTaskRequest& request,
                           v1::LeaseTaskResponse* response);
  absl::Status DoHeartbeat(const Caller& caller,
                           const v1::HeartbeatRequest& request,
                           v1::HeartbeatResponse* response);
  absl::Status DoUploadArtifact(const Caller& caller,
                                grpc::ServerReader<v1::ArtifactChunk>* reader,
                                v1::UploadArtifactResponse* response);
  absl::Status DoDownloadSae(const v1::DownloadSaeRequest& request,
                             grpc::ServerWriter<v1::DownloadChunk>* writer);
  absl::Status DoCompleteTask(const Caller& caller,
                              const v1::CompleteTaskRequest& request);
  absl::Status DoFailTask(const Caller& caller,
                          const v1::FailTaskRequest& request);
  // CompleteTask of an analysis task: merges the uploaded
  // FEATURE_ANALYSIS artifact into the checkpoint's feature points.
  absl::Status CompleteAnalysis(const LeaseInfo& lease, int64_t epoch);
  // The live lease (task_id, epoch) when `worker_id` holds it. The one place
  // where Heartbeat, UploadArtifact, CompleteTask and FailTask check who
  // holds a lease (a check of the caller's credentials belongs here too).
  // With authentication, `worker_id` must also have been registered by the
  // caller's token (admins excepted).
  // Errors: kInvalidArgument for an empty worker_id or task_id; kAborted for
  // a stale epoch or another worker's lease, naming neither the current
  // epoch nor the holder.
  absl::StatusOr<LeaseInfo> CheckLeaseHolder(const Caller& caller,
                                             const std::string& worker_id,
                                             const std::string& task_id,
                                             int64_t epoch);

  // Whether `caller` may act for `worker_id`: without authentication
  // always; else when the worker was registered by the caller's token (or
  // the caller is an admin).
  bool ActsFor(const Caller& caller, const std::string& worker_id) const;

  // Marks a task as being completed for its lifetime; ok() is false when
  // another completion of the task is in progress.
  class CompletionGuard {
   public:
    CompletionGuard(WorkerServiceImpl* service, std::string task_id);
    ~CompletionGuard();
    bool ok() const { return ok_; }

   private:
    WorkerServiceImpl* const service_;
    const std::string task_id_;
    bool ok_ = false;
  };

  TaskScheduler* const scheduler_;
  ResultStore* const results_;
  ArtifactStaging* const staging_;
  CoordinatorMetrics* const metrics_;
  const WorkerServiceOptions options_;
  const Authenticator* const authenticator_;  // Null: no authentication.
  absl::Mutex completing_mu_;
  std::set<std::string> completing_ ABSL_GUARDED_BY(completing_mu_);
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_WORKER_SERVICE_H_
