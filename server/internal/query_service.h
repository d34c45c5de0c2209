// saetrack.v1.QueryService.
#ifndef SAETRACK_SERVER_INTERNAL_QUERY_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_QUERY_SERVICE_H_

#include "saetrack/v1/query.grpc.pb.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/result_store.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

// Answers queries over stored results. Does not own its collaborators (all
// must outlive it). Thread-safe.
class QueryServiceImpl final : public v1::QueryService::Service {
 public:
  QueryServiceImpl(const TaskScheduler* scheduler, const ResultStore* results,
                   CoordinatorMetrics* metrics)
      : scheduler_(scheduler), results_(results), metrics_(metrics) {}

  grpc::Status GetFeatureHistory(grpc::ServerContext* context,
                                 const v1::GetFeatureHistoryRequest* request,
                                 v1::FeatureHistory* response) override;
  grpc::Status GetCheckpointMetrics(
      grpc::ServerContext* context,
      const v1::GetCheckpointMetricsRequest* request,
      v1::GetCheckpointMetricsResponse* response) override;

 private:
  absl::Status DoGetFeatureHistory(const v1::GetFeatureHistoryRequest& request,
                                   v1::FeatureHistory* response);
  absl::Status DoGetCheckpointMetrics(
      const v1::GetCheckpointMetricsRequest& request,
      v1::GetCheckpointMetricsResponse* response);
  // The job, if it exists and hooks `layer`; else kNotFound naming which.
  absl::StatusOr<v1::Job> JobWithLayer(const std::string& job_id,
                                       int32_t layer) const;

  const TaskScheduler* const scheduler_;
  const ResultStore* const results_;
  CoordinatorMetrics* const metrics_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_QUERY_SERVICE_H_
