// saetrack.v1.JobService.
#ifndef SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_

#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "server/internal/auth.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_validator.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

// Submits and lists jobs. WatchJob is served with gRPC's callback API: no
// thread is held per stream; one publisher thread wakes on job changes (at
// most every `watch_coalesce`, so that many heartbeats make one round),
// reads each watched job once per round and hands the update to its
// streams, each of which keeps only the latest update while a write is in
// flight. Does not own its collaborators (all must outlive it).
// Thread-safe.
class JobServiceImpl final : public v1::JobService::WithCallbackMethod_WatchJob<
                                 v1::JobService::Service> {
 public:
  // `authenticator` (may be null: no token file) names the callers.
  JobServiceImpl(const JobValidator* validator, TaskScheduler* scheduler,
                 CoordinatorMetrics* metrics,
                 const Authenticator* authenticator,
                 absl::Duration watch_interval = absl::Seconds(1),
                 absl::Duration watch_coalesce = absl::Milliseconds(100));
  // Stop()s.
  ~JobServiceImpl() override;
  // Ends every open WatchJob stream with UNAVAILABLE, refuses new ones and
  // joins the publisher. Call it after the scheduler's Shutdown and before
  // the scheduler goes away. Idempotent.
  void Stop();
  JobServiceImpl(const JobServiceImpl&) = delete;
  JobServiceImpl& operator=(const JobServiceImpl&) = delete;

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const v1::GetJobRequest* request,
                      v1::Job* response) override;
  // Oldest job first (ascending job id); page_token is opaque.
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  // A submitter may cancel only the jobs it submitted: any other job is
  // PERMISSION_DENIED (whether it exists or not); an admin cancels any.
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::CancelJobResponse* response) override;
  // Follow mode (job.proto); the same ownership rule as CancelJob.
  grpc::Status AddCheckpoint(grpc::ServerContext* context,
                             const v1::AddCheckpointRequest* request,
                             v1::AddCheckpointResponse* response) override;
  grpc::Status CloseJob(grpc::ServerContext* context,
                        const v1::CloseJobRequest* request,
                        v1::CloseJobResponse* response) override;
  grpc::Status RefreshAnalysis(grpc::ServerContext* context,
                               const v1::RefreshAnalysisRequest* request,
                               v1::RefreshAnalysisResponse* response) override;
  // Ends OK after a terminal update, UNAVAILABLE on shutdown, CANCELLED when
  // the client goes away.
  grpc::ServerWriteReactor<v1::JobUpdate>* WatchJob(
      grpc::CallbackServerContext* context,
      const v1::WatchJobRequest* request) override;
  // Open WatchJob streams.
  int watchers() const;

 private:
  absl::Status DoSubmitJob(const Caller& caller,
                           const v1::SubmitJobRequest& request,
                           v1::SubmitJobResponse* response);
  absl::Status DoGetJob(const v1::GetJobRequest& request, v1::Job* response);
  absl::Status DoListJobs(const v1::ListJobsRequest& request,
                          v1::ListJobsResponse* response);
  // OK when `caller` may change job `job_id`: without authentication and
  // for an admin always, for a submitter only its own jobs (otherwise
  // PERMISSION_DENIED whether the job exists or not).
  absl::Status CheckOwner(const Caller& caller,
                          const std::string& job_id) const;
  absl::Status DoCancelJob(const Caller& caller,
                           const v1::CancelJobRequest& request,
                           v1::CancelJobResponse* response);
  class Watcher;
  // The publisher thread's loop.
  void Publish();
  void Remove(Watcher* watcher);

  const JobValidator* const validator_;
  TaskScheduler* const scheduler_;
  CoordinatorMetrics* const metrics_;
  const Authenticator* const authenticator_;
  // WatchJob sends a running job at least this often.
  const absl::Duration watch_interval_;
  const absl::Duration watch_coalesce_;
  mutable absl::Mutex watchers_mu_;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(watchers_mu_);
  // Set by Stop, or once the publisher has ended (the scheduler shut down).
  bool stopped_ ABSL_GUARDED_BY(watchers_mu_) = false;
  absl::Mutex publisher_mu_;  // Serialises Stop's join.
  std::thread publisher_ ABSL_GUARDED_BY(publisher_mu_);
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_
