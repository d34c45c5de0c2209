#include "server/internal/task_scheduler.h"

#include <sys/random.h>

#include <algorithm>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace saetrack::server {
namespace {

// A long poll wakes at least this often to notice a client that went away.
constexpr absl::Duration kCancellationCheckPeriod = absl::Milliseconds(500);

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

std::pair<int64_t, int64_t> LeaseOrder(const v1::Job& job, int64_t seq) {
  return {-static_cast<int64_t>(job.spec().priority()), seq};
}

bool HasAnalysis(const v1::JobSpec& spec) {
  return spec.analysis().has_analysis_tokens() &&
         spec.analysis().analysis_tokens() > 0;
}

}  // namespace

template <typename Fn>
void TaskScheduler::ForEachTaskId(const JobEntry& entry, Fn fn) {
  for (const auto& chain : entry.chains) {
    for (const std::string& id : chain) fn(id);
  }
  for (const auto& analyses : entry.analyses) {
    for (const std::string& id : analyses) fn(id);
  }
  for (const std::string& id : entry.summaries) fn(id);
}

int TaskScheduler::FinalChainIndex(const v1::JobSpec& spec) {
  const int n = spec.model().checkpoints_size();
  return spec.schedule().direction() == v1::Schedule::BACKWARD ? 0 : n - 1;
}

std::string JobIdForSeq(int64_t seq) {
  return absl::StrCat("job-", absl::Dec(seq, absl::kZeroPad6));
}

std::optional<int64_t> SeqOfJobId(const std::string& job_id) {
  constexpr std::string_view kPrefix = "job-";
  if (job_id.size() <= kPrefix.size() || job_id.rfind(kPrefix, 0) != 0) {
    return std::nullopt;
  }
  const std::string digits = job_id.substr(kPrefix.size());
  if (!std::all_of(digits.begin(), digits.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  int64_t seq = 0;
  if (!absl::SimpleAtoi(digits, &seq) || seq <= 0) return std::nullopt;
  return seq;
}

TaskScheduler::TaskScheduler(storage::KvStore* store, Clock* clock,
                             CoordinatorMetrics* metrics,
                             const SchedulerOptions& options)
    : store_(store), clock_(clock), metrics_(metrics), options_(options) {}

absl::StatusOr<std::unique_ptr<TaskScheduler>> TaskScheduler::Recover(
    storage::KvStore* store, Clock* clock, CoordinatorMetrics* metrics,
    const SchedulerOptions& options) {
  absl::StatusOr<JobStore::Snapshot> snapshot = JobStore(store).LoadAll();
  if (!snapshot.ok()) return snapshot.status();
  auto scheduler =
      absl::WrapUnique(new TaskScheduler(store, clock, metrics, options));
  {
    TaskScheduler& s = *scheduler;
    absl::MutexLock lock(&s.mu_);
    for (v1::Job& job : snapshot->jobs) {
      std::optional<int64_t> seq = SeqOfJobId(job.job_id());
      if (!seq.has_value()) {
        return absl::DataLossError(
            absl::StrCat("stored job id '", job.job_id(), "' is malformed"));
      }
      metrics->AddJobs(job.state(), 1);
      JobEntry& entry = s.jobs_[job.job_id()];
      entry.seq = *seq;
      entry.chains.resize(job.spec().hooks_size());
      if (HasAnalysis(job.spec())) {
        entry.analyses.assign(
            job.spec().hooks_size(),
            std::vector<std::string>(job.spec().model().checkpoints_size()));
        entry.summaries.resize(job.spec().hooks_size());
      }
      if (!IsTerminal(job.state())) {
        s.active_jobs_.insert(LeaseOrder(job, *seq));
      }
      s.jobs_by_seq_[*seq] = job.job_id();
      entry.job = std::move(job);
    }
    const absl::Time fresh_deadline = clock->Now() + options.lease_ttl;
    for (TaskRecord& task : snapshot->tasks) {
      auto job = s.jobs_.find(task.job_id());
      if (job == s.jobs_.end() || task.hook_index() < 0 ||
          task.hook_index() >= static_cast<int>(job->second.chains.size()) ||
          task.chain_index() < 0) {
        return absl::DataLossError(absl::StrCat("stored task '", task.task_id(),
                                                "' has no matching job"));
      }
      JobEntry& entry = job->second;
      if (task.kind() == TASK_KIND_TRAIN) {
        auto& chain = entry.chains[task.hook_index()];
        if (static_cast<int>(chain.size()) <= task.chain_index()) {
          chain.resize(task.chain_index() + 1);
        }
        chain[task.chain_index()] = task.task_id();
      } else if (task.kind() == TASK_KIND_ANALYSE &&
                 task.hook_index() < static_cast<int>(entry.analyses.size()) &&
                 task.chain_index() <
                     static_cast<int>(
                         entry.analyses[task.hook_index()].size())) {
        entry.analyses[task.hook_index()][task.chain_index()] = task.task_id();
      } else if (task.kind() == TASK_KIND_SUMMARISE &&
                 task.hook_index() < static_cast<int>(entry.summaries.size())) {
        entry.summaries[task.hook_index()] = task.task_id();
      } else {
        return absl::DataLossError(absl::StrCat("stored task '", task.task_id(),
                                                "' does not fit its job"));
      }
      metrics->AddTasks(task.state(), 1);
      if (task.state() == TASK_STATE_RUNNING) {
        s.leases_.Grant(task.task_id(), task.lease_epoch(), fresh_deadline);
      }
      std::string id = task.task_id();
      s.tasks_[id] = std::move(task);
    }
    for (const auto& [job_id, entry] : s.jobs_) {
      bool complete = true;
      for (const auto& chain : entry.chains) complete &= !chain.empty();
      ForEachTaskId(entry,
                    [&](const std::string& id) { complete &= !id.empty(); });
      if (!complete) {
        return absl::DataLossError(
            absl::StrCat("stored tasks of job '", job_id, "' are incomplete"));
      }
    }
    s.next_job_seq_ = snapshot->next_job_seq;
    s.next_worker_seq_ = snapshot->next_worker_seq;
    for (const WorkerRecord& worker : snapshot->workers) {
      s.workers_[worker.worker_id()] =
          WorkerInfo{worker.device(), worker.memory_bytes()};
      s.workers_[worker.worker_id()].registered_ms = worker.registered_ms();
    }
  }
  if (options.expiry_check_interval > absl::ZeroDuration()) {
    scheduler->expiry_thread_ =
        std::thread([s = scheduler.get()] { s->ExpiryLoop(); });
  }
  return scheduler;
}

TaskScheduler::~TaskScheduler() { Shutdown(); }

void TaskScheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    runnable_cv_.SignalAll();
    summary_cv_.SignalAll();
    job_changed_cv_.SignalAll();
  }
  if (expiry_thread_.joinable()) expiry_thread_.join();
}

