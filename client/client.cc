#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/crc32c.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"

namespace saetrack::client {
namespace {

// One file of a chunked download (WorkerService.DownloadSae,
// QueryService.ExportSae): reassembles its chunks and checks them against
// the last chunk's total size and CRC-32C. Not thread-safe.
class ChunkedFile {
 public:
  // `what` starts every error message.
  explicit ChunkedFile(std::string what) : what_(std::move(what)) {}

  // Appends `chunk`'s data (a DownloadChunk or an ExportChunk).
  // Errors: kDataLoss naming the offsets for a chunk that does not continue
  // the bytes received so far or comes after the last chunk.
  template <typename Chunk>
  absl::Status Add(const Chunk& chunk) {
    const int64_t expected = static_cast<int64_t>(bytes_.size());
    if (last_.has_value()) {
      return absl::DataLossError(
          absl::StrCat(what_, "chunk at offset ", chunk.offset(),
                       " after the last chunk (offset ", last_->offset, ")"));
    }
    if (chunk.offset() != expected) {
      return absl::DataLossError(absl::StrCat(what_, "chunk at offset ",
                                              chunk.offset(),
                                              ", expected offset ", expected));
    }
    bytes_ += chunk.data();
    if (chunk.last()) {
      last_ = LastChunk{chunk.offset(), chunk.total_size(), chunk.crc32c()};
    }
    return absl::OkStatus();
  }

  // The file's bytes once its chunks are all there. `ended` says what came
  // after the last chunk received, for the error when that was not the
  // file's last chunk ("the stream ended").
  // Errors: kDataLoss for a missing last chunk, or naming the sizes or
  // checksums when the last chunk's total_size or CRC-32C disagrees with
  // the bytes.
  absl::StatusOr<std::string> Finish(const std::string& ended) && {
    const int64_t size = static_cast<int64_t>(bytes_.size());
    if (!last_.has_value()) {
      return absl::DataLossError(absl::StrCat(what_, ended, " at offset ", size,
                                              " without a last chunk"));
    }
    if (last_->total_size != size) {
      return absl::DataLossError(absl::StrCat(
          what_, "the last chunk (offset ", last_->offset, ") says total_size ",
          last_->total_size, ", but ", size, " bytes arrived"));
    }
    if (const uint32_t crc = format::Crc32c(bytes_); crc != last_->crc32c) {
      return absl::DataLossError(absl::StrFormat(
          "%sCRC-32C mismatch: the last chunk (offset %d) says 0x%08x, the %d "
          "bytes received have 0x%08x",
          what_, last_->offset, last_->crc32c, size, crc));
    }
    return std::move(bytes_);
  }

 private:
  struct LastChunk {
    int64_t offset;
    int64_t total_size;
    uint32_t crc32c;
  };

  const std::string what_;
  std::string bytes_;
  std::optional<LastChunk> last_;
};

// A name that stays inside the directory it is written to.
bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

// Ends a server stream the client stopped reading because of `error`, and
// returns `error`. The server sees a cancelled call.
template <typename Message>
absl::Status EndEarly(grpc::ClientContext& context,
                      grpc::ClientReader<Message>& reader,
                      const absl::Status& error) {
  context.TryCancel();
  (void)reader.Finish();
  return error;
}

// The channel `options` ask for; a channel whose every call fails with
// INVALID_ARGUMENT when the security files cannot be read.
std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      NewSecureChannel(options.coordinator, options.security);
  if (channel.ok()) return *std::move(channel);
  return grpc::CreateChannel(options.coordinator, nullptr);
}

class GrpcSaetrackClient final : public SaetrackClient {
 public:
  explicit GrpcSaetrackClient(const ClientOptions& options)
      : options_(options),
        channel_(MakeChannel(options)),
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

  absl::StatusOr<v1::GetQualityChecksResponse> GetQualityChecks(
      const std::string& job_id, int layer) override {
    v1::GetQualityChecksRequest request;
    request.set_job_id(job_id);
    request.set_layer(layer);
    return Call<v1::GetQualityChecksResponse>(
        *queries_, &v1::QueryService::Stub::GetQualityChecks, request);
  }

