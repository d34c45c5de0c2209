#include "server/internal/task_scheduler.h"

#include <sys/random.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"

namespace saetrack::server {
namespace {

// A long poll wakes at least this often to notice a client that went away.
constexpr absl::Duration kCancellationCheckPeriod = absl::Milliseconds(500);

JobStateMachine::Options MachineOptions(const SchedulerOptions& options) {
  JobStateMachine::Options out;
  out.max_attempts = options.max_attempts;
  out.retry_backoff = options.retry_backoff;
  out.retry_backoff_max = options.retry_backoff_max;
  return out;
}

}  // namespace

TaskScheduler::TaskScheduler(storage::KvStore* store, Clock* clock,
                             CoordinatorMetrics* metrics,
                             const SchedulerOptions& options,
                             JobStateMachine state)
    : options_(options),
      store_(store),
      clock_(clock),
      metrics_(metrics),
      committer_(store, metrics),
      state_(std::move(state)) {}

absl::StatusOr<std::unique_ptr<TaskScheduler>> TaskScheduler::Recover(
    storage::KvStore* store, Clock* clock, CoordinatorMetrics* metrics,
    const SchedulerOptions& options) {
  absl::StatusOr<JobStore::Snapshot> snapshot = JobStore(store).LoadAll();
  if (!snapshot.ok()) return snapshot.status();
  absl::StatusOr<JobStateMachine> state = JobStateMachine::FromRecords(
      MachineOptions(options), std::move(snapshot->jobs),
      std::move(snapshot->tasks));
  if (!state.ok()) return state.status();
  auto scheduler = absl::WrapUnique(
      new TaskScheduler(store, clock, metrics, options, *std::move(state)));
  {
    TaskScheduler& s = *scheduler;
    absl::MutexLock create(&s.create_mu_);
    absl::MutexLock registration(&s.register_mu_);
    absl::MutexLock lock(&s.mu_);
    bool more = false;
    for (const v1::Job* job :
         s.state_.JobsAfter(0, std::numeric_limits<int>::max(), &more)) {
      metrics->AddJobs(job->state(), 1);
    }
    const absl::Time fresh_deadline = clock->Now() + options.lease_ttl;
    for (const auto& [id, task] : s.state_.tasks()) {
      metrics->AddTasks(task.state(), 1);
      if (task.state() == TASK_STATE_RUNNING) {
        s.leases_.Grant(id, task.lease_epoch(), fresh_deadline);
      }
    }
    s.next_job_seq_ =
        std::max(snapshot->next_job_seq, s.state_.max_job_seq() + 1);
    s.next_worker_seq_ = snapshot->next_worker_seq;
    for (const WorkerRecord& worker : snapshot->workers) {
      WorkerInfo& info = s.workers_[worker.worker_id()];
      info.device = worker.device();
      info.memory_bytes = worker.memory_bytes();
      info.registered_ms = worker.registered_ms();
      info.owner = worker.owner();
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

// --- committing ---

bool TaskScheduler::PinnedLocked(const RecordChanges& changes) const {
  for (const TaskRecord& task : changes.tasks) {
    if (pinned_tasks_.count(task.task_id()) > 0) return true;
  }
  for (const v1::Job& job : changes.jobs) {
    if (pinned_jobs_.count(job.job_id()) > 0) return true;
  }
  return false;
}

void TaskScheduler::WaitForUnpinLocked() { unpinned_cv_.Wait(&mu_); }

absl::Status TaskScheduler::CommitLocked(storage::WriteBatch batch,
                                         const RecordChanges& changes) {
  if (!options_.commit_outside_lock) {
    absl::Status s = committer_.Commit(std::move(batch), changes);
    if (s.ok()) ApplyLocked(changes);
    return s;
  }
  for (const TaskRecord& task : changes.tasks) {
    pinned_tasks_.insert(task.task_id());
  }
  for (const v1::Job& job : changes.jobs) pinned_jobs_.insert(job.job_id());
  // The write (synced) is the slow part: other calls decide, read and apply
  // meanwhile; none plans from the pinned records.
  mu_.Unlock();
  absl::Status s = committer_.Commit(std::move(batch), changes);
  mu_.Lock();
  for (const TaskRecord& task : changes.tasks) {
    pinned_tasks_.erase(task.task_id());
  }
  for (const v1::Job& job : changes.jobs) pinned_jobs_.erase(job.job_id());
  if (s.ok()) ApplyLocked(changes);
  unpinned_cv_.SignalAll();
  // A task Lease passed over while it was pinned may be runnable.
  runnable_cv_.SignalAll();
  return s;
}

void TaskScheduler::ApplyLocked(const RecordChanges& changes) {
  if (changes.empty()) return;
  for (const TaskRecord& task : changes.tasks) {
    if (const TaskRecord* old = state_.FindTask(task.task_id());
        old != nullptr) {
      metrics_->AddTasks(old->state(), -1);
    }
    metrics_->AddTasks(task.state(), 1);
    if (task.state() != TASK_STATE_RUNNING) leases_.Release(task.task_id());
  }
  for (const v1::Job& job : changes.jobs) {
    const JobStateMachine::JobEntry* old = state_.FindJob(job.job_id());
    if (old != nullptr) metrics_->AddJobs(old->job.state(), -1);
    metrics_->AddJobs(job.state(), 1);
    // A followed checkpoint's SAEs stored just now: its lag.
    for (const v1::FollowedCheckpoint& c : job.follow().checkpoints()) {
      if (c.stored_ms() == 0) continue;
      bool before = false;
      if (old != nullptr) {
        for (const v1::FollowedCheckpoint& o :
             old->job.follow().checkpoints()) {
          before |= o.step() == c.step() && o.stored_ms() == c.stored_ms();
        }
      }
      if (before) continue;
      const int64_t written =
          c.last_write_ms() > 0 ? c.last_write_ms() : c.taken_ms();
      metrics_->CheckpointStored(std::max<int64_t>(0, c.stored_ms() - written) /
                                 1000.0);
    }
  }
  state_.Apply(changes);
  job_changed_cv_.SignalAll();
}

// --- jobs ---

absl::StatusOr<std::optional<v1::Job>> TaskScheduler::FindByRequestId(
    const std::string& request_id, const std::string& fingerprint) const {
  if (request_id.empty()) return std::nullopt;
  // A creation in flight has written its request id before its job is
  // applied: wait for it.
  absl::ReaderMutexLock create(&create_mu_);
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
  const JobStateMachine::JobEntry* entry = state_.FindJob((*record)->job_id());
  if (entry == nullptr) {
    return absl::DataLossError(absl::StrCat("request_id '", request_id,
                                            "' names missing job ",
                                            (*record)->job_id()));
  }
  return entry->job;
}

absl::StatusOr<TaskScheduler::Submitted> TaskScheduler::CreateJob(
    const v1::JobSpec& spec, const std::string& request_id,
    const std::string& fingerprint, const std::string& submitter) {
  // One creation at a time: two concurrent submissions of one request id
  // create one job, and job sequence numbers are stored in order.
  absl::MutexLock create(&create_mu_);
  if (!request_id.empty()) {
    absl::StatusOr<std::optional<IdempotencyRecord>> record =
        JobStore(store_).FindRequest(request_id);
    if (!record.ok()) return record.status();
    if (record->has_value()) {
      if ((*record)->spec_fingerprint() != fingerprint) {
        return absl::AlreadyExistsError(absl::StrCat(
            "request_id '", request_id, "' was already used for job ",
            (*record)->job_id(), " with a different spec"));
      }
      absl::MutexLock lock(&mu_);
      const JobStateMachine::JobEntry* entry =
          state_.FindJob((*record)->job_id());
      if (entry == nullptr) {
        return absl::DataLossError(absl::StrCat("request_id '", request_id,
                                                "' names missing job ",
                                                (*record)->job_id()));
      }
      return Submitted{entry->job, false};
    }
  }

  const int64_t seq = next_job_seq_;
  absl::MutexLock lock(&mu_);
  const RecordChanges changes =
      state_.PlanCreateJob(spec, seq, request_id, NowMs(), submitter);
  storage::WriteBatch batch;
  if (!request_id.empty()) {
    IdempotencyRecord record;
    record.set_job_id(changes.jobs.front().job_id());
    record.set_spec_fingerprint(fingerprint);
    JobStore::PutRequest(request_id, record, &batch);
  }
  JobStore::PutCounter(JobStore::kNextJobSeq, seq + 1, &batch);
  if (absl::Status s = CommitLocked(std::move(batch), changes); !s.ok()) {
    return s;
  }
  next_job_seq_ = seq + 1;
  runnable_cv_.SignalAll();
  return Submitted{changes.jobs.front(), true};
}

absl::StatusOr<v1::Job> TaskScheduler::GetJob(const std::string& job_id) const {
  absl::MutexLock lock(&mu_);
  const JobStateMachine::JobEntry* entry = state_.FindJob(job_id);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  return entry->job;
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
  bool more = false;
  for (const v1::Job* job : state_.JobsAfter(after_seq, page_size, &more)) {
    page.jobs.push_back(*job);
  }
  if (more && !page.jobs.empty()) {
    page.next_after_job_id = page.jobs.back().job_id();
  }
  return page;
}

absl::StatusOr<TaskScheduler::AddedCheckpoint> TaskScheduler::AddCheckpoint(
    const std::string& job_id, int64_t step, const std::string& path,
    int64_t seen_ms, int64_t last_write_ms,
    const CheckpointValidator& validate) {
  // Planned against the spec the checkpoint was validated for; a spec that
  // changed meanwhile (another checkpoint taken) is validated again.
  for (int attempt = 0;; ++attempt) {
    v1::JobSpec spec;
    {
      absl::MutexLock lock(&mu_);
      bool duplicate = false;
      bool job_level = false;
      absl::Status s =
          state_.CheckAddCheckpoint(job_id, step, path, &duplicate, &job_level);
      if (duplicate) return AddedCheckpoint{state_.FindJob(job_id)->job, false};
      if (!s.ok()) {
        if (job_level) return s;
        return RefuseLocked(job_id, step, path, s);
      }
      spec = state_.FindJob(job_id)->job.spec();
    }
    absl::StatusOr<v1::JobSpec> validated = validate(spec, step, path);
    absl::MutexLock lock(&mu_);
    // Checked again after every wait: while this call waited (for the lock,
    // or for another commit of the job), another add may have taken this
    // step, a later one, or changed the spec.
    while (true) {
      bool duplicate = false;
      bool job_level = false;
      absl::Status s =
          state_.CheckAddCheckpoint(job_id, step, path, &duplicate, &job_level);
      if (duplicate) {
        return AddedCheckpoint{state_.FindJob(job_id)->job, false};
      }
      if (!s.ok()) {
        if (job_level) return s;
        return RefuseLocked(job_id, step, path, s);
      }
      const v1::Job& current = state_.FindJob(job_id)->job;
      if (!google::protobuf::util::MessageDifferencer::Equals(current.spec(),
                                                              spec)) {
        break;  // Validated again against the new spec.
      }
      if (!validated.ok()) {
        return RefuseLocked(job_id, step, path, validated.status());
      }
      const RecordChanges changes = state_.PlanAddCheckpoint(
          job_id, *validated, step, seen_ms, last_write_ms, NowMs());
      if (PinnedLocked(changes)) {
        WaitForUnpinLocked();
        continue;
      }
      if (absl::Status c = CommitLocked(storage::WriteBatch(), changes);
          !c.ok()) {
        return c;
      }
      metrics_->CheckpointTaken();
      runnable_cv_.SignalAll();
      summary_cv_.SignalAll();
      return AddedCheckpoint{state_.FindJob(job_id)->job, true};
    }
    if (attempt >= 3) {
      return absl::UnavailableError(
          absl::StrCat("job '", job_id, "' keeps changing; try checkpoint ",
                       step, " again"));
    }
  }
}

absl::Status TaskScheduler::RefuseLocked(const std::string& job_id,
                                         int64_t step, const std::string& path,
                                         const absl::Status& why) {
  while (true) {
    const RecordChanges changes = state_.PlanRefuseCheckpoint(
        job_id, step, path, std::string(why.message()), NowMs());
    if (PinnedLocked(changes)) {
      WaitForUnpinLocked();
      continue;
    }
    // The refusal stands even when it could not be recorded.
    (void)CommitLocked(storage::WriteBatch(), changes);
    metrics_->CheckpointRefused();
    return why;
  }
}

absl::StatusOr<v1::Job> TaskScheduler::CloseJob(const std::string& job_id,
                                                const std::string& reason) {
  absl::MutexLock lock(&mu_);
  while (true) {
    absl::StatusOr<RecordChanges> changes =
        state_.PlanCloseJob(job_id, reason, NowMs());
    if (!changes.ok()) return changes.status();
    if (changes->empty()) return state_.FindJob(job_id)->job;  // Closed.
    if (PinnedLocked(*changes)) {
      WaitForUnpinLocked();
      continue;
    }
    if (absl::Status s = CommitLocked(storage::WriteBatch(), *changes);
        !s.ok()) {
      return s;
    }
    runnable_cv_.SignalAll();
    summary_cv_.SignalAll();
    return state_.FindJob(job_id)->job;
  }
}

absl::StatusOr<v1::Job> TaskScheduler::RefreshAnalysis(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  while (true) {
    absl::StatusOr<RecordChanges> changes =
        state_.PlanRefreshAnalysis(job_id, NowMs());
    if (!changes.ok()) return changes.status();
    if (changes->empty()) return state_.FindJob(job_id)->job;  // Pending.
    if (PinnedLocked(*changes)) {
      WaitForUnpinLocked();
      continue;
    }
    if (absl::Status s = CommitLocked(storage::WriteBatch(), *changes);
        !s.ok()) {
      return s;
    }
    runnable_cv_.SignalAll();
    summary_cv_.SignalAll();
    return state_.FindJob(job_id)->job;
  }
}

std::vector<v1::Job> TaskScheduler::FollowingJobs() const {
  std::vector<v1::Job> jobs;
  absl::MutexLock lock(&mu_);
  state_.ForEachActiveJob([&](const JobStateMachine::JobEntry& entry) {
    if (JobStateMachine::IsFollowing(entry.job) &&
        entry.job.follow().state() != v1::FOLLOW_STATE_CLOSED) {
      jobs.push_back(entry.job);
    }
    return true;
  });
  return jobs;
}

absl::StatusOr<v1::Job> TaskScheduler::CancelJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  while (true) {
    absl::StatusOr<RecordChanges> changes =
        state_.PlanCancelJob(job_id, NowMs());
    if (!changes.ok()) return changes.status();
    if (changes->empty()) return state_.FindJob(job_id)->job;  // Cancelled.
    if (PinnedLocked(*changes)) {
      WaitForUnpinLocked();
      continue;
    }
    v1::Job job = changes->jobs.back();
    if (absl::Status s = CommitLocked(storage::WriteBatch(), *changes);
        !s.ok()) {
      return s;
    }
    return job;
  }
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
    const JobStateMachine::JobEntry* entry = state_.FindJob(job_id);
    if (entry == nullptr) {
      return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
    }
    const absl::Time now = absl::Now();
    if (entry->version != after_version || now >= deadline || cancelled()) {
      JobWatch watch;
      watch.job = entry->job;
      watch.version = entry->version;
      const JobStateMachine::RunningProgress progress =
          state_.ProgressOf(*entry);
      watch.running_tokens = progress.tokens;
      watch.loss = progress.loss;
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
  while (!shutting_down_ && state_.jobs_version() == after &&
         absl::Now() < deadline) {
    job_changed_cv_.WaitWithDeadline(&mu_, deadline);
  }
  if (shutting_down_) {
    return absl::UnavailableError("the coordinator is shutting down");
  }
  return state_.jobs_version();
}

// --- workers ---

std::optional<std::string> TaskScheduler::WorkerOwner(
    const std::string& worker_id) const {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return std::nullopt;
  return it->second.owner;
}

absl::StatusOr<std::string> TaskScheduler::RegisterWorker(
    const std::string& device, int64_t memory_bytes, const std::string& owner) {
  // One registration at a time: worker sequence numbers are stored in order.
  absl::MutexLock registration(&register_mu_);
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
  record.set_owner(owner);
  JobStore::PutWorker(record, &batch);
  // Synced: a registration lost in a crash would leave its worker matched
  // without its capabilities after the restart.
  absl::Status written;
  if (options_.commit_outside_lock) {
    written = committer_.Commit(std::move(batch), RecordChanges());
  } else {
    absl::MutexLock lock(&mu_);
    written = committer_.Commit(std::move(batch), RecordChanges());
  }
  if (!written.ok()) return written;
  next_worker_seq_ = seq + 1;
  {
    absl::MutexLock lock(&mu_);
    WorkerInfo& info = workers_[id];
    info.device = device;
    info.memory_bytes = memory_bytes;
    info.registered_ms = record.registered_ms();
    info.owner = owner;
  }
  metrics_->WorkerRegistered();
  return id;
}

absl::StatusOr<std::optional<v1::Task>> TaskScheduler::Lease(
    const std::string& worker_id, absl::Duration wait,
    absl::FunctionRef<bool()> cancelled) {
  const absl::Time deadline = absl::Now() + wait;
  absl::MutexLock lock(&mu_);
  const auto pinned = [this](const TaskRecord& task) {
    mu_.AssertHeld();
    return pinned_tasks_.count(task.task_id()) > 0;
  };
  while (true) {
    if (shutting_down_) return std::nullopt;
    ExpireLeasesLocked();
    // Workers registered before a restart are not known; they may take any
    // job.
    auto worker = workers_.find(worker_id);
    const WorkerInfo info =
        worker == workers_.end() ? WorkerInfo{} : worker->second;
    const int64_t now_ms = NowMs();
    if (const TaskRecord* task =
            PickTask(state_, worker_id, info, now_ms, pinned);
        task != nullptr) {
      const RecordChanges changes = state_.PlanGrant(*task, worker_id, now_ms);
      if (PinnedLocked(changes)) {  // Its job is being written.
        WaitForUnpinLocked();
        continue;
      }
      const std::string task_id = task->task_id();
      storage::WriteBatch batch;
      if (worker != workers_.end()) {
        // When the worker was last seen, with the lease (no extra write).
        WorkerRecord record;
        record.set_worker_id(worker_id);
        record.set_device(info.device);
        record.set_memory_bytes(info.memory_bytes);
        record.set_registered_ms(info.registered_ms);
        record.set_last_seen_ms(now_ms);
        record.set_owner(info.owner);
        JobStore::PutWorker(record, &batch);
      }
      if (absl::Status s = CommitLocked(std::move(batch), changes); !s.ok()) {
        return s;
      }
      // Pinned until applied just now: the record is the granted one.
      const TaskRecord& granted = *state_.FindTask(task_id);
      leases_.Grant(task_id, granted.lease_epoch(),
                    clock_->Now() + options_.lease_ttl);
      metrics_->LeaseGranted();
      if (auto it = workers_.find(worker_id); it != workers_.end()) {
        it->second.last_job_id = granted.job_id();
        it->second.last_checkpoint_index = granted.checkpoint_index();
        it->second.last_kind = granted.kind();
      }
      return std::optional<v1::Task>(TaskMessageLocked(granted));
    }
    const absl::Time now = absl::Now();
    if (now >= deadline || cancelled()) return std::nullopt;
    runnable_cv_.WaitWithDeadline(
        &mu_, std::min(deadline, now + kCancellationCheckPeriod));
  }
}

v1::Task TaskScheduler::TaskMessageLocked(const TaskRecord& task) const {
  const JobStateMachine::JobEntry& entry = *state_.FindJob(task.job_id());
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
    const TaskRecord& final_pass = *state_.FindTask(
        entry.analyses[task.hook_index()]
                      [JobStateMachine::AnalysisFinalIndex(entry.job)]);
    *analyse->mutable_final_sae() = *sae;
    analyse->mutable_final_sae()->set_step(final_pass.step());
    return out;
  }
  v1::TrainSaeTask* train = out.mutable_train();
  *train->mutable_spec() = spec;
  *train->mutable_hook() = spec.hooks(task.hook_index());
  train->set_checkpoint_index(task.checkpoint_index());
  train->set_chain_index(task.chain_index());
  if (JobStateMachine::IsFollowing(entry.job)) {
    train->set_reference_check(
        JobStateMachine::FollowReferenceCheck(spec, task.chain_index()));
  }
  if (task.chain_index() > 0) {
    const TaskRecord& previous = *state_.FindTask(
        entry.chains[task.hook_index()][task.chain_index() - 1]);
    v1::SaeRef* init = train->mutable_init_from();
    init->set_job_id(task.job_id());
    init->set_layer(task.layer());
    init->set_step(previous.step());
  }
  return out;
}

absl::StatusOr<bool> TaskScheduler::Heartbeat(const std::string& task_id,
                                              int64_t epoch,
                                              int64_t tokens_done,
                                              std::optional<double> loss) {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
  if (const TaskRecord* task = state_.FindTask(task_id);
      task != nullptr && task->lease_epoch() == epoch &&
      task->state() == TASK_STATE_CANCELLED) {
    return true;  // The job failed: tell the worker to stop.
  }
  absl::StatusOr<const TaskRecord*> task = state_.LiveTask(task_id, epoch);
  if (!task.ok()) return task.status();
  leases_.Renew(task_id, epoch, clock_->Now() + options_.lease_ttl);
  if (state_.RecordProgress(task_id, tokens_done, loss)) {
    job_changed_cv_.SignalAll();
  }
  return false;
}

absl::StatusOr<LeaseInfo> TaskScheduler::CheckLease(const std::string& task_id,
                                                    int64_t epoch) {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
  absl::StatusOr<const TaskRecord*> task = state_.LiveTask(task_id, epoch);
  if (!task.ok()) return task.status();
  const TaskRecord& t = **task;
  LeaseInfo info;
  info.job_id = t.job_id();
  info.task_id = t.task_id();
  info.worker_id = t.worker_id();
  info.layer = t.layer();
  info.step = t.step();
  info.chain_index = t.chain_index();
  const v1::Job& job = state_.FindJob(t.job_id())->job;
  const v1::JobSpec& spec = job.spec();
  info.d_sae = spec.sae().d_sae();
  info.kind = t.kind();
  info.final_analysis =
      t.kind() == TASK_KIND_ANALYSE &&
      t.chain_index() == JobStateMachine::AnalysisFinalIndex(job);
  info.top_k = spec.analysis().top_k();
  return info;
}

absl::Status TaskScheduler::Complete(const std::string& task_id, int64_t epoch,
                                     storage::WriteBatch results,
                                     int64_t tokens_trained) {
  {
    absl::MutexLock lock(&mu_);
    ExpireLeasesLocked();
    if (const TaskRecord* task = state_.FindTask(task_id);
        task != nullptr && task->state() == TASK_STATE_SUCCEEDED &&
        task->lease_epoch() == epoch) {
      // A retry of a completion that was stored (its answer was lost on
      // the way): acknowledged again, nothing written twice.
      return absl::OkStatus();
    }
    absl::StatusOr<const TaskRecord*> live = state_.LiveTask(task_id, epoch);
    if (!live.ok()) return live.status();
    if (!options_.commit_outside_lock) {
      // Results, task and job records in one batch, under the lock.
      RecordChanges changes =
          state_.PlanComplete(**live, tokens_trained, NowMs());
      if (absl::Status s = CommitLocked(std::move(results), changes); !s.ok()) {
        return s;
      }
      runnable_cv_.SignalAll();
      summary_cv_.SignalAll();
      return absl::OkStatus();
    }
    if (!committing_.insert(task_id).second) {
      return absl::UnavailableError(absl::StrCat(
          "task ", task_id,
          ": its result is being stored by another call; try again"));
    }
  }
  // The results (nearly all the bytes: SAE weights, feature points) are
  // written and synced with no lock held, so leases, heartbeats and job
  // queries go on meanwhile; the lease cannot expire while its completion
  // is being committed. A crash in between leaves them stored but the task
  // RUNNING: its retry overwrites them with the same keys.
  const absl::Status written =
      committer_.Commit(std::move(results), RecordChanges());
  absl::MutexLock lock(&mu_);
  absl::Status s = written;
  while (s.ok()) {
    // The lease may have ended meanwhile (job cancelled, task failed by its
    // worker): then the task's state is not touched.
    absl::StatusOr<const TaskRecord*> live = state_.LiveTask(task_id, epoch);
    if (!live.ok()) {
      s = live.status();
      break;
    }
    const RecordChanges changes =
        state_.PlanComplete(**live, tokens_trained, NowMs());
    if (PinnedLocked(changes)) {  // Another task of the job is committing.
      WaitForUnpinLocked();
      continue;
    }
    s = CommitLocked(storage::WriteBatch(), changes);
    if (s.ok()) {
      runnable_cv_.SignalAll();  // The chain's next task is runnable now.
      summary_cv_.SignalAll();
    }
    break;
  }
  committing_.erase(task_id);
  return s;
}

absl::Status TaskScheduler::Fail(const std::string& task_id, int64_t epoch,
                                 const std::string& error, bool retryable) {
  absl::MutexLock lock(&mu_);
  ExpireLeasesLocked();
  while (true) {
    absl::StatusOr<const TaskRecord*> live = state_.LiveTask(task_id, epoch);
    if (!live.ok()) return live.status();
    bool requeued = false;
    const RecordChanges changes =
        state_.PlanFail(**live, error, retryable, NowMs(), &requeued);
    if (PinnedLocked(changes)) {
      WaitForUnpinLocked();
      continue;
    }
    if (absl::Status s = CommitLocked(storage::WriteBatch(), changes);
        !s.ok()) {
      return s;
    }
    if (requeued) {
      metrics_->TaskRetried();
      runnable_cv_.SignalAll();
    }
    return absl::OkStatus();
  }
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
    // mu_ may have been released by an earlier commit of this loop.
    const LeaseTable::Lease* lease = leases_.Find(task_id);
    if (lease == nullptr || lease->deadline > now) continue;
    const TaskRecord* task = state_.FindTask(task_id);
    if (task == nullptr || task->state() != TASK_STATE_RUNNING) {
      leases_.Release(task_id);
      continue;
    }
    bool requeued = false;
    const RecordChanges changes =
        state_.PlanExpire(*task, absl::ToUnixMillis(now), &requeued);
    // Records being written, or a storage error: the lease stays expired
    // and is checked again next time.
    if (PinnedLocked(changes)) continue;
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
  const auto unavailable = [this](const TaskRecord& task) {
    mu_.AssertHeld();
    return summaries_taken_.count(task.task_id()) > 0 ||
           pinned_tasks_.count(task.task_id()) > 0;
  };
  while (!shutting_down_) {
    if (const TaskRecord* summary =
            state_.RunnableSummary(NowMs(), unavailable);
        summary != nullptr) {
      SummaryWork work;
      work.task_id = summary->task_id();
      work.job_id = summary->job_id();
      const v1::Job& job = state_.FindJob(summary->job_id())->job;
      work.spec = job.spec();
      work.hook_index = summary->hook_index();
      work.layer = summary->layer();
      // The checkpoints of the round (all of them but for a following
      // job's provisional rounds).
      const int count = JobStateMachine::AnalysedCount(job);
      for (int c = 0; c < count; ++c) {
        work.steps.push_back(work.spec.model().checkpoints(c).step());
      }
      work.provisional =
          JobStateMachine::IsFollowing(job) && !job.follow().final_round();
      summaries_taken_[summary->task_id()] = summary->lease_epoch();
      return work;
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
  while (true) {
    if (summaries_taken_.count(task_id) == 0) {
      return absl::AbortedError(
          absl::StrCat("summary task ", task_id, " is not taken"));
    }
    const TaskRecord* task = state_.FindTask(task_id);
    if (task == nullptr || task->state() != TASK_STATE_QUEUED) {
      summaries_taken_.erase(task_id);
      return absl::AbortedError(absl::StrCat(
          "summary task ", task_id, " is no longer queued (its job ended)"));
    }
    if (task->lease_epoch() != summaries_taken_[task_id]) {
      summaries_taken_.erase(task_id);
      summary_cv_.SignalAll();
      return absl::AbortedError(
          absl::StrCat("summary task ", task_id,
                       " was superseded by a newer analysis round"));
    }
    const RecordChanges changes = state_.PlanCompleteSummary(*task, NowMs());
    if (PinnedLocked(changes)) {
      WaitForUnpinLocked();
      continue;
    }
    // Still taken while written: TakeSummary does not hand it out again.
    absl::Status s = CommitLocked(std::move(results), changes);
    summaries_taken_.erase(task_id);
    return s;
  }
}

absl::Status TaskScheduler::FailSummary(const std::string& task_id,
                                        const std::string& error,
                                        bool retryable) {
  absl::MutexLock lock(&mu_);
  while (true) {
    const TaskRecord* task = state_.FindTask(task_id);
    if (task == nullptr || task->state() != TASK_STATE_QUEUED) {
      summaries_taken_.erase(task_id);
      return absl::AbortedError(absl::StrCat(
          "summary task ", task_id, " is no longer queued (its job ended)"));
    }
    auto taken = summaries_taken_.find(task_id);
    if (taken == summaries_taken_.end()) {
      return absl::AbortedError(
          absl::StrCat("summary task ", task_id, " is not taken"));
    }
    if (taken->second != task->lease_epoch()) {
      summaries_taken_.erase(taken);
      summary_cv_.SignalAll();
      return absl::AbortedError(
          absl::StrCat("summary task ", task_id,
                       " was superseded by a newer analysis round"));
    }
    bool requeued = false;
    const RecordChanges changes =
        state_.PlanFailSummary(*task, error, retryable, NowMs(), &requeued);
    if (PinnedLocked(changes)) {
      WaitForUnpinLocked();
      continue;
    }
    absl::Status s = CommitLocked(storage::WriteBatch(), changes);
    summaries_taken_.erase(task_id);
    if (!s.ok()) return s;
    summary_cv_.SignalAll();
    return absl::OkStatus();
  }
}

}  // namespace saetrack::server