int64_t TaskScheduler::NowMs() const {
  return absl::ToUnixMillis(clock_->Now());
}

void TaskScheduler::ExpiryLoop() {
  absl::MutexLock lock(&mu_);
  while (!shutting_down_) {
    if (mu_.AwaitWithTimeout(absl::Condition(&shutting_down_),
                             options_.expiry_check_interval)) {
      break;
    }
    ExpireLeasesLocked();
  }
}

absl::Status TaskScheduler::CommitLocked(storage::WriteBatch batch,
                                         const Changes& changes) {
  for (const TaskRecord& task : changes.tasks) JobStore::PutTask(task, &batch);
  for (const v1::Job& job : changes.jobs) JobStore::PutJob(job, &batch);
  const size_t bytes = batch.ByteSize();
  if (absl::Status s = store_->Write(batch, {.sync = true}); !s.ok()) return s;
  metrics_->BytesWritten(bytes);
  for (const TaskRecord& task : changes.tasks) {
    auto it = tasks_.find(task.task_id());
    if (it != tasks_.end()) metrics_->AddTasks(it->second.state(), -1);
    metrics_->AddTasks(task.state(), 1);
    if (task.state() != TASK_STATE_RUNNING) {
      leases_.Release(task.task_id());
      task_progress_.erase(task.task_id());
    }
    tasks_[task.task_id()] = task;
    if (auto job = jobs_.find(task.job_id()); job != jobs_.end()) {
      ++job->second.version;
    }
  }
  for (const v1::Job& job : changes.jobs) {
    auto it = jobs_.find(job.job_id());
    if (it == jobs_.end()) continue;  // New jobs are added by CreateJob.
    JobEntry& entry = it->second;
    metrics_->AddJobs(entry.job.state(), -1);
    metrics_->AddJobs(job.state(), 1);
    if (IsTerminal(job.state())) {
      active_jobs_.erase(LeaseOrder(entry.job, entry.seq));
    }
    entry.job = job;
    ++entry.version;
  }
  ++jobs_version_;
  job_changed_cv_.SignalAll();
  return absl::OkStatus();
}

// --- jobs ---

absl::StatusOr<std::optional<v1::Job>> TaskScheduler::FindByRequestId(
    const std::string& request_id, const std::string& fingerprint) const {
  if (request_id.empty()) return std::nullopt;
  absl::StatusOr<std::optional<IdempotencyRecord>> record =
      JobStore(store_).FindRequest(request_id);
  if (!record.ok()) return record.status();
  if (!record->has_value()) return std::nullopt;
  if ((*record)->spec_fingerprint() != fingerprint) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id '", request_id, "' was already used for job ",
                     (*record)->job_id(), " with a different spec"));
  }
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find((*record)->job_id());
  if (it == jobs_.end()) {
    return absl::DataLossError(absl::StrCat("request_id '", request_id,
                                            "' names missing job ",
                                            (*record)->job_id()));
  }
  return it->second.job;
}

