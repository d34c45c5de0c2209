#include "server/internal/job_service.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace saetrack::server {
namespace {

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxRequestIdBytes = 256;
// A job spec is a checkpoint list and settings; 1 MiB holds ~10,000
// checkpoints. Larger ones would make every Lease and ListJobs answer huge
// (gRPC clients refuse answers over 4 MiB by default).
constexpr size_t kMaxSpecBytes = size_t{1} << 20;
// ListJobs answers stay below the 4 MiB a gRPC client accepts by default:
// a page ends early (with a next_page_token) rather than grow beyond this.
constexpr size_t kMaxListJobsResponseBytes = size_t{3} << 20;

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

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// Training tokens the schedule plans for the whole job (an adaptive budget
// may stop later SAEs sooner).
int64_t PlannedTokens(const v1::JobSpec& spec) {
  const int64_t checkpoints = spec.model().checkpoints_size();
  if (checkpoints == 0) return 0;
  const int64_t first = spec.schedule().tokens_first();
  const int64_t later = spec.schedule().tokens_later() > 0
                            ? spec.schedule().tokens_later()
                            : first / 20;
  return spec.hooks_size() * (first + (checkpoints - 1) * later);
}

// Tokens per second over a sliding window of (time, tokens) samples.
class RateEstimator {
 public:
  double Add(absl::Time now, int64_t tokens) {
    if (!samples_.empty() && tokens < samples_.back().second) {
      samples_.clear();  // A task restarted: start over.
    }
    samples_.emplace_back(now, tokens);
    while (samples_.size() > 2 && now - samples_[1].first >= kWindow) {
      samples_.pop_front();
    }
    const absl::Duration span = now - samples_.front().first;
    if (span < absl::Milliseconds(200)) return rate_;
    rate_ = static_cast<double>(tokens - samples_.front().second) /
            absl::ToDoubleSeconds(span);
    return rate_;
  }

 private:
  static constexpr absl::Duration kWindow = absl::Seconds(10);
  std::deque<std::pair<absl::Time, int64_t>> samples_;
  double rate_ = 0;
};

}  // namespace

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request,
                                       v1::CancelJobResponse* response) {
  RpcTimer timer(metrics_, "CancelJob");
  return timer.Finish(
      DoCancelJob(CallerOf(authenticator_, *context), *request, response));
}

grpc::Status JobServiceImpl::WatchJob(
    grpc::ServerContext* context, const v1::WatchJobRequest* request,
    grpc::ServerWriter<v1::JobUpdate>* writer) {
  RpcTimer timer(metrics_, "WatchJob");
  return timer.Finish(DoWatchJob(context, *request, writer));
}

absl::Status JobServiceImpl::DoCancelJob(const Caller& caller,
                                         const v1::CancelJobRequest& request,
                                         v1::CancelJobResponse* response) {
  if (request.job_id().empty()) {
    return absl::InvalidArgumentError("job_id: required");
  }
  if (caller.authenticated && caller.role != Role::kAdmin) {
    // The same answer for another's job and for no job at all: a submitter
    // learns nothing about jobs that are not its own.
    const absl::Status denied = absl::PermissionDeniedError(
        absl::StrCat("job_id: ", request.job_id(),
                     " is not a job submitted by '", caller.name, "'"));
    if (caller.name.empty()) return denied;
    absl::StatusOr<v1::Job> job = scheduler_->GetJob(request.job_id());
    if (!job.ok()) {
      return absl::IsNotFound(job.status()) ? denied : job.status();
    }
    if (job->submitter() != caller.name) return denied;
  }
  absl::StatusOr<v1::Job> job = scheduler_->CancelJob(request.job_id());
  if (!job.ok()) return job.status();
  *response->mutable_job() = *std::move(job);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoWatchJob(
    grpc::ServerContext* context, const v1::WatchJobRequest& request,
    grpc::ServerWriter<v1::JobUpdate>* writer) {
  if (request.job_id().empty()) {
    return absl::InvalidArgumentError("job_id: required");
  }
  const auto cancelled = [context] { return context->IsCancelled(); };
  RateEstimator rate;
  // No job has version -1: the first wait returns at once.
  int64_t version = -1;
  while (true) {
    absl::StatusOr<TaskScheduler::JobWatch> watch =
        scheduler_->WaitForJobChange(request.job_id(), version, watch_interval_,
                                     cancelled);
    if (!watch.ok()) return watch.status();
    if (context->IsCancelled()) {
      return absl::CancelledError("client went away during WatchJob");
    }
    const v1::JobState state = watch->job.state();
    const bool changed = watch->version != version;
    version = watch->version;
    // A job that waits in the queue is sent only when it changes.
    if (!changed && state != v1::JOB_STATE_RUNNING) continue;

    v1::JobUpdate update;
    const int64_t tokens =
        watch->job.progress().tokens_trained() + watch->running_tokens;
    update.set_tokens_done(tokens);
    if (state == v1::JOB_STATE_RUNNING) {
      const double tokens_per_second = rate.Add(absl::Now(), tokens);
      update.set_tokens_per_second(tokens_per_second);
      if (watch->loss.has_value()) update.set_loss(*watch->loss);
      if (tokens_per_second > 0) {
        const int64_t remaining =
            std::max<int64_t>(0, PlannedTokens(watch->job.spec()) - tokens);
        update.set_eta_seconds(
            static_cast<int64_t>(std::ceil(remaining / tokens_per_second)));
      }
    }
    *update.mutable_job() = std::move(watch->job);
    if (!writer->Write(update)) {
      return absl::CancelledError("client went away during WatchJob");
    }
    if (IsTerminal(state)) return absl::OkStatus();
  }
}

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* context,
                                       const v1::SubmitJobRequest* request,
                                       v1::SubmitJobResponse* response) {
  RpcTimer timer(metrics_, "SubmitJob");
  return timer.Finish(
      DoSubmitJob(CallerOf(authenticator_, *context), *request, response));
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

absl::Status JobServiceImpl::DoSubmitJob(const Caller& caller,
                                         const v1::SubmitJobRequest& request,
                                         v1::SubmitJobResponse* response) {
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id: longer than ", kMaxRequestIdBytes, " bytes"));
  }
  if (const size_t bytes = request.spec().ByteSizeLong();
      bytes > kMaxSpecBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: ", bytes, " bytes, more than the ", kMaxSpecBytes,
                     " a job spec may have"));
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
  absl::StatusOr<TaskScheduler::Submitted> submitted = scheduler_->CreateJob(
      *spec, request.request_id(), fingerprint, caller.name);
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
  std::string next_after = page->next_after_job_id;
  size_t bytes = 0;
  for (v1::Job& job : page->jobs) {
    // Each repeated entry costs its bytes plus a tag and a length.
    const size_t job_bytes = job.ByteSizeLong() + 8;
    if (response->jobs_size() > 0 &&
        bytes + job_bytes > kMaxListJobsResponseBytes) {
      // The page ends here; the next one starts after the last job sent.
      next_after = response->jobs(response->jobs_size() - 1).job_id();
      break;
    }
    bytes += job_bytes;
    *response->add_jobs() = std::move(job);
  }
  if (!next_after.empty()) {
    response->set_next_page_token(absl::WebSafeBase64Escape(next_after));
  }
  return absl::OkStatus();
}

}  // namespace saetrack::server
