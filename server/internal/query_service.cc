#include "server/internal/query_service.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace saetrack::server {

grpc::Status QueryServiceImpl::GetFeatureHistory(
    grpc::ServerContext* /*context*/,
    const v1::GetFeatureHistoryRequest* request, v1::FeatureHistory* response) {
  RpcTimer timer(metrics_, "GetFeatureHistory");
  return timer.Finish(DoGetFeatureHistory(*request, response));
}

grpc::Status QueryServiceImpl::GetCheckpointMetrics(
    grpc::ServerContext* /*context*/,
    const v1::GetCheckpointMetricsRequest* request,
    v1::GetCheckpointMetricsResponse* response) {
  RpcTimer timer(metrics_, "GetCheckpointMetrics");
  return timer.Finish(DoGetCheckpointMetrics(*request, response));
}

absl::StatusOr<v1::Job> QueryServiceImpl::JobWithLayer(
    const std::string& job_id, int32_t layer) const {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: required");
  absl::StatusOr<v1::Job> job = scheduler_->GetJob(job_id);
  if (!job.ok()) return job.status();
  std::vector<int32_t> layers;
  for (const v1::HookPoint& hook : job->spec().hooks()) {
    if (hook.layer() == layer) return job;
    layers.push_back(hook.layer());
  }
  return absl::NotFoundError(
      absl::StrCat("layer ", layer, " is not hooked by job '", job_id,
                   "' (hooked layers: ", absl::StrJoin(layers, ", "), ")"));
}

absl::Status QueryServiceImpl::DoGetFeatureHistory(
    const v1::GetFeatureHistoryRequest& request, v1::FeatureHistory* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  const int32_t d_sae = job->spec().sae().d_sae();
  if (request.feature_id() < 0 || request.feature_id() >= d_sae) {
    return absl::NotFoundError(
        absl::StrCat("feature_id ", request.feature_id(), " out of range [0, ",
                     d_sae, ") of job '", request.job_id(), "'"));
  }
  absl::StatusOr<std::vector<v1::FeaturePoint>> points =
      results_->GetFeatureHistory(request.job_id(), request.layer(),
                                  request.feature_id());
  if (!points.ok()) return points.status();
  response->set_job_id(request.job_id());
  response->set_layer(request.layer());
  response->set_feature_id(request.feature_id());
  for (v1::FeaturePoint& p : *points) *response->add_points() = std::move(p);
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::DoGetCheckpointMetrics(
    const v1::GetCheckpointMetricsRequest& request,
    v1::GetCheckpointMetricsResponse* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  absl::StatusOr<std::vector<v1::CheckpointMetrics>> metrics =
      results_->GetCheckpointMetrics(request.job_id(), request.layer());
  if (!metrics.ok()) return metrics.status();
  for (v1::CheckpointMetrics& m : *metrics) {
    *response->add_checkpoints() = std::move(m);
  }
  return absl::OkStatus();
}

}  // namespace saetrack::server