absl::StatusOr<TaskScheduler::Submitted> TaskScheduler::CreateJob(
    const v1::JobSpec& spec, const std::string& request_id,
    const std::string& fingerprint) {
  absl::MutexLock lock(&mu_);
  if (!request_id.empty()) {
    // Checked again under the lock: two concurrent submissions of one
    // request id create one job.
    absl::StatusOr<std::optional<IdempotencyRecord>> record =
        JobStore(store_).FindRequest(request_id);
    if (!record.ok()) return record.status();
    if (record->has_value()) {
      if ((*record)->spec_fingerprint() != fingerprint) {
        return absl::AlreadyExistsError(absl::StrCat(
            "request_id '", request_id, "' was already used for job ",
            (*record)->job_id(), " with a different spec"));
      }
      auto it = jobs_.find((*record)->job_id());
      if (it == jobs_.end()) {
        return absl::DataLossError(absl::StrCat("request_id '", request_id,
                                                "' names missing job ",
                                                (*record)->job_id()));
      }
      return Submitted{it->second.job, false};
    }
  }

  const int64_t seq = next_job_seq_;
  const int64_t now_ms = NowMs();
  const int num_checkpoints = spec.model().checkpoints_size();
  v1::Job job;
  job.set_job_id(JobIdForSeq(seq));
  *job.mutable_spec() = spec;
  job.set_state(v1::JOB_STATE_QUEUED);
  job.mutable_progress()->set_tasks_total(spec.hooks_size() * num_checkpoints);
  const bool analysis = HasAnalysis(spec);
  if (analysis) {
    job.mutable_progress()->set_analysis_tasks_total(spec.hooks_size() *
                                                     (num_checkpoints + 1));
  }
  job.set_create_time_ms(now_ms);
  job.set_update_time_ms(now_ms);
  job.set_request_id(request_id);

  JobEntry entry;
  entry.seq = seq;
  entry.chains.resize(spec.hooks_size());
  Changes changes;
  const bool backward = spec.schedule().direction() == v1::Schedule::BACKWARD;
  for (int h = 0; h < spec.hooks_size(); ++h) {
    const int32_t layer = spec.hooks(h).layer();
    for (int c = 0; c < num_checkpoints; ++c) {
      const int checkpoint = backward ? num_checkpoints - 1 - c : c;
      TaskRecord task;
      task.set_task_id(absl::StrCat(job.job_id(), ".l", layer, ".c", c));
      task.set_job_id(job.job_id());
      task.set_hook_index(h);
      task.set_layer(layer);
      task.set_checkpoint_index(checkpoint);
      task.set_step(spec.model().checkpoints(checkpoint).step());
      task.set_chain_index(c);
      task.set_state(TASK_STATE_QUEUED);
      task.set_update_time_ms(now_ms);
      entry.chains[h].push_back(task.task_id());
      if (analysis) {
        TaskRecord pass = task;
        pass.set_task_id(absl::StrCat(job.job_id(), ".l", layer, ".a", c));
        pass.set_kind(TASK_KIND_ANALYSE);
        if (entry.analyses.size() <= static_cast<size_t>(h)) {
          entry.analyses.resize(h + 1);
        }
        entry.analyses[h].push_back(pass.task_id());
        changes.tasks.push_back(std::move(pass));
      }
      changes.tasks.push_back(std::move(task));
    }
    if (analysis) {
      TaskRecord summary;
      summary.set_task_id(absl::StrCat(job.job_id(), ".l", layer, ".summary"));
      summary.set_job_id(job.job_id());
      summary.set_hook_index(h);
      summary.set_layer(layer);
      summary.set_kind(TASK_KIND_SUMMARISE);
      summary.set_state(TASK_STATE_QUEUED);
      summary.set_update_time_ms(now_ms);
      entry.summaries.push_back(summary.task_id());
      changes.tasks.push_back(std::move(summary));
    }
  }
  changes.jobs.push_back(job);

  storage::WriteBatch batch;
  if (!request_id.empty()) {
    IdempotencyRecord record;
    record.set_job_id(job.job_id());
    record.set_spec_fingerprint(fingerprint);
    JobStore::PutRequest(request_id, record, &batch);
  }
  JobStore::PutCounter(JobStore::kNextJobSeq, seq + 1, &batch);
  if (absl::Status s = CommitLocked(std::move(batch), changes); !s.ok()) {
    return s;
  }
  next_job_seq_ = seq + 1;
  metrics_->AddJobs(job.state(), 1);
  entry.job = job;
  active_jobs_.insert(LeaseOrder(job, seq));
  jobs_by_seq_[seq] = job.job_id();
  jobs_[job.job_id()] = std::move(entry);
  runnable_cv_.SignalAll();
  return Submitted{std::move(job), true};
}

absl::StatusOr<v1::Job> TaskScheduler::GetJob(const std::string& job_id) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  return it->second.job;
}

absl::StatusOr<TaskScheduler::JobPage> TaskScheduler::ListJobs(
    const std::string& after_job_id, int page_size) const {
  int64_t after_seq = 0;
  if (!after_job_id.empty()) {
    std::optional<int64_t> seq = SeqOfJobId(after_job_id);
    if (!seq.has_value()) {
      return absl::InvalidArgumentError("page_token: malformed");
    }
    after_seq = *seq;
  }
  JobPage page;
  absl::MutexLock lock(&mu_);
  auto it = jobs_by_seq_.upper_bound(after_seq);
  for (; it != jobs_by_seq_.end() &&
         static_cast<int>(page.jobs.size()) < page_size;
       ++it) {
    page.jobs.push_back(jobs_.at(it->second).job);
  }
  if (it != jobs_by_seq_.end() && !page.jobs.empty()) {
    page.next_after_job_id = page.jobs.back().job_id();
  }
  return page;
}