  absl::StatusOr<v1::FeatureHistory> GetFeatureHistory(
      const v1::GetFeatureHistoryRequest& request) override {
    return Call<v1::FeatureHistory>(
        *queries_, &v1::QueryService::Stub::GetFeatureHistory, request);
  }

  absl::StatusOr<v1::ListFeaturesResponse> ListFeatures(
      const v1::ListFeaturesRequest& request) override {
    return Call<v1::ListFeaturesResponse>(
        *queries_, &v1::QueryService::Stub::ListFeatures, request);
  }

  absl::StatusOr<v1::DriftSummary> GetDriftSummary(const std::string& job_id,
                                                   int layer) override {
    v1::GetDriftSummaryRequest request;
    request.set_job_id(job_id);
    request.set_layer(layer);
    return Call<v1::DriftSummary>(
        *queries_, &v1::QueryService::Stub::GetDriftSummary, request);
  }

  absl::StatusOr<std::string> DownloadSae(const std::string& job_id, int layer,
                                          int64_t step) override {
    v1::DownloadSaeRequest request;
    request.mutable_sae()->set_job_id(job_id);
    request.mutable_sae()->set_layer(layer);
    request.mutable_sae()->set_step(step);
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<grpc::ClientReader<v1::DownloadChunk>> reader =
        workers_->DownloadSae(&context, request);
    ChunkedFile file(absl::StrCat("SAE download of job ", job_id, " layer ",
                                  layer, " step ", step, ": "));
    v1::DownloadChunk chunk;
    absl::Status error;
    while (error.ok() && reader->Read(&chunk)) error = file.Add(chunk);
    if (!error.ok()) return EndEarly(context, *reader, error);
    grpc::Status status = reader->Finish();
    if (!status.ok()) return FromGrpcStatus(status);
    return std::move(file).Finish("the stream ended");
  }

  absl::StatusOr<ExportedSae> ExportSae(const std::string& job_id, int layer,
                                        std::optional<int64_t> step) override {
    v1::ExportSaeRequest request;
    request.set_job_id(job_id);
    request.set_layer(layer);
    if (step.has_value()) request.set_step(*step);
    const std::string what = absl::StrCat(
        "SAE export of job ", job_id, " layer ", layer,
        step.has_value() ? absl::StrCat(" step ", *step) : " (final step)",
        ": ");
    grpc::ClientContext context;
    SetDeadline(&context);
    std::unique_ptr<grpc::ClientReader<v1::ExportChunk>> reader =
        queries_->ExportSae(&context, request);
    ExportedSae exported;
    std::optional<std::string> name;  // of the file being received
    std::optional<ChunkedFile> file;
    // Completes the file being received: `ended` says what followed it.
    const auto complete_file = [&](const std::string& ended) -> absl::Status {
      absl::StatusOr<std::string> bytes = std::move(*file).Finish(ended);
      if (!bytes.ok()) return bytes.status();
      exported.files[*name] = *std::move(bytes);
      return absl::OkStatus();
    };
    v1::ExportChunk chunk;
    absl::Status error;
    while (error.ok() && reader->Read(&chunk)) {
      if (!name.has_value()) {
        exported.step = chunk.step();
      } else if (chunk.step() != exported.step) {
        error = absl::DataLossError(
            absl::StrCat(what, "file ", chunk.file(), ": chunk at offset ",
                         chunk.offset(), " is of step ", chunk.step(),
                         ", earlier chunks of step ", exported.step));
        break;
      }
      if (name != chunk.file()) {
        if (name.has_value()) {
          error = complete_file(
              absl::StrCat("the stream moved on to ", chunk.file()));
          if (!error.ok()) break;
        }
        if (!IsPlainFileName(chunk.file())) {
          error = absl::DataLossError(
              absl::StrCat(what, "file name '", absl::CHexEscape(chunk.file()),
                           "' is not a plain file name"));
          break;
        }
        if (exported.files.count(chunk.file()) != 0) {
          error = absl::DataLossError(absl::StrCat(
              what, "file ", chunk.file(), " comes twice in the stream"));
          break;
        }
        name = chunk.file();
        file.emplace(absl::StrCat(what, "file ", *name, ": "));
      }
      error = file->Add(chunk);
    }
    if (!error.ok()) return EndEarly(context, *reader, error);
    grpc::Status status = reader->Finish();
    if (!status.ok()) return FromGrpcStatus(status);
    if (!name.has_value()) {
      return absl::DataLossError(
          absl::StrCat(what, "the stream ended without any file"));
    }
    if (absl::Status s = complete_file("the stream ended"); !s.ok()) return s;
    return exported;
  }

