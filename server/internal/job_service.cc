#include "server/internal/job_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

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
// PATH_MAX.
constexpr size_t kMaxPathBytes = 4096;
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

// The newest modification time (Unix ms) of the files directly in
// checkpoint directory `dir`; 0 when none reads.
int64_t LastWriteMs(const std::string& dir) {
  int64_t newest = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::error_code entry_ec;
    if (!entry.is_regular_file(entry_ec)) continue;
    const auto time = entry.last_write_time(entry_ec);
    if (entry_ec) continue;
    const auto system = std::chrono::time_point_cast<std::chrono::milliseconds>(
        time - std::filesystem::file_time_type::clock::now() +
        std::chrono::system_clock::now());
    newest = std::max<int64_t>(newest, system.time_since_epoch().count());
  }
  return newest;
}

}  // namespace

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request,
                                       v1::CancelJobResponse* response) {
  RpcTimer timer(metrics_, "CancelJob");
  return timer.Finish(
      DoCancelJob(CallerOf(authenticator_, *context), *request, response));
}

absl::Status JobServiceImpl::CheckOwner(const Caller& caller,
                                        const std::string& job_id) const {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: required");
  if (!caller.authenticated || caller.role == Role::kAdmin) {
    return absl::OkStatus();
  }
  // The same answer for another's job and for no job at all: a submitter
  // learns nothing about jobs that are not its own.
  const absl::Status denied = absl::PermissionDeniedError(absl::StrCat(
      "job_id: ", job_id, " is not a job submitted by '", caller.name, "'"));
  if (caller.name.empty()) return denied;
  absl::StatusOr<v1::Job> job = scheduler_->GetJob(job_id);
  if (!job.ok()) {
    return absl::IsNotFound(job.status()) ? denied : job.status();
  }
  if (job->submitter() != caller.name) return denied;
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoCancelJob(const Caller& caller,
                                         const v1::CancelJobRequest& request,
                                         v1::CancelJobResponse* response) {
  if (absl::Status s = CheckOwner(caller, request.job_id()); !s.ok()) return s;
  absl::StatusOr<v1::Job> job = scheduler_->CancelJob(request.job_id());
  if (!job.ok()) return job.status();
  *response->mutable_job() = *std::move(job);
  return absl::OkStatus();
}

grpc::Status JobServiceImpl::AddCheckpoint(
    grpc::ServerContext* context, const v1::AddCheckpointRequest* request,
    v1::AddCheckpointResponse* response) {
  RpcTimer timer(metrics_, "AddCheckpoint");
  const Caller caller = CallerOf(authenticator_, *context);
  if (absl::Status s = CheckOwner(caller, request->job_id()); !s.ok()) {
    return timer.Finish(s);
  }
  if (request->path().size() > kMaxPathBytes) {
    return timer.Finish(absl::InvalidArgumentError(
        absl::StrCat("checkpoint.path: ", request->path().size(),
                     " bytes, at most ", kMaxPathBytes)));
  }
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  absl::StatusOr<TaskScheduler::AddedCheckpoint> added =
      scheduler_->AddCheckpoint(
          request->job_id(), request->step(), request->path(), now_ms,
          LastWriteMs(request->path()),
          [this](const v1::JobSpec& spec, int64_t step,
                 const std::string& path) {
            return validator_->ValidateNewCheckpoint(spec, step, path);
          });
  if (!added.ok()) return timer.Finish(added.status());
  *response->mutable_job() = std::move(added->job);
  response->set_created(added->created);
  return timer.Finish(absl::OkStatus());
}

grpc::Status JobServiceImpl::CloseJob(grpc::ServerContext* context,
                                      const v1::CloseJobRequest* request,
                                      v1::CloseJobResponse* response) {
  RpcTimer timer(metrics_, "CloseJob");
  const Caller caller = CallerOf(authenticator_, *context);
  if (absl::Status s = CheckOwner(caller, request->job_id()); !s.ok()) {
    return timer.Finish(s);
  }
  absl::StatusOr<v1::Job> job =
      scheduler_->CloseJob(request->job_id(), "closed by request");
  if (!job.ok()) return timer.Finish(job.status());
  *response->mutable_job() = *std::move(job);
  return timer.Finish(absl::OkStatus());
}

grpc::Status JobServiceImpl::RefreshAnalysis(
    grpc::ServerContext* context, const v1::RefreshAnalysisRequest* request,
    v1::RefreshAnalysisResponse* response) {
  RpcTimer timer(metrics_, "RefreshAnalysis");
  const Caller caller = CallerOf(authenticator_, *context);
  if (absl::Status s = CheckOwner(caller, request->job_id()); !s.ok()) {
    return timer.Finish(s);
  }
  absl::StatusOr<v1::Job> job = scheduler_->RefreshAnalysis(request->job_id());
  if (!job.ok()) return timer.Finish(job.status());
  *response->mutable_job() = *std::move(job);
  return timer.Finish(absl::OkStatus());
}

// One WatchJob stream. Owned by gRPC until OnDone, and by each publisher
// round handing it an update (Ref/Unref); deleted when both let go. Keeps
// at most one update besides the one being written: a slow reader gets the
// latest state, never a backlog. Thread-safe.
class JobServiceImpl::Watcher final
    : public grpc::ServerWriteReactor<v1::JobUpdate> {
 public:
  Watcher(JobServiceImpl* service, std::string job_id)
      : service_(service),
        job_id_(std::move(job_id)),
        timer_(service->metrics_, "WatchJob") {}

  const std::string& job_id() const { return job_id_; }
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // The job's state as of `now`: written at once, or kept (replacing an
  // older one) until the write in flight is done. A job in the queue is sent
  // only when it changes; a running one also every watch_interval, so that
  // its rate and ETA stay current.
  void Offer(const TaskScheduler::JobWatch& watch, absl::Time now) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return;
      const bool changed = watch.version > version_;
      const bool running = watch.job.state() == v1::JOB_STATE_RUNNING;
      if (!changed && !(running && now - last_sent_ >= interval())) return;
      version_ = std::max(version_, watch.version);
      last_sent_ = now;
      pending_ = MakeUpdate(watch, now);
      if (writing_) return;
      TakePendingLocked();
    }
    StartWrite(&current_);
  }

  // Ends the stream with `status` (after the write in flight, if any),
  // unless it has ended already.
  void End(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || end_status_.has_value()) return;
      end_status_ = status;
      if (writing_) return;
      finishing_ = true;
    }
    Finish(timer_.Finish(status));
  }

  void OnWriteDone(bool ok) override {
    std::optional<absl::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (finishing_) return;
      if (!ok) {
        finish = absl::CancelledError("client went away during WatchJob");
      } else if (sent_terminal_) {
        finish = absl::OkStatus();
      } else if (end_status_.has_value()) {
        finish = *end_status_;
      } else if (pending_.has_value()) {
        TakePendingLocked();
      } else {
        return;
      }
      if (finish.has_value()) finishing_ = true;
    }
    if (finish.has_value()) {
      Finish(timer_.Finish(*finish));
    } else {
      StartWrite(&current_);
    }
  }

  void OnCancel() override {
    End(absl::CancelledError("client went away during WatchJob"));
  }

  void OnDone() override {
    service_->Remove(this);
    Unref();
  }

 private:
  ~Watcher() override = default;

  absl::Duration interval() const { return service_->watch_interval_; }

  void TakePendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    current_ = *std::move(pending_);
    pending_.reset();
    sent_terminal_ = IsTerminal(current_.job().state());
    writing_ = true;
  }

  v1::JobUpdate MakeUpdate(const TaskScheduler::JobWatch& watch, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v1::JobUpdate update;
    const int64_t tokens =
        watch.job.progress().tokens_trained() + watch.running_tokens;
    update.set_tokens_done(tokens);
    if (watch.job.state() == v1::JOB_STATE_RUNNING) {
      const double tokens_per_second = rate_.Add(now, tokens);
      update.set_tokens_per_second(tokens_per_second);
      if (watch.loss.has_value()) update.set_loss(*watch.loss);
      if (tokens_per_second > 0) {
        const int64_t remaining =
            std::max<int64_t>(0, PlannedTokens(watch.job.spec()) - tokens);
        update.set_eta_seconds(
            static_cast<int64_t>(std::ceil(remaining / tokens_per_second)));
      }
    }
    *update.mutable_job() = watch.job;
    return update;
  }

  JobServiceImpl* const service_;
  const std::string job_id_;
  // gRPC's reference, released in OnDone.
  std::atomic<int> refs_{1};
  absl::Mutex mu_;
  // Finished once, by whoever sets finishing_.
  RpcTimer timer_;
  // The highest job version offered so far; no job has version -1.
  int64_t version_ ABSL_GUARDED_BY(mu_) = -1;
  absl::Time last_sent_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  RateEstimator rate_ ABSL_GUARDED_BY(mu_);
  // The update being written (gRPC reads it until OnWriteDone).
  v1::JobUpdate current_;
  std::optional<v1::JobUpdate> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool sent_terminal_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> end_status_ ABSL_GUARDED_BY(mu_);
  // Finish was called (or is about to be).
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