absl::StatusOr<v1::Job> TaskScheduler::CancelJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  const JobEntry& entry = it->second;
  switch (entry.job.state()) {
    case v1::JOB_STATE_CANCELLED:
      return entry.job;  // Idempotent.
    case v1::JOB_STATE_SUCCEEDED:
    case v1::JOB_STATE_FAILED:
      return absl::FailedPreconditionError(
          absl::StrCat("job '", job_id, "' already ended in state ",
                       v1::JobState_Name(entry.job.state())));
    default:
      break;
  }
  const int64_t now_ms = NowMs();
  Changes changes;
  ForEachTaskId(entry, [&](const std::string& id) {
    const TaskRecord& task = tasks_.at(id);
    if (task.state() != TASK_STATE_QUEUED &&
        task.state() != TASK_STATE_RUNNING) {
      return;
    }
    TaskRecord cancelled = task;
    cancelled.set_state(TASK_STATE_CANCELLED);
    cancelled.set_error("job cancelled");
    cancelled.set_update_time_ms(now_ms);
    changes.tasks.push_back(std::move(cancelled));
  });
  v1::Job job = entry.job;
  job.set_state(v1::JOB_STATE_CANCELLED);
  job.set_error("cancelled by request");
  job.set_update_time_ms(now_ms);
  changes.jobs.push_back(job);
  if (absl::Status s = CommitLocked(storage::WriteBatch(), changes); !s.ok()) {
    return s;
  }
  return job;
}

absl::StatusOr<TaskScheduler::JobWatch> TaskScheduler::WaitForJobChange(
    const std::string& job_id, int64_t after_version, absl::Duration timeout,
    absl::FunctionRef<bool()> cancelled) const {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    if (shutting_down_) {
      return absl::UnavailableError("the coordinator is shutting down");
    }
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
    }
    const JobEntry& entry = it->second;
    const absl::Time now = absl::Now();
    if (entry.version != after_version || now >= deadline || cancelled()) {
      JobWatch watch;
      watch.job = entry.job;
      watch.version = entry.version;
      int64_t latest = 0;
      ForEachTaskId(entry, [&](const std::string& id) {
        auto progress = task_progress_.find(id);
        if (progress == task_progress_.end()) return;
        watch.running_tokens += progress->second.tokens_done;
        if (progress->second.loss.has_value() &&
            progress->second.seq > latest) {
          latest = progress->second.seq;
          watch.loss = progress->second.loss;
        }
      });
      return watch;
    }
    job_changed_cv_.WaitWithDeadline(
        &mu_, std::min(deadline, now + kCancellationCheckPeriod));
  }
}

absl::StatusOr<int64_t> TaskScheduler::WaitForAnyJobChange(
    int64_t after, absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (!shutting_down_ && jobs_version_ == after && absl::Now() < deadline) {
    job_changed_cv_.WaitWithDeadline(&mu_, deadline);
  }
  if (shutting_down_) {
    return absl::UnavailableError("the coordinator is shutting down");
  }
  return jobs_version_;
}

// --- workers ---

absl::StatusOr<std::string> TaskScheduler::RegisterWorker(
    const std::string& device, int64_t memory_bytes) {
  absl::MutexLock lock(&mu_);
  const int64_t seq = next_worker_seq_;
  // 64 bits from the kernel's CSPRNG after the sequence: a lease is bound
  // to its worker id, so ids must not be guessable.
  uint64_t nonce = 0;
  if (getrandom(&nonce, sizeof(nonce), 0) != sizeof(nonce)) {
    return absl::UnavailableError("worker id: no random bytes available");
  }
  std::string id = absl::StrCat("worker-", absl::Dec(seq, absl::kZeroPad6), "-",
                                absl::Hex(nonce, absl::kZeroPad16));
  storage::WriteBatch batch;
  JobStore::PutCounter(JobStore::kNextWorkerSeq, seq + 1, &batch);
  // The registration, so that device and memory matching survive a
  // restart of the coordinator.
  WorkerRecord record;
  record.set_worker_id(id);
  record.set_device(device);
  record.set_memory_bytes(memory_bytes);
  record.set_registered_ms(NowMs());
  record.set_last_seen_ms(record.registered_ms());
  JobStore::PutWorker(record, &batch);
  // Synced: a registration lost in a crash would leave its worker matched
  // without its capabilities after the restart.
  if (absl::Status s = store_->Write(batch, {.sync = true}); !s.ok()) {
    return s;
  }
  metrics_->BytesWritten(batch.ByteSize());
  next_worker_seq_ = seq + 1;
  workers_[id] = WorkerInfo{device, memory_bytes};
  workers_[id].registered_ms = record.registered_ms();
  metrics_->WorkerRegistered();
  return id;
}

const TaskRecord* TaskScheduler::RunnableInHookLocked(
    const JobEntry& entry, int h, int64_t now_ms,
    const TaskRecord** previous) const {
  auto runnable = [&](const TaskRecord& task) {
    return task.state() == TASK_STATE_QUEUED && task.not_before_ms() <= now_ms;
  };
  *previous = nullptr;
  for (const std::string& task_id : entry.chains[h]) {
    const TaskRecord& task = tasks_.at(task_id);
    if (task.state() == TASK_STATE_SUCCEEDED) {
      *previous = &task;
      continue;
    }
    // The first unfinished task of a chain is runnable when queued; the
    // rest of the chain waits for it, and it waits out its backoff.
    return runnable(task) ? &task : nullptr;
  }
  *previous = nullptr;
  if (entry.analyses.empty()) return nullptr;
  // The chain is trained: the final checkpoint's analysis first, then the
  // others (they need its reference positions).
  const auto& analyses = entry.analyses[h];
  const TaskRecord& final_pass =
      tasks_.at(analyses[FinalChainIndex(entry.job.spec())]);
  if (final_pass.state() != TASK_STATE_SUCCEEDED) {
    return runnable(final_pass) ? &final_pass : nullptr;
  }
  for (const std::string& task_id : analyses) {
    const TaskRecord& task = tasks_.at(task_id);
    if (runnable(task)) return &task;
  }
  return nullptr;
}

