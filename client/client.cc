#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "proto/status_mapping.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"

namespace saetrack::client {
namespace {

class GrpcSaetrackClient final : public SaetrackClient {
 public:
  explicit GrpcSaetrackClient(const ClientOptions& options)
      : options_(options),
        channel_(grpc::CreateChannel(options.coordinator,
                                     grpc::InsecureChannelCredentials())),
        jobs_(v1::JobService::NewStub(channel_)),
        queries_(v1::QueryService::NewStub(channel_)) {}

  absl::StatusOr<v1::SubmitJobResponse> SubmitJob(
      const v1::JobSpec& spec, const std::string& request_id) override {
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    request.set_request_id(request_id);
    return Call<v1::SubmitJobResponse>(*jobs_, &v1::JobService::Stub::SubmitJob,
                                       request);
  }

  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) override {
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    return Call<v1::Job>(*jobs_, &v1::JobService::Stub::GetJob, request);
  }

  absl::StatusOr<v1::ListJobsResponse> ListJobs(
      int page_size, const std::string& page_token) override {
    v1::ListJobsRequest request;
    request.set_page_size(page_size);
    request.set_page_token(page_token);
    return Call<v1::ListJobsResponse>(*jobs_, &v1::JobService::Stub::ListJobs,
                                      request);
  }

  absl::StatusOr<v1::GetCheckpointMetricsResponse> GetCheckpointMetrics(
      const std::string& job_id, int layer) override {
    v1::GetCheckpointMetricsRequest request;
    request.set_job_id(job_id);
    request.set_layer(layer);
    return Call<v1::GetCheckpointMetricsResponse>(
        *queries_, &v1::QueryService::Stub::GetCheckpointMetrics, request);
  }

  absl::StatusOr<v1::FeatureHistory> GetFeatureHistory(
      const std::string& job_id, int layer, int feature_id) override {
    v1::GetFeatureHistoryRequest request;
    request.set_job_id(job_id);
    request.set_layer(layer);
    request.set_feature_id(feature_id);
    return Call<v1::FeatureHistory>(
        *queries_, &v1::QueryService::Stub::GetFeatureHistory, request);
  }

 private:
  // One unary call with the configured deadline.
  template <typename Response, typename Stub, typename Request>
  absl::StatusOr<Response> Call(
      Stub& stub,
      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                   Response*),
      const Request& request) const {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(options_.call_timeout));
    Response response;
    grpc::Status status = (stub.*method)(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::QueryService::Stub> queries_;
};

}  // namespace

std::unique_ptr<SaetrackClient> SaetrackClient::Create(
    const ClientOptions& options) {
  return std::make_unique<GrpcSaetrackClient>(options);
}

}  // namespace saetrack::client
