#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "worker/format/crc32c.h"

namespace saetrack::client {
namespace {

class GrpcSaetrackClient final : public SaetrackClient {
 public:
  explicit GrpcSaetrackClient(const ClientOptions& options)
      : options_(options),
        channel_(grpc::CreateChannel(options.coordinator,
                                     grpc::InsecureChannelCredentials())),
        jobs_(v1::JobService::NewStub(channel_)),
        queries_(v1::QueryService::NewStub(channel_)),
        workers_(v1::WorkerService::NewStub(channel_)) {}

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

  absl::StatusOr<std::string> DownloadSae(const std::string& job_id, int layer,
                                          int64_t step) override {
    v1::DownloadSaeRequest request;
    request.mutable_sae()->set_job_id(job_id);
    request.mutable_sae()->set_layer(layer);
    request.mutable_sae()->set_step(step);
    const std::string what = absl::StrCat(
        "SAE download of job ", job_id, " layer ", layer, " step ", step, ": ");
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<grpc::ClientReader<v1::DownloadChunk>> reader =
        workers_->DownloadSae(&context, request);
    std::string bytes;
    v1::DownloadChunk chunk;
    std::optional<v1::DownloadChunk> last;  // without its data
    absl::Status error;
    while (error.ok() && reader->Read(&chunk)) {
      const int64_t expected = static_cast<int64_t>(bytes.size());
      if (last.has_value()) {
        error = absl::DataLossError(absl::StrCat(
            what, "chunk at offset ", chunk.offset(),
            " after the last chunk (offset ", last->offset(), ")"));
      } else if (chunk.offset() != expected) {
        error = absl::DataLossError(
            absl::StrCat(what, "chunk at offset ", chunk.offset(),
                         ", expected offset ", expected));
      } else {
        bytes += chunk.data();
        if (chunk.last()) {
          chunk.clear_data();
          last = chunk;
        }
      }
    }
    if (!error.ok()) {
      // Ends the stream early; the server sees a cancelled call.
      context.TryCancel();
      (void)reader->Finish();
      return error;
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) return FromGrpcStatus(status);
    const int64_t size = static_cast<int64_t>(bytes.size());
    if (!last.has_value()) {
      return absl::DataLossError(absl::StrCat(
          what, "the stream ended at offset ", size, " without a last chunk"));
    }
    if (last->total_size() != size) {
      return absl::DataLossError(absl::StrCat(
          what, "the last chunk (offset ", last->offset(), ") says total_size ",
          last->total_size(), ", but ", size, " bytes arrived"));
    }
    if (const uint32_t crc = format::Crc32c(bytes); crc != last->crc32c()) {
      return absl::DataLossError(absl::StrFormat(
          "%sCRC-32C mismatch: the last chunk (offset %d) says 0x%08x, the %d "
          "bytes received have 0x%08x",
          what, last->offset(), last->crc32c(), size, crc));
    }
    return bytes;
  }

  absl::StatusOr<v1::CancelJobResponse> CancelJob(
      const std::string& job_id) override {
    v1::CancelJobRequest request;
    request.set_job_id(job_id);
    return Call<v1::CancelJobResponse>(*jobs_, &v1::JobService::Stub::CancelJob,
                                       request);
  }

  absl::Status WatchJob(
      const std::string& job_id, absl::Duration timeout,
      const std::function<bool(const v1::JobUpdate&)>& on_update) override {
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    grpc::ClientContext context;
    if (timeout != absl::InfiniteDuration()) {
      context.set_deadline(std::chrono::system_clock::now() +
                           absl::ToChronoMilliseconds(timeout));
    }
    std::unique_ptr<grpc::ClientReader<v1::JobUpdate>> reader =
        jobs_->WatchJob(&context, request);
    v1::JobUpdate update;
    bool stopped = false;
    while (reader->Read(&update)) {
      if (!on_update(update)) {
        stopped = true;
        context.TryCancel();
        break;
      }
    }
    grpc::Status status = reader->Finish();
    if (stopped) return absl::OkStatus();
    return FromGrpcStatus(status);
  }

 private:
  void SetDeadline(grpc::ClientContext* context) const {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(options_.call_timeout));
  }

  // One unary call with the configured deadline.
  template <typename Response, typename Stub, typename Request>
  absl::StatusOr<Response> Call(
      Stub& stub,
      grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                   Response*),
      const Request& request) const {
    grpc::ClientContext context;
    SetDeadline(&context);
    Response response;
    grpc::Status status = (stub.*method)(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::QueryService::Stub> queries_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

}  // namespace

absl::StatusOr<v1::CancelJobResponse> SaetrackClient::CancelJob(
    const std::string& /*job_id*/) {
  return absl::UnimplementedError("CancelJob");
}

absl::Status SaetrackClient::WatchJob(
    const std::string& /*job_id*/, absl::Duration /*timeout*/,
    const std::function<bool(const v1::JobUpdate&)>& /*on_update*/) {
  return absl::UnimplementedError("WatchJob");
}

std::unique_ptr<SaetrackClient> SaetrackClient::Create(
    const ClientOptions& options) {
  return std::make_unique<GrpcSaetrackClient>(options);
}

}  // namespace saetrack::client