const TaskRecord* TaskScheduler::PickLocked(
    const std::string& device, int64_t memory_bytes,
    const std::string& worker_id) const {
  const int64_t now_ms = absl::ToUnixMillis(clock_->Now());
  const TaskRecord* first = nullptr;
  const TaskRecord* chained = nullptr;
  int32_t first_priority = 0;
  const WorkerInfo* last = nullptr;
  if (auto it = workers_.find(worker_id); it != workers_.end()) {
    last = &it->second;
  }
  for (const auto& [order, seq] : active_jobs_) {
    const JobEntry& entry = jobs_.at(jobs_by_seq_.at(seq));
    const v1::JobSpec& spec = entry.job.spec();
    if (!device.empty() && !spec.device().empty() && device != spec.device()) {
      continue;
    }
    if (memory_bytes > 0 && spec.min_worker_memory_bytes() > memory_bytes) {
      continue;
    }
    const int32_t priority = spec.priority();
    // Jobs come in priority order: affinity never jumps a priority level.
    if (first != nullptr && priority != first_priority) break;
    for (int h = 0; h < static_cast<int>(entry.chains.size()); ++h) {
      const TaskRecord* previous = nullptr;
      const TaskRecord* task =
          RunnableInHookLocked(entry, h, now_ms, &previous);
      if (task == nullptr) continue;
      // Another hook of the checkpoint this worker just worked on: its
      // activations are kept there (one LM forward pass per checkpoint).
      if (last != nullptr && task->job_id() == last->last_job_id &&
          task->checkpoint_index() == last->last_checkpoint_index &&
          task->kind() == last->last_kind) {
        return task;
      }
      // The next link of a chain this worker trained the previous one of.
      if (chained == nullptr && !worker_id.empty() && previous != nullptr &&
          previous->worker_id() == worker_id) {
        chained = task;
      }
      if (first == nullptr) {
        first = task;
        first_priority = priority;
      }
    }
  }
  return chained != nullptr ? chained : first;
}

absl::StatusOr<v1::Task> TaskScheduler::GrantLocked(
    const TaskRecord& picked, const std::string& worker_id) {
  TaskRecord task = picked;
  task.set_state(TASK_STATE_RUNNING);
  task.set_lease_epoch(task.lease_epoch() + 1);
  task.set_attempts(task.attempts() + 1);
  task.set_worker_id(worker_id);
  task.set_update_time_ms(NowMs());
  Changes changes;
  changes.tasks.push_back(task);
  const JobEntry& entry = jobs_.at(task.job_id());
  if (entry.job.state() == v1::JOB_STATE_QUEUED) {
    v1::Job job = entry.job;
    job.set_state(v1::JOB_STATE_RUNNING);
    job.set_update_time_ms(task.update_time_ms());
    changes.jobs.push_back(std::move(job));
  }
  storage::WriteBatch batch;
  if (auto it = workers_.find(worker_id); it != workers_.end()) {
    // When the worker was last seen, with the lease (no extra write).
    WorkerRecord record;
    record.set_worker_id(worker_id);
    record.set_device(it->second.device);
    record.set_memory_bytes(it->second.memory_bytes);
    record.set_registered_ms(it->second.registered_ms);
    record.set_last_seen_ms(task.update_time_ms());
    JobStore::PutWorker(record, &batch);
  }
  if (absl::Status s = CommitLocked(std::move(batch), changes); !s.ok()) {
    return s;
  }
  leases_.Grant(task.task_id(), task.lease_epoch(),
                clock_->Now() + options_.lease_ttl);
  metrics_->LeaseGranted();
  if (auto it = workers_.find(worker_id); it != workers_.end()) {
    it->second.last_job_id = task.job_id();
    it->second.last_checkpoint_index = task.checkpoint_index();
    it->second.last_kind = task.kind();
  }

  const v1::JobSpec& spec = entry.job.spec();
  v1::Task out;
  out.set_task_id(task.task_id());
  out.set_job_id(task.job_id());
  out.set_lease_epoch(task.lease_epoch());
  out.set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.lease_ttl));
  if (task.kind() == TASK_KIND_ANALYSE) {
    v1::AnalyseSaeTask* analyse = out.mutable_analyse();
    *analyse->mutable_spec() = spec;
    *analyse->mutable_hook() = spec.hooks(task.hook_index());
    analyse->set_checkpoint_index(task.checkpoint_index());
    analyse->set_chain_index(task.chain_index());
    v1::SaeRef* sae = analyse->mutable_sae();
    sae->set_job_id(task.job_id());
    sae->set_layer(task.layer());
    sae->set_step(task.step());
    const TaskRecord& final_pass =
        tasks_.at(entry.analyses[task.hook_index()][FinalChainIndex(spec)]);
    *analyse->mutable_final_sae() = *sae;
    analyse->mutable_final_sae()->set_step(final_pass.step());
    return out;
  }
  v1::TrainSaeTask* train = out.mutable_train();
  *train->mutable_spec() = spec;
  *train->mutable_hook() = spec.hooks(task.hook_index());
  train->set_checkpoint_index(task.checkpoint_index());
  train->set_chain_index(task.chain_index());
  if (task.chain_index() > 0) {
    const TaskRecord& previous =
        tasks_.at(entry.chains[task.hook_index()][task.chain_index() - 1]);
    v1::SaeRef* init = train->mutable_init_from();
    init->set_job_id(task.job_id());
    init->set_layer(task.layer());
    init->set_step(previous.step());
  }
  return out;
}

