// saetrack.v1.JobService.
#ifndef SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_

#include "absl/time/time.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "server/internal/auth.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_validator.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

// Submits and lists jobs. Does not own its collaborators (all must outlive
// it). Thread-safe.
class JobServiceImpl final : public v1::JobService::Service {
 public:
  // `authenticator` (may be null: no token file) names the callers.
  JobServiceImpl(const JobValidator* validator, TaskScheduler* scheduler,
                 CoordinatorMetrics* metrics,
                 const Authenticator* authenticator,
                 absl::Duration watch_interval = absl::Seconds(1))
      : validator_(validator),
        scheduler_(scheduler),
        metrics_(metrics),
        authenticator_(authenticator),
        watch_interval_(watch_interval) {}

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
  // Ends OK after a terminal update, UNAVAILABLE on shutdown, CANCELLED when
  // the client goes away.
  grpc::Status WatchJob(grpc::ServerContext* context,
                        const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobUpdate>* writer) override;

 private:
  absl::Status DoSubmitJob(const Caller& caller,
                           const v1::SubmitJobRequest& request,
                           v1::SubmitJobResponse* response);
  absl::Status DoGetJob(const v1::GetJobRequest& request, v1::Job* response);
  absl::Status DoListJobs(const v1::ListJobsRequest& request,
                          v1::ListJobsResponse* response);
  absl::Status DoCancelJob(const Caller& caller,
                           const v1::CancelJobRequest& request,
                           v1::CancelJobResponse* response);
  absl::Status DoWatchJob(grpc::ServerContext* context,
                          const v1::WatchJobRequest& request,
                          grpc::ServerWriter<v1::JobUpdate>* writer);

  const JobValidator* const validator_;
  TaskScheduler* const scheduler_;
  CoordinatorMetrics* const metrics_;
  const Authenticator* const authenticator_;
  // WatchJob sends a running job at least this often.
  const absl::Duration watch_interval_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_