JobServiceImpl::JobServiceImpl(const JobValidator* validator,
                               TaskScheduler* scheduler,
                               CoordinatorMetrics* metrics,
                               const Authenticator* authenticator,
                               absl::Duration watch_interval,
                               absl::Duration watch_coalesce)
    : validator_(validator),
      scheduler_(scheduler),
      metrics_(metrics),
      authenticator_(authenticator),
      watch_interval_(watch_interval),
      watch_coalesce_(watch_coalesce) {
  absl::MutexLock lock(&publisher_mu_);
  publisher_ = std::thread([this] { Publish(); });
}

JobServiceImpl::~JobServiceImpl() { Stop(); }

void JobServiceImpl::Stop() {
  {
    absl::MutexLock lock(&watchers_mu_);
    stopped_ = true;
  }
  absl::MutexLock lock(&publisher_mu_);
  if (publisher_.joinable()) publisher_.join();
}

int JobServiceImpl::watchers() const {
  absl::MutexLock lock(&watchers_mu_);
  return static_cast<int>(watchers_.size());
}

void JobServiceImpl::Remove(Watcher* watcher) {
  absl::MutexLock lock(&watchers_mu_);
  if (watchers_.erase(watcher) > 0) metrics_->WatchStreams(-1);
}

grpc::ServerWriteReactor<v1::JobUpdate>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* /*context*/,
    const v1::WatchJobRequest* request) {
  auto* watcher = new Watcher(this, request->job_id());
  if (request->job_id().empty()) {
    watcher->End(absl::InvalidArgumentError("job_id: required"));
    return watcher;
  }
  {
    absl::MutexLock lock(&watchers_mu_);
    if (stopped_) {
      watcher->End(absl::UnavailableError("the coordinator is shutting down"));
      return watcher;
    }
    watchers_.insert(watcher);
    metrics_->WatchStreams(1);
  }
  // The first update goes out at once; the publisher sends the next ones.
  absl::StatusOr<TaskScheduler::JobWatch> watch =
      scheduler_->WaitForJobChange(request->job_id(), /*after_version=*/-1,
                                   absl::ZeroDuration(), [] { return false; });
  if (!watch.ok()) {
    watcher->End(watch.status());
  } else {
    watcher->Offer(*watch, absl::Now());
  }
  return watcher;
}