absl::StatusOr<std::optional<v1::Task>> TaskScheduler::Lease(
    const std::string& worker_id, absl::Duration wait,
    absl::FunctionRef<bool()> cancelled) {
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  auto worker = workers_.find(worker_id);
  // Workers registered before a restart are not known; they may take any job.
  const WorkerInfo info =
      worker == workers_.end() ? WorkerInfo{} : worker->second;
  while (true) {
    if (shutting_down_) return std::nullopt;
    ExpireLeasesLocked();
    if (const TaskRecord* task =
            PickLocked(info.device, info.memory_bytes, worker_id);
        task != nullptr) {
      absl::StatusOr<v1::Task> granted = GrantLocked(*task, worker_id);
      if (!granted.ok()) return granted.status();
      return std::optional<v1::Task>(*std::move(granted));
    }
    const absl::Time now = absl::Now();
    if (now >= deadline || cancelled()) return std::nullopt;
    runnable_cv_.WaitWithDeadline(
        &mu_, std::min(deadline, now + kCancellationCheckPeriod));
  }
}

absl::StatusOr<const TaskRecord*> TaskScheduler::LiveTaskLocked(
    const std::string& task_id, int64_t epoch) const {
  auto it = tasks_.find(task_id);
  if (it == tasks_.end()) {
    return absl::AbortedError(absl::StrCat("task '", task_id, "' is unknown"));
  }
  const TaskRecord& task = it->second;
  if (task.lease_epoch() != epoch) {
    return absl::AbortedError(
        absl::StrCat("stale lease epoch ", epoch, " of task ", task_id));
  }
  if (task.state() != TASK_STATE_RUNNING) {
    return absl::AbortedError(absl::StrCat(
        "task ", task_id, " is no longer leased (state ",
        TaskStateLabel(task.state()),
        task.error().empty() ? "" : absl::StrCat(": ", task.error()), ")"));
  }
  return &task;
}

absl::StatusOr<bool> TaskScheduler::Heartbeat(const std::string& task_id,
                                              int64_t epoch,
                                              int64_t tokens_done,
                                              std::optional<double> loss) {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
  auto it = tasks_.find(task_id);
  if (it != tasks_.end() && it->second.lease_epoch() == epoch &&
      it->second.state() == TASK_STATE_CANCELLED) {
    return true;  // The job failed: tell the worker to stop.
  }
  absl::StatusOr<const TaskRecord*> task = LiveTaskLocked(task_id, epoch);
  if (!task.ok()) return task.status();
  leases_.Renew(task_id, epoch, clock_->Now() + options_.lease_ttl);
  TaskProgress& progress = task_progress_[task_id];
  if (progress.tokens_done != tokens_done || progress.loss != loss) {
    progress.tokens_done = tokens_done;
    progress.loss = loss;
    progress.seq = next_progress_seq_++;
    ++jobs_.at((*task)->job_id()).version;
    ++jobs_version_;
    job_changed_cv_.SignalAll();
  }
  return false;
}

absl::StatusOr<LeaseInfo> TaskScheduler::CheckLease(const std::string& task_id,
                                                    int64_t epoch) {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
  absl::StatusOr<const TaskRecord*> task = LiveTaskLocked(task_id, epoch);
  if (!task.ok()) return task.status();
  const TaskRecord& t = **task;
  LeaseInfo info;
  info.job_id = t.job_id();
  info.task_id = t.task_id();
  info.worker_id = t.worker_id();
  info.layer = t.layer();
  info.step = t.step();
  info.chain_index = t.chain_index();
  const v1::JobSpec& spec = jobs_.at(t.job_id()).job.spec();
  info.d_sae = spec.sae().d_sae();
  info.kind = t.kind();
  info.final_analysis =
      t.kind() == TASK_KIND_ANALYSE && t.chain_index() == FinalChainIndex(spec);
  info.top_k = spec.analysis().top_k();
  return info;
}