  absl::StatusOr<v1::CancelJobResponse> CancelJob(
      const std::string& job_id) override {
    v1::CancelJobRequest request;
    request.set_job_id(job_id);
    return Call<v1::CancelJobResponse>(*jobs_, &v1::JobService::Stub::CancelJob,
                                       request);
  }

  absl::StatusOr<v1::AddCheckpointResponse> AddCheckpoint(
      const std::string& job_id, int64_t step,
      const std::string& path) override {
    v1::AddCheckpointRequest request;
    request.set_job_id(job_id);
    request.set_step(step);
    request.set_path(path);
    return Call<v1::AddCheckpointResponse>(
        *jobs_, &v1::JobService::Stub::AddCheckpoint, request);
  }

  absl::StatusOr<v1::CloseJobResponse> CloseJob(
      const std::string& job_id) override {
    v1::CloseJobRequest request;
    request.set_job_id(job_id);
    return Call<v1::CloseJobResponse>(*jobs_, &v1::JobService::Stub::CloseJob,
                                      request);
  }

  absl::StatusOr<v1::RefreshAnalysisResponse> RefreshAnalysis(
      const std::string& job_id) override {
    v1::RefreshAnalysisRequest request;
    request.set_job_id(job_id);
    return Call<v1::RefreshAnalysisResponse>(
        *jobs_, &v1::JobService::Stub::RefreshAnalysis, request);
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

absl::StatusOr<v1::AddCheckpointResponse> SaetrackClient::AddCheckpoint(
    const std::string& /*job_id*/, int64_t /*step*/,
    const std::string& /*path*/) {
  return absl::UnimplementedError("AddCheckpoint");
}

absl::StatusOr<v1::CloseJobResponse> SaetrackClient::CloseJob(
    const std::string& /*job_id*/) {
  return absl::UnimplementedError("CloseJob");
}

absl::StatusOr<v1::RefreshAnalysisResponse> SaetrackClient::RefreshAnalysis(
    const std::string& /*job_id*/) {
  return absl::UnimplementedError("RefreshAnalysis");
}

absl::Status SaetrackClient::WatchJob(
    const std::string& /*job_id*/, absl::Duration /*timeout*/,
    const std::function<bool(const v1::JobUpdate&)>& /*on_update*/) {
  return absl::UnimplementedError("WatchJob");
}

absl::StatusOr<v1::FeatureHistory> SaetrackClient::GetFeatureHistory(
    const std::string& job_id, int layer, int feature_id) {
  v1::GetFeatureHistoryRequest request;
  request.set_job_id(job_id);
  request.set_layer(layer);
  request.set_feature_id(feature_id);
  return GetFeatureHistory(request);
}

absl::StatusOr<v1::GetQualityChecksResponse> SaetrackClient::GetQualityChecks(
    const std::string& /*job_id*/, int /*layer*/) {
  return absl::UnimplementedError("GetQualityChecks");
}

absl::StatusOr<v1::ListFeaturesResponse> SaetrackClient::ListFeatures(
    const v1::ListFeaturesRequest& /*request*/) {
  return absl::UnimplementedError("ListFeatures");
}

absl::StatusOr<v1::DriftSummary> SaetrackClient::GetDriftSummary(
    const std::string& /*job_id*/, int /*layer*/) {
  return absl::UnimplementedError("GetDriftSummary");
}

absl::StatusOr<ExportedSae> SaetrackClient::ExportSae(
    const std::string& /*job_id*/, int /*layer*/,
    std::optional<int64_t> /*step*/) {
  return absl::UnimplementedError("ExportSae");
}

std::unique_ptr<SaetrackClient> SaetrackClient::Create(
    const ClientOptions& options) {
  return std::make_unique<GrpcSaetrackClient>(options);
}

}  // namespace saetrack::client
