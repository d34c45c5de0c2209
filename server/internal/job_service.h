// saetrack.v1.JobService.
#ifndef SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_

#include "saetrack/v1/job.grpc.pb.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_validator.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

// Submits and lists jobs. Does not own its collaborators (all must outlive
// it). Thread-safe.
class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(const JobValidator* validator, TaskScheduler* scheduler,
                 CoordinatorMetrics* metrics)
      : validator_(validator), scheduler_(scheduler), metrics_(metrics) {}

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

 private:
  absl::Status DoSubmitJob(const v1::SubmitJobRequest& request,
                           v1::SubmitJobResponse* response);
  absl::Status DoGetJob(const v1::GetJobRequest& request, v1::Job* response);
  absl::Status DoListJobs(const v1::ListJobsRequest& request,
                          v1::ListJobsResponse* response);

  const JobValidator* const validator_;
  TaskScheduler* const scheduler_;
  CoordinatorMetrics* const metrics_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_JOB_SERVICE_H_