absl::Status TaskScheduler::Complete(const std::string& task_id, int64_t epoch,
                                     storage::WriteBatch results,
                                     int64_t tokens_trained) {
  {
    absl::MutexLock lock(&mu_);
    ExpireLeasesLocked();
    if (auto it = tasks_.find(task_id);
        it != tasks_.end() && it->second.state() == TASK_STATE_SUCCEEDED &&
        it->second.lease_epoch() == epoch) {
      // A retry of a completion that was stored (its answer was lost on
      // the way): acknowledged again, nothing written twice.
      return absl::OkStatus();
    }
    absl::StatusOr<const TaskRecord*> live = LiveTaskLocked(task_id, epoch);
    if (!live.ok()) return live.status();
    if (!options_.commit_outside_lock) {
      return FinishCompleteLocked(task_id, epoch, std::move(results),
                                  tokens_trained);
    }
    if (!committing_.insert(task_id).second) {
      return absl::UnavailableError(absl::StrCat(
          "task ", task_id,
          ": its result is being stored by another call; try again"));
    }
  }
  // The results (nearly all the bytes: SAE weights, feature points) are
  // written and synced without the scheduler's lock, so leases, heartbeats
  // and job queries go on meanwhile; the lease cannot expire while it is
  // being committed. Synced here, so that the small synced write of the
  // task's state below does not flush them under the lock. A crash in
  // between leaves them stored but the task RUNNING: its retry overwrites
  // them with the same keys.
  const size_t bytes = results.ByteSize();
  const absl::Status written = store_->Write(results, {.sync = true});
  absl::MutexLock lock(&mu_);
  committing_.erase(task_id);
  if (!written.ok()) return written;
  metrics_->BytesWritten(bytes);
  // The lease may have ended meanwhile (job cancelled, task failed by its
  // worker): then the task's state is not touched.
  absl::StatusOr<const TaskRecord*> live = LiveTaskLocked(task_id, epoch);
  if (!live.ok()) return live.status();
  return FinishCompleteLocked(task_id, epoch, storage::WriteBatch(),
                              tokens_trained);
}

absl::Status TaskScheduler::FinishCompleteLocked(const std::string& task_id,
                                                 int64_t epoch,
                                                 storage::WriteBatch results,
                                                 int64_t tokens_trained) {
  const int64_t now_ms = NowMs();
  TaskRecord task = tasks_.at(task_id);
  task.set_state(TASK_STATE_SUCCEEDED);
  task.set_tokens_trained(tokens_trained);
  task.clear_error();
  task.set_update_time_ms(now_ms);
  Changes changes;
  changes.jobs.push_back(ProgressedJobLocked(task, tokens_trained, now_ms));
  changes.tasks.push_back(std::move(task));
  if (absl::Status s = CommitLocked(std::move(results), changes); !s.ok()) {
    return s;
  }
  runnable_cv_.SignalAll();  // The chain's next task is runnable now.
  summary_cv_.SignalAll();
  return absl::OkStatus();
}

v1::Job TaskScheduler::ProgressedJobLocked(const TaskRecord& done,
                                           int64_t tokens_trained,
                                           int64_t now_ms) const {
  v1::Job job = jobs_.at(done.job_id()).job;
  v1::JobProgress* progress = job.mutable_progress();
  if (done.kind() == TASK_KIND_TRAIN) {
    progress->set_tasks_done(progress->tasks_done() + 1);
    progress->set_tokens_trained(progress->tokens_trained() + tokens_trained);
  } else {
    progress->set_analysis_tasks_done(progress->analysis_tasks_done() + 1);
  }
  if (progress->tasks_done() >= progress->tasks_total() &&
      progress->analysis_tasks_done() >= progress->analysis_tasks_total()) {
    job.set_state(v1::JOB_STATE_SUCCEEDED);
  }
  job.set_update_time_ms(now_ms);
  return job;
}

bool TaskScheduler::RetryOrFailLocked(const TaskRecord& live,
                                      const std::string& error, bool retryable,
                                      const std::string& job_error,
                                      int64_t now_ms, Changes* changes) {
  TaskRecord task = live;
  task.set_error(error);
  task.clear_worker_id();
  task.set_update_time_ms(now_ms);
  if (retryable && task.attempts() < options_.max_attempts) {
    task.set_state(TASK_STATE_QUEUED);
    // Capped exponential backoff: a task that keeps failing (a flaky
    // machine, a worker that crashes on it) does not spin through its
    // attempts.
    absl::Duration backoff = options_.retry_backoff;
    for (int i = 1; i < task.attempts() && backoff < options_.retry_backoff_max;
         ++i) {
      backoff *= 2;
    }
    backoff = std::min(backoff, options_.retry_backoff_max);
    task.set_not_before_ms(backoff > absl::ZeroDuration()
                               ? now_ms + absl::ToInt64Milliseconds(backoff)
                               : 0);
    changes->tasks.push_back(std::move(task));
    return true;
  }
  task.set_state(TASK_STATE_FAILED);
  const JobEntry& entry = jobs_.at(task.job_id());
  ForEachTaskId(entry, [&](const std::string& id) {
    if (id == task.task_id()) return;
    const TaskRecord& other = tasks_.at(id);
    if (other.state() != TASK_STATE_QUEUED &&
        other.state() != TASK_STATE_RUNNING) {
      return;
    }
    TaskRecord cancelled = other;
    cancelled.set_state(TASK_STATE_CANCELLED);
    cancelled.set_error(absl::StrCat("job failed: ", job_error));
    cancelled.set_update_time_ms(now_ms);
    changes->tasks.push_back(std::move(cancelled));
  });
  changes->tasks.push_back(std::move(task));
  v1::Job job = entry.job;
  job.set_state(v1::JOB_STATE_FAILED);
  job.set_error(job_error);
  job.set_update_time_ms(now_ms);
  changes->jobs.push_back(std::move(job));
  return false;
}