void JobServiceImpl::Publish() {
  int64_t seen = -1;
  while (true) {
    absl::StatusOr<int64_t> version =
        scheduler_->WaitForAnyJobChange(seen, watch_interval_);
    if (!version.ok()) break;  // The scheduler shut down.
    seen = *version;
    std::vector<Watcher*> round;
    {
      absl::MutexLock lock(&watchers_mu_);
      if (stopped_) break;
      round.assign(watchers_.begin(), watchers_.end());
      for (Watcher* watcher : round) watcher->Ref();
    }
    // Each watched job is read once per round, whatever its watchers.
    std::map<std::string, absl::StatusOr<TaskScheduler::JobWatch>> jobs;
    const absl::Time now = absl::Now();
    for (Watcher* watcher : round) {
      auto it = jobs.find(watcher->job_id());
      if (it == jobs.end()) {
        it = jobs.emplace(watcher->job_id(),
                          scheduler_->WaitForJobChange(
                              watcher->job_id(), /*after_version=*/-1,
                              absl::ZeroDuration(), [] { return false; }))
                 .first;
      }
      if (it->second.ok()) {
        watcher->Offer(*it->second, now);
      } else {
        watcher->End(it->second.status());
      }
      watcher->Unref();
    }
    // Changes while this round's writes go out make one next round.
    absl::SleepFor(watch_coalesce_);
  }
  std::vector<Watcher*> rest;
  {
    absl::MutexLock lock(&watchers_mu_);
    stopped_ = true;
    rest.assign(watchers_.begin(), watchers_.end());
    for (Watcher* watcher : rest) watcher->Ref();
  }
  for (Watcher* watcher : rest) {
    watcher->End(absl::UnavailableError("the coordinator is shutting down"));
    watcher->Unref();
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
