#include "server/internal/job_service.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace saetrack::server {
namespace {

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxRequestIdBytes = 256;

// Same spec <=> same bytes: the spec as submitted, serialized
// deterministically.
std::string Fingerprint(const v1::JobSpec& spec) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    spec.SerializeToCodedStream(&coded);
  }
  return out;
}

}  // namespace

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* /*context*/,
                                       const v1::SubmitJobRequest* request,
                                       v1::SubmitJobResponse* response) {
  RpcTimer timer(metrics_, "SubmitJob");
  return timer.Finish(DoSubmitJob(*request, response));
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* /*context*/,
                                    const v1::GetJobRequest* request,
                                    v1::Job* response) {
  RpcTimer timer(metrics_, "GetJob");
  return timer.Finish(DoGetJob(*request, response));
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* /*context*/,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  RpcTimer timer(metrics_, "ListJobs");
  return timer.Finish(DoListJobs(*request, response));
}

absl::Status JobServiceImpl::DoSubmitJob(const v1::SubmitJobRequest& request,
                                         v1::SubmitJobResponse* response) {
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id: longer than ", kMaxRequestIdBytes, " bytes"));
  }
  const std::string fingerprint = Fingerprint(request.spec());
  // A retried submission returns the original job without re-validating
  // (its files may have moved since).
  absl::StatusOr<std::optional<v1::Job>> existing =
      scheduler_->FindByRequestId(request.request_id(), fingerprint);
  if (!existing.ok()) return existing.status();
  if (existing->has_value()) {
    *response->mutable_job() = **existing;
    response->set_created(false);
    return absl::OkStatus();
  }
  absl::StatusOr<v1::JobSpec> spec = validator_->Validate(request.spec());
  if (!spec.ok()) return spec.status();
  absl::StatusOr<TaskScheduler::Submitted> submitted =
      scheduler_->CreateJob(*spec, request.request_id(), fingerprint);
  if (!submitted.ok()) return submitted.status();
  *response->mutable_job() = std::move(submitted->job);
  response->set_created(submitted->created);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoGetJob(const v1::GetJobRequest& request,
                                      v1::Job* response) {
  if (request.job_id().empty()) {
    return absl::InvalidArgumentError("job_id: required");
  }
  absl::StatusOr<v1::Job> job = scheduler_->GetJob(request.job_id());
  if (!job.ok()) return job.status();
  *response = *std::move(job);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoListJobs(const v1::ListJobsRequest& request,
                                        v1::ListJobsResponse* response) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: ", request.page_size(), " must be >= 0"));
  }
  const int page_size = request.page_size() == 0
                            ? kDefaultPageSize
                            : std::min(request.page_size(), kMaxPageSize);
  std::string after;
  if (!request.page_token().empty() &&
      !absl::WebSafeBase64Unescape(request.page_token(), &after)) {
    return absl::InvalidArgumentError("page_token: malformed");
  }
  absl::StatusOr<TaskScheduler::JobPage> page =
      scheduler_->ListJobs(after, page_size);
  if (!page.ok()) return page.status();
  for (v1::Job& job : page->jobs) *response->add_jobs() = std::move(job);
  if (!page->next_after_job_id.empty()) {
    response->set_next_page_token(
        absl::WebSafeBase64Escape(page->next_after_job_id));
  }
  return absl::OkStatus();
}

}  // namespace saetrack::server