absl::Status TaskScheduler::Fail(const std::string& task_id, int64_t epoch,
                                 const std::string& error, bool retryable) {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
  absl::StatusOr<const TaskRecord*> live = LiveTaskLocked(task_id, epoch);
  if (!live.ok()) return live.status();
  Changes changes;
  const bool requeued = RetryOrFailLocked(
      **live, error, retryable,
      absl::StrCat("task ", task_id, " failed: ", error), NowMs(), &changes);
  if (absl::Status s = CommitLocked(storage::WriteBatch(), changes); !s.ok()) {
    return s;
  }
  if (requeued) {
    metrics_->TaskRetried();
    runnable_cv_.SignalAll();
  }
  return absl::OkStatus();
}

void TaskScheduler::ExpireLeases() {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
}

void TaskScheduler::ExpireLeasesLocked() {
  const absl::Time now = clock_->Now();
  for (const std::string& task_id : leases_.ExpiredAt(now)) {
    // A lease whose result is being written does not expire under it.
    if (committing_.count(task_id) > 0) continue;
    auto it = tasks_.find(task_id);
    if (it == tasks_.end() || it->second.state() != TASK_STATE_RUNNING) {
      leases_.Release(task_id);
      continue;
    }
    const TaskRecord& task = it->second;
    Changes changes;
    const bool requeued = RetryOrFailLocked(
        task, "lease expired", /*retryable=*/true,
        absl::StrCat("lease expired: task ", task_id, " was leased ",
                     task.attempts(), " times without completing"),
        absl::ToUnixMillis(now), &changes);
    // On a storage error the lease stays expired and is retried next time.
    if (!CommitLocked(storage::WriteBatch(), changes).ok()) continue;
    metrics_->LeaseExpired();
    if (requeued) {
      metrics_->TaskRetried();
      runnable_cv_.SignalAll();
    }
  }
}

// --- summaries ---

std::optional<SummaryWork> TaskScheduler::TakeSummary(absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  while (!shutting_down_) {
    const int64_t now_ms = NowMs();
    for (const auto& [order, seq] : active_jobs_) {
      const JobEntry& entry = jobs_.at(jobs_by_seq_.at(seq));
      for (int h = 0; h < static_cast<int>(entry.summaries.size()); ++h) {
        const TaskRecord& summary = tasks_.at(entry.summaries[h]);
        if (summary.state() != TASK_STATE_QUEUED ||
            summary.not_before_ms() > now_ms ||
            summaries_taken_.count(summary.task_id()) > 0) {
          continue;
        }
        bool ready = true;
        for (const std::string& id : entry.analyses[h]) {
          ready &= tasks_.at(id).state() == TASK_STATE_SUCCEEDED;
        }
        if (!ready) continue;
        SummaryWork work;
        work.task_id = summary.task_id();
        work.job_id = summary.job_id();
        work.spec = entry.job.spec();
        work.hook_index = h;
        work.layer = summary.layer();
        for (const auto& checkpoint : work.spec.model().checkpoints()) {
          work.steps.push_back(checkpoint.step());
        }
        summaries_taken_.insert(summary.task_id());
        return work;
      }
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) break;
    summary_cv_.WaitWithDeadline(&mu_,
                                 std::min(deadline, now + absl::Seconds(1)));
  }
  return std::nullopt;
}

absl::Status TaskScheduler::CompleteSummary(const std::string& task_id,
                                            storage::WriteBatch results) {
  absl::MutexLock lock(&mu_);
  if (summaries_taken_.erase(task_id) == 0) {
    return absl::AbortedError(
        absl::StrCat("summary task ", task_id, " is not taken"));
  }
  auto it = tasks_.find(task_id);
  if (it == tasks_.end() || it->second.state() != TASK_STATE_QUEUED) {
    return absl::AbortedError(absl::StrCat(
        "summary task ", task_id, " is no longer queued (its job ended)"));
  }
  const int64_t now_ms = NowMs();
  TaskRecord task = it->second;
  task.set_state(TASK_STATE_SUCCEEDED);
  task.clear_error();
  task.set_attempts(task.attempts() + 1);
  task.set_worker_id("coordinator");
  task.set_update_time_ms(now_ms);
  Changes changes;
  changes.jobs.push_back(ProgressedJobLocked(task, 0, now_ms));
  changes.tasks.push_back(std::move(task));
  return CommitLocked(std::move(results), changes);
}

absl::Status TaskScheduler::FailSummary(const std::string& task_id,
                                        const std::string& error,
                                        bool retryable) {
  absl::MutexLock lock(&mu_);
  summaries_taken_.erase(task_id);
  auto it = tasks_.find(task_id);
  if (it == tasks_.end() || it->second.state() != TASK_STATE_QUEUED) {
    return absl::AbortedError(absl::StrCat(
        "summary task ", task_id, " is no longer queued (its job ended)"));
  }
  TaskRecord task = it->second;
  task.set_attempts(task.attempts() + 1);
  Changes changes;
  RetryOrFailLocked(task, error, retryable,
                    absl::StrCat("summary ", task_id, " failed: ", error),
                    NowMs(), &changes);
  if (absl::Status s = CommitLocked(storage::WriteBatch(), changes); !s.ok()) {
    return s;
  }
  summary_cv_.SignalAll();
  return absl::OkStatus();
}

}  // namespace saetrack::server
