#include "server/internal/job_state_machine.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/internal/coordinator_metrics.h"  // TaskStateLabel

namespace saetrack::server {
namespace {

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

bool Unfinished(const TaskRecord& task) {
  return task.state() == TASK_STATE_QUEUED ||
         task.state() == TASK_STATE_RUNNING;
}

// The job after `done` succeeded: progress counted, SUCCEEDED when every
// task has.
v1::Job ProgressedJob(v1::Job job, const TaskRecord& done,
                      int64_t tokens_trained, int64_t now_ms) {
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

}  // namespace

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

int JobStateMachine::FinalChainIndex(const v1::JobSpec& spec) {
  const int n = spec.model().checkpoints_size();
  return spec.schedule().direction() == v1::Schedule::BACKWARD ? 0 : n - 1;
}

void JobStateMachine::ForEachTaskId(
    const JobEntry& entry, absl::FunctionRef<void(const std::string&)> fn) {
  for (const auto& chain : entry.chains) {
    for (const std::string& id : chain) fn(id);
  }
  for (const auto& analyses : entry.analyses) {
    for (const std::string& id : analyses) fn(id);
  }
  for (const std::string& id : entry.summaries) fn(id);
}

// --- building ---

absl::Status JobStateMachine::AddJob(v1::Job job) {
  std::optional<int64_t> seq = SeqOfJobId(job.job_id());
  if (!seq.has_value()) {
    return absl::DataLossError(
        absl::StrCat("stored job id '", job.job_id(), "' is malformed"));
  }
  JobEntry& entry = jobs_[job.job_id()];
  entry.seq = *seq;
  entry.chains.resize(job.spec().hooks_size());
  if (HasAnalysis(job.spec())) {
    entry.analyses.assign(
        job.spec().hooks_size(),
        std::vector<std::string>(job.spec().model().checkpoints_size()));
    entry.summaries.resize(job.spec().hooks_size());
  }
  if (!IsTerminal(job.state())) active_jobs_.insert(LeaseOrder(job, *seq));
  jobs_by_seq_[*seq] = job.job_id();
  entry.job = std::move(job);
  return absl::OkStatus();
}

absl::Status JobStateMachine::PlaceTask(const TaskRecord& task) {
  auto job = jobs_.find(task.job_id());
  if (job == jobs_.end() || task.hook_index() < 0 ||
      task.hook_index() >= static_cast<int>(job->second.chains.size()) ||
      task.chain_index() < 0) {
    return absl::DataLossError(
        absl::StrCat("stored task '", task.task_id(), "' has no matching job"));
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
                 static_cast<int>(entry.analyses[task.hook_index()].size())) {
    entry.analyses[task.hook_index()][task.chain_index()] = task.task_id();
  } else if (task.kind() == TASK_KIND_SUMMARISE &&
             task.hook_index() < static_cast<int>(entry.summaries.size())) {
    entry.summaries[task.hook_index()] = task.task_id();
  } else {
    return absl::DataLossError(absl::StrCat("stored task '", task.task_id(),
                                            "' does not fit its job"));
  }
  return absl::OkStatus();
}

absl::StatusOr<JobStateMachine> JobStateMachine::FromRecords(
    const Options& options, std::vector<v1::Job> jobs,
    std::vector<TaskRecord> tasks) {
  JobStateMachine state(options);
  for (v1::Job& job : jobs) {
    if (absl::Status s = state.AddJob(std::move(job)); !s.ok()) return s;
  }
  for (TaskRecord& task : tasks) {
    if (absl::Status s = state.PlaceTask(task); !s.ok()) return s;
    std::string id = task.task_id();
    state.tasks_[id] = std::move(task);
  }
  for (const auto& [job_id, entry] : state.jobs_) {
    bool complete = true;
    for (const auto& chain : entry.chains) complete &= !chain.empty();
    ForEachTaskId(entry, [&](const std::string& id) {
      complete &= !id.empty() && state.tasks_.count(id) > 0;
    });
    if (!complete) {
      return absl::DataLossError(
          absl::StrCat("stored tasks of job '", job_id, "' are incomplete"));
    }
  }
  return state;
}

// --- reads ---

const JobStateMachine::JobEntry* JobStateMachine::FindJob(
    const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

const TaskRecord* JobStateMachine::FindTask(const std::string& task_id) const {
  auto it = tasks_.find(task_id);
  return it == tasks_.end() ? nullptr : &it->second;
}

void JobStateMachine::ForEachActiveJob(
    absl::FunctionRef<bool(const JobEntry&)> fn) const {
  for (const auto& [order, seq] : active_jobs_) {
    if (!fn(jobs_.at(jobs_by_seq_.at(seq)))) return;
  }
}

std::vector<const v1::Job*> JobStateMachine::JobsAfter(int64_t after_seq,
                                                       int limit,
                                                       bool* more) const {
  std::vector<const v1::Job*> jobs;
  auto it = jobs_by_seq_.upper_bound(after_seq);
  for (; it != jobs_by_seq_.end() && static_cast<int>(jobs.size()) < limit;
       ++it) {
    jobs.push_back(&jobs_.at(it->second).job);
  }
  *more = it != jobs_by_seq_.end();
  return jobs;
}

int64_t JobStateMachine::max_job_seq() const {
  return jobs_by_seq_.empty() ? 0 : jobs_by_seq_.rbegin()->first;
}

absl::StatusOr<const TaskRecord*> JobStateMachine::LiveTask(
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

const TaskRecord* JobStateMachine::RunnableInHook(
    const JobEntry& entry, int h, int64_t now_ms,
    absl::FunctionRef<bool(const TaskRecord&)> skip,
    const TaskRecord** previous) const {
  auto runnable = [&](const TaskRecord& task) {
    return task.state() == TASK_STATE_QUEUED &&
           task.not_before_ms() <= now_ms && !skip(task);
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

const TaskRecord* JobStateMachine::RunnableSummary(
    int64_t now_ms, absl::FunctionRef<bool(const TaskRecord&)> skip) const {
  const TaskRecord* found = nullptr;
  ForEachActiveJob([&](const JobEntry& entry) {
    for (int h = 0; h < static_cast<int>(entry.summaries.size()); ++h) {
      const TaskRecord& summary = tasks_.at(entry.summaries[h]);
      if (summary.state() != TASK_STATE_QUEUED ||
          summary.not_before_ms() > now_ms || skip(summary)) {
        continue;
      }
      bool ready = true;
      for (const std::string& id : entry.analyses[h]) {
        ready &= tasks_.at(id).state() == TASK_STATE_SUCCEEDED;
      }
      if (!ready) continue;
      found = &summary;
      return false;
    }
    return true;
  });
  return found;
}

JobStateMachine::RunningProgress JobStateMachine::ProgressOf(
    const JobEntry& entry) const {
  RunningProgress out;
  int64_t latest = 0;
  ForEachTaskId(entry, [&](const std::string& id) {
    auto progress = task_progress_.find(id);
    if (progress == task_progress_.end()) return;
    out.tokens += progress->second.tokens_done;
    if (progress->second.loss.has_value() && progress->second.seq > latest) {
      latest = progress->second.seq;
      out.loss = progress->second.loss;
    }
  });
  return out;
}

// --- transitions ---

RecordChanges JobStateMachine::PlanCreateJob(
    const v1::JobSpec& spec, int64_t seq, const std::string& request_id,
    int64_t now_ms, const std::string& submitter) const {
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
  job.set_submitter(submitter);

  RecordChanges changes;
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
      if (analysis) {
        TaskRecord pass = task;
        pass.set_task_id(absl::StrCat(job.job_id(), ".l", layer, ".a", c));
        pass.set_kind(TASK_KIND_ANALYSE);
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
      changes.tasks.push_back(std::move(summary));
    }
  }
  changes.jobs.push_back(std::move(job));
  return changes;
}

absl::StatusOr<RecordChanges> JobStateMachine::PlanCancelJob(
    const std::string& job_id, int64_t now_ms) const {
  const JobEntry* entry = FindJob(job_id);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  switch (entry->job.state()) {
    case v1::JOB_STATE_CANCELLED:
      return RecordChanges();  // Idempotent.
    case v1::JOB_STATE_SUCCEEDED:
    case v1::JOB_STATE_FAILED:
      return absl::FailedPreconditionError(
          absl::StrCat("job '", job_id, "' already ended in state ",
                       v1::JobState_Name(entry->job.state())));
    default:
      break;
  }
  RecordChanges changes;
  ForEachTaskId(*entry, [&](const std::string& id) {
    const TaskRecord& task = tasks_.at(id);
    if (!Unfinished(task)) return;
    TaskRecord cancelled = task;
    cancelled.set_state(TASK_STATE_CANCELLED);
    cancelled.set_error("job cancelled");
    cancelled.set_update_time_ms(now_ms);
    changes.tasks.push_back(std::move(cancelled));
  });
  v1::Job job = entry->job;
  job.set_state(v1::JOB_STATE_CANCELLED);
  job.set_error("cancelled by request");
  job.set_update_time_ms(now_ms);
  changes.jobs.push_back(std::move(job));
  return changes;
}

RecordChanges JobStateMachine::PlanGrant(const TaskRecord& picked,
                                         const std::string& worker_id,
                                         int64_t now_ms) const {
  TaskRecord task = picked;
  task.set_state(TASK_STATE_RUNNING);
  task.set_lease_epoch(task.lease_epoch() + 1);
  task.set_attempts(task.attempts() + 1);
  task.set_worker_id(worker_id);
  task.set_update_time_ms(now_ms);
  RecordChanges changes;
  const JobEntry& entry = jobs_.at(task.job_id());
  if (entry.job.state() == v1::JOB_STATE_QUEUED) {
    v1::Job job = entry.job;
    job.set_state(v1::JOB_STATE_RUNNING);
    job.set_update_time_ms(now_ms);
    changes.jobs.push_back(std::move(job));
  }
  changes.tasks.push_back(std::move(task));
  return changes;
}

RecordChanges JobStateMachine::PlanComplete(const TaskRecord& live,
                                            int64_t tokens_trained,
                                            int64_t now_ms) const {
  TaskRecord task = live;
  task.set_state(TASK_STATE_SUCCEEDED);
  task.set_tokens_trained(tokens_trained);
  task.clear_error();
  task.set_update_time_ms(now_ms);
  RecordChanges changes;
  changes.jobs.push_back(
      ProgressedJob(jobs_.at(task.job_id()).job, task, tokens_trained, now_ms));
  changes.tasks.push_back(std::move(task));
  return changes;
}

int64_t JobStateMachine::BackoffMs(int attempts) const {
  // Capped exponential backoff: a task that keeps failing (a flaky machine,
  // a worker that crashes on it) does not spin through its attempts.
  absl::Duration backoff = options_.retry_backoff;
  for (int i = 1; i < attempts && backoff < options_.retry_backoff_max; ++i) {
    backoff *= 2;
  }
  backoff = std::min(backoff, options_.retry_backoff_max);
  return backoff > absl::ZeroDuration() ? absl::ToInt64Milliseconds(backoff)
                                        : 0;
}

RecordChanges JobStateMachine::PlanRetryOrFail(
    const TaskRecord& live, const std::string& error, bool retryable,
    const std::string& job_error, int64_t now_ms, bool* requeued) const {
  RecordChanges changes;
  TaskRecord task = live;
  task.set_error(error);
  task.clear_worker_id();
  task.set_update_time_ms(now_ms);
  if (retryable && task.attempts() < options_.max_attempts) {
    task.set_state(TASK_STATE_QUEUED);
    const int64_t backoff_ms = BackoffMs(task.attempts());
    task.set_not_before_ms(backoff_ms > 0 ? now_ms + backoff_ms : 0);
    changes.tasks.push_back(std::move(task));
    *requeued = true;
    return changes;
  }
  *requeued = false;
  task.set_state(TASK_STATE_FAILED);
  const JobEntry& entry = jobs_.at(task.job_id());
  ForEachTaskId(entry, [&](const std::string& id) {
    if (id == task.task_id()) return;
    const TaskRecord& other = tasks_.at(id);
    if (!Unfinished(other)) return;
    TaskRecord cancelled = other;
    cancelled.set_state(TASK_STATE_CANCELLED);
    cancelled.set_error(absl::StrCat("job failed: ", job_error));
    cancelled.set_update_time_ms(now_ms);
    changes.tasks.push_back(std::move(cancelled));
  });
  changes.tasks.push_back(std::move(task));
  v1::Job job = entry.job;
  job.set_state(v1::JOB_STATE_FAILED);
  job.set_error(job_error);
  job.set_update_time_ms(now_ms);
  changes.jobs.push_back(std::move(job));
  return changes;
}

RecordChanges JobStateMachine::PlanFail(const TaskRecord& task,
                                        const std::string& error,
                                        bool retryable, int64_t now_ms,
                                        bool* requeued) const {
  return PlanRetryOrFail(
      task, error, retryable,
      absl::StrCat("task ", task.task_id(), " failed: ", error), now_ms,
      requeued);
}

RecordChanges JobStateMachine::PlanExpire(const TaskRecord& task,
                                          int64_t now_ms,
                                          bool* requeued) const {
  return PlanRetryOrFail(
      task, "lease expired", /*retryable=*/true,
      absl::StrCat("lease expired: task ", task.task_id(), " was leased ",
                   task.attempts(), " times without completing"),
      now_ms, requeued);
}

RecordChanges JobStateMachine::PlanCompleteSummary(const TaskRecord& queued,
                                                   int64_t now_ms) const {
  TaskRecord task = queued;
  task.set_state(TASK_STATE_SUCCEEDED);
  task.clear_error();
  task.set_attempts(task.attempts() + 1);
  task.set_worker_id("coordinator");
  task.set_update_time_ms(now_ms);
  RecordChanges changes;
  changes.jobs.push_back(
      ProgressedJob(jobs_.at(task.job_id()).job, task, 0, now_ms));
  changes.tasks.push_back(std::move(task));
  return changes;
}

RecordChanges JobStateMachine::PlanFailSummary(const TaskRecord& queued,
                                               const std::string& error,
                                               bool retryable, int64_t now_ms,
                                               bool* requeued) const {
  TaskRecord task = queued;
  task.set_attempts(task.attempts() + 1);
  return PlanRetryOrFail(
      task, error, retryable,
      absl::StrCat("summary ", task.task_id(), " failed: ", error), now_ms,
      requeued);
}

// --- applying ---

void JobStateMachine::Apply(const RecordChanges& changes) {
  std::set<std::string> added;
  for (const v1::Job& job : changes.jobs) {
    if (jobs_.count(job.job_id()) > 0) continue;
    // A planned job id always parses.
    if (AddJob(job).ok()) added.insert(job.job_id());
  }
  for (const TaskRecord& task : changes.tasks) {
    if (task.state() != TASK_STATE_RUNNING) {
      task_progress_.erase(task.task_id());
    }
    if (tasks_.count(task.task_id()) == 0) {
      // A new job's task.
      if (!PlaceTask(task).ok()) continue;
    }
    tasks_[task.task_id()] = task;
    if (added.count(task.job_id()) > 0) continue;
    if (auto job = jobs_.find(task.job_id()); job != jobs_.end()) {
      ++job->second.version;
    }
  }
  for (const v1::Job& job : changes.jobs) {
    if (added.count(job.job_id()) > 0) continue;
    JobEntry& entry = jobs_.at(job.job_id());
    if (IsTerminal(job.state())) {
      active_jobs_.erase(LeaseOrder(entry.job, entry.seq));
    }
    entry.job = job;
    ++entry.version;
  }
  ++jobs_version_;
}

bool JobStateMachine::RecordProgress(const std::string& task_id,
                                     int64_t tokens_done,
                                     std::optional<double> loss) {
  const TaskRecord* task = FindTask(task_id);
  if (task == nullptr || task->state() != TASK_STATE_RUNNING) return false;
  TaskProgress& progress = task_progress_[task_id];
  if (progress.tokens_done == tokens_done && progress.loss == loss) {
    return false;
  }
  progress.tokens_done = tokens_done;
  progress.loss = loss;
  progress.seq = next_progress_seq_++;
  ++jobs_.at(task->job_id()).version;
  ++jobs_version_;
  return true;
}

}  // namespace saetrack::server
