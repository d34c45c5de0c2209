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

bool Following(const v1::Job& job) { return job.spec().model().has_follow(); }

bool Closed(const v1::Job& job) {
  return job.follow().state() == v1::FOLLOW_STATE_CLOSED;
}

// A following job that ends otherwise than by closing (cancelled, failed)
// follows no more: its follow status says so, and why; a round that was
// running is not any more.
void EndFollowing(v1::Job* job, const std::string& reason, int64_t now_ms) {
  if (!Following(*job)) return;
  v1::FollowStatus* follow = job->mutable_follow();
  follow->set_analysis_running(false);
  follow->set_refresh_pending(false);
  if (follow->state() == v1::FOLLOW_STATE_CLOSED) return;
  follow->set_state(v1::FOLLOW_STATE_CLOSED);
  follow->set_closed_ms(now_ms);
  follow->set_close_reason(reason);
}

// Whether every task of `job` is done: for a following job also closed,
// with its final analysis round (when it has an analysis pass) done.
bool AllDone(const v1::Job& job) {
  const v1::JobProgress& progress = job.progress();
  const bool done =
      progress.tasks_done() >= progress.tasks_total() &&
      progress.analysis_tasks_done() >= progress.analysis_tasks_total();
  if (!Following(job)) return done;
  return done && Closed(job) && progress.tasks_total() > 0 &&
         (!HasAnalysis(job.spec()) || job.follow().final_round());
}

// The job after `done` succeeded: progress counted, SUCCEEDED when every
// task has.
v1::Job ProgressedJob(v1::Job job, const TaskRecord& done,
                      int64_t tokens_trained, int64_t now_ms) {
  v1::JobProgress* progress = job.mutable_progress();
  if (done.kind() == TASK_KIND_TRAIN) {
    progress->set_tasks_done(progress->tasks_done() + 1);
    progress->set_tokens_trained(progress->tokens_trained() + tokens_trained);
    if (Following(job) && !Closed(job) &&
        progress->tasks_done() >= progress->tasks_total()) {
      job.mutable_follow()->set_state(v1::FOLLOW_STATE_WAITING);
      job.mutable_follow()->set_waiting_since_ms(now_ms);
    }
  } else {
    progress->set_analysis_tasks_done(progress->analysis_tasks_done() + 1);
  }
  if (AllDone(job)) job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.set_update_time_ms(now_ms);
  return job;
}

constexpr int kMaxRefusedCheckpoints = 100;
// Every checkpoint lengthens the job record rewritten with each transition
// (and its spec, which a submission may hold up to 1 MiB of).
constexpr int kMaxFollowedCheckpoints = 10'000;

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

int JobStateMachine::AnalysedCount(const v1::Job& job) {
  return Following(job) ? job.follow().analysed_checkpoints()
                        : job.spec().model().checkpoints_size();
}

int JobStateMachine::AnalysisFinalIndex(const v1::Job& job) {
  return Following(job) ? job.follow().analysed_checkpoints() - 1
                        : FinalChainIndex(job.spec());
}

bool JobStateMachine::FollowReferenceCheck(const v1::JobSpec& spec,
                                           int chain_index) {
  // Positions 0, 4, 16, 64, ...: the n-th of them (0-based) is 0 or
  // 4^n. Spread over a chain of any length like Pythia's log-spaced steps,
  // never more than reference_checkpoints of them however long the run, and
  // not bunched at its start, where they would hold up the links that
  // follow.
  if (chain_index < 0) return false;
  int ordinal = 0;
  if (chain_index > 0) {
    int power = 4;
    ordinal = 1;
    while (power < chain_index && power <= (1 << 28)) {
      power *= 4;
      ++ordinal;
    }
    if (power != chain_index) return false;
  }
  return ordinal < spec.schedule().reference_checkpoints();
}

void JobStateMachine::ForEachTaskId(
    const JobEntry& entry, absl::FunctionRef<void(const std::string&)> fn) {
  // A following job's analysis slots fill as its rounds start: empty ones
  // are skipped.
  for (const auto& chain : entry.chains) {
    for (const std::string& id : chain) {
      if (!id.empty()) fn(id);
    }
  }
  for (const auto& analyses : entry.analyses) {
    for (const std::string& id : analyses) {
      if (!id.empty()) fn(id);
    }
  }
  for (const std::string& id : entry.summaries) {
    if (!id.empty()) fn(id);
  }
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
    // A following job's analysis tasks are added by its rounds.
    entry.analyses.assign(
        job.spec().hooks_size(),
        std::vector<std::string>(
            Following(job) ? 0 : job.spec().model().checkpoints_size()));
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
             (Following(entry.job) ||
              task.chain_index() <
                  static_cast<int>(entry.analyses[task.hook_index()].size()))) {
    auto& analyses = entry.analyses[task.hook_index()];
    if (static_cast<int>(analyses.size()) <= task.chain_index()) {
      analyses.resize(task.chain_index() + 1);
    }
    analyses[task.chain_index()] = task.task_id();
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
    auto present = [&](const std::string& id) {
      complete &= !id.empty() && state.tasks_.count(id) > 0;
    };
    const int checkpoints = entry.job.spec().model().checkpoints_size();
    for (const auto& chain : entry.chains) {
      complete &= static_cast<int>(chain.size()) == checkpoints &&
                  (checkpoints > 0 || Following(entry.job));
      for (const std::string& id : chain) present(id);
    }
    // A following job has the analysis tasks of its rounds so far.
    const bool rounds =
        !Following(entry.job) || entry.job.follow().analysis_round() > 0;
    const int analysed = AnalysedCount(entry.job);
    for (const auto& analyses : entry.analyses) {
      complete &= static_cast<int>(analyses.size()) >= (rounds ? analysed : 0);
      for (int c = 0;
           rounds && c < analysed && c < static_cast<int>(analyses.size());
           ++c) {
        present(analyses[c]);
      }
    }
    for (const std::string& id : entry.summaries) {
      if (rounds) present(id);
    }
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
  const bool following = Following(entry.job);
  // Chain positions of a following job's analysis round in progress.
  const int analysed = following && entry.job.follow().analysis_running()
                           ? entry.job.follow().analysed_checkpoints()
                           : 0;
  *previous = nullptr;
  const auto& chain = entry.chains[h];
  for (int c = 0; c < static_cast<int>(chain.size()); ++c) {
    const TaskRecord& task = tasks_.at(chain[c]);
    if (task.state() == TASK_STATE_SUCCEEDED) {
      *previous = &task;
      continue;
    }
    // The first unfinished task of a chain is runnable when queued; the
    // rest of the chain waits for it, and it waits out its backoff.
    if (runnable(task)) return &task;
    *previous = nullptr;
    // A following job's round covers trained positions only: it may go on
    // while the newest link trains elsewhere.
    if (c < analysed || analysed == 0) return nullptr;
    break;
  }
  *previous = nullptr;
  if (entry.analyses.empty()) return nullptr;
  if (following && !entry.job.follow().analysis_running()) return nullptr;
  // The chain is trained: the final checkpoint's analysis first, then the
  // others (they need its reference positions).
  const auto& analyses = entry.analyses[h];
  const int count = AnalysedCount(entry.job);
  const int final_index = AnalysisFinalIndex(entry.job);
  if (final_index < 0 || final_index >= static_cast<int>(analyses.size())) {
    return nullptr;
  }
  const TaskRecord& final_pass = tasks_.at(analyses[final_index]);
  if (final_pass.state() != TASK_STATE_SUCCEEDED) {
    return runnable(final_pass) ? &final_pass : nullptr;
  }
  for (int c = 0; c < count && c < static_cast<int>(analyses.size()); ++c) {
    const TaskRecord& task = tasks_.at(analyses[c]);
    if (runnable(task)) return &task;
  }
  return nullptr;
}

const TaskRecord* JobStateMachine::RunnableSummary(
    int64_t now_ms, absl::FunctionRef<bool(const TaskRecord&)> skip) const {
  const TaskRecord* found = nullptr;
  ForEachActiveJob([&](const JobEntry& entry) {
    if (Following(entry.job) && !entry.job.follow().analysis_running()) {
      return true;
    }
    const int count = AnalysedCount(entry.job);
    for (int h = 0; h < static_cast<int>(entry.summaries.size()); ++h) {
      if (entry.summaries[h].empty()) continue;
      const TaskRecord& summary = tasks_.at(entry.summaries[h]);
      if (summary.state() != TASK_STATE_QUEUED ||
          summary.not_before_ms() > now_ms || skip(summary)) {
        continue;
      }
      bool ready = static_cast<int>(entry.analyses[h].size()) >= count;
      for (int c = 0; ready && c < count; ++c) {
        ready &=
            tasks_.at(entry.analyses[h][c]).state() == TASK_STATE_SUCCEEDED;
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
  const bool following = spec.model().has_follow();
  // A following job's analysis runs in rounds, added as they start.
  const bool analysis = HasAnalysis(spec) && !following;
  if (following) {
    // Following from the start: RUNNING while it waits for checkpoints.
    job.set_state(v1::JOB_STATE_RUNNING);
    v1::FollowStatus* follow = job.mutable_follow();
    follow->set_state(num_checkpoints > 0 ? v1::FOLLOW_STATE_TRAINING
                                          : v1::FOLLOW_STATE_WAITING);
    follow->set_waiting_since_ms(now_ms);
    follow->set_last_step(-1);
    for (const v1::Checkpoint& checkpoint : spec.model().checkpoints()) {
      v1::FollowedCheckpoint* taken = follow->add_checkpoints();
      taken->set_step(checkpoint.step());
      taken->set_path(checkpoint.path());
      taken->set_seen_ms(now_ms);
      taken->set_taken_ms(now_ms);
      follow->set_last_step(checkpoint.step());
      follow->set_last_taken_ms(now_ms);
    }
  }
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
  EndFollowing(&job, "job cancelled", now_ms);
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
  const JobEntry& entry = jobs_.at(task.job_id());
  v1::Job job = ProgressedJob(entry.job, task, tokens_trained, now_ms);
  if (Following(job) && task.kind() == TASK_KIND_TRAIN) {
    // Every hook's SAE at this step stored: the checkpoint is trained.
    bool stored = true;
    for (const auto& chain : entry.chains) {
      const std::string& id = chain.at(task.chain_index());
      stored &=
          id == task.task_id() || tasks_.at(id).state() == TASK_STATE_SUCCEEDED;
    }
    v1::FollowStatus* follow = job.mutable_follow();
    if (stored) {
      for (v1::FollowedCheckpoint& c : *follow->mutable_checkpoints()) {
        if (c.step() == task.step()) c.set_stored_ms(now_ms);
      }
      follow->set_trained_since_round(follow->trained_since_round() + 1);
    }
    const int every = job.spec().model().follow().analyse_every();
    if (stored && every > 0 && follow->trained_since_round() >= every &&
        !Closed(job) && HasAnalysis(job.spec())) {
      if (follow->analysis_running()) {
        follow->set_refresh_pending(true);
      } else {
        // The trained prefix counting this task.
        int trained = -1;
        for (const auto& chain : entry.chains) {
          int t = 0;
          while (t < static_cast<int>(chain.size()) &&
                 (chain[t] == task.task_id() ||
                  tasks_.at(chain[t]).state() == TASK_STATE_SUCCEEDED)) {
            ++t;
          }
          trained = trained < 0 ? t : std::min(trained, t);
        }
        if (trained > 0) {
          StartRound(entry, &job, trained, false, now_ms, &changes);
        }
      }
    }
  }
  changes.jobs.push_back(std::move(job));
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
  EndFollowing(&job, "job failed", now_ms);
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
  const JobEntry& entry = jobs_.at(task.job_id());
  v1::Job job = ProgressedJob(entry.job, task, 0, now_ms);
  changes.tasks.push_back(std::move(task));
  if (Following(job)) FinishRoundIfDone(entry, &job, now_ms, &changes);
  changes.jobs.push_back(std::move(job));
  return changes;
}

// --- following jobs ---

int JobStateMachine::TrainedPrefix(const JobEntry& entry) const {
  int prefix = -1;
  for (const auto& chain : entry.chains) {
    int trained = 0;
    while (trained < static_cast<int>(chain.size()) &&
           tasks_.at(chain[trained]).state() == TASK_STATE_SUCCEEDED) {
      ++trained;
    }
    prefix = prefix < 0 ? trained : std::min(prefix, trained);
  }
  return std::max(prefix, 0);
}

void JobStateMachine::StartRound(const JobEntry& entry, v1::Job* job, int count,
                                 bool final_round, int64_t now_ms,
                                 RecordChanges* changes) const {
  const v1::JobSpec& spec = job->spec();
  v1::FollowStatus* follow = job->mutable_follow();
  const int round = follow->analysis_round() + 1;
  // Every task of the round starts afresh: ids are reused (their lease
  // epochs go on growing, so a late result of an earlier round is
  // refused).
  auto fresh = [&](const std::string& id, TaskKind kind, int h, int c) {
    TaskRecord task;
    if (const TaskRecord* existing = FindTask(id); existing != nullptr) {
      task = *existing;
    }
    task.set_task_id(id);
    task.set_job_id(job->job_id());
    task.set_hook_index(h);
    task.set_layer(spec.hooks(h).layer());
    task.set_kind(kind);
    task.set_chain_index(c);
    task.set_checkpoint_index(c);
    task.set_step(c >= 0 ? spec.model().checkpoints(c).step() : 0);
    task.set_state(TASK_STATE_QUEUED);
    task.set_attempts(0);
    task.set_not_before_ms(0);
    task.clear_worker_id();
    task.clear_error();
    task.set_tokens_trained(0);
    task.set_update_time_ms(now_ms);
    changes->tasks.push_back(std::move(task));
  };
  for (int h = 0; h < spec.hooks_size(); ++h) {
    const int32_t layer = spec.hooks(h).layer();
    for (int c = 0; c < count; ++c) {
      fresh(absl::StrCat(job->job_id(), ".l", layer, ".a", c),
            TASK_KIND_ANALYSE, h, c);
    }
    // Passes of positions beyond the round (none while chains only grow)
    // are not run.
    if (h < static_cast<int>(entry.analyses.size())) {
      for (int c = count; c < static_cast<int>(entry.analyses[h].size()); ++c) {
        const TaskRecord* stale = FindTask(entry.analyses[h][c]);
        if (stale == nullptr || !Unfinished(*stale)) continue;
        TaskRecord cancelled = *stale;
        cancelled.set_state(TASK_STATE_CANCELLED);
        cancelled.set_error(absl::StrCat("not in analysis round ", round));
        cancelled.set_update_time_ms(now_ms);
        changes->tasks.push_back(std::move(cancelled));
      }
    }
    fresh(absl::StrCat(job->job_id(), ".l", layer, ".summary"),
          TASK_KIND_SUMMARISE, h, 0);
    // A summary of an earlier round still being computed is refused by
    // its epoch (TaskScheduler::CompleteSummary).
    changes->tasks.back().set_lease_epoch(changes->tasks.back().lease_epoch() +
                                          1);
    changes->tasks.back().set_chain_index(0);
    changes->tasks.back().set_checkpoint_index(0);
    changes->tasks.back().set_step(0);
  }
  job->mutable_progress()->set_analysis_tasks_total(spec.hooks_size() *
                                                    (count + 1));
  job->mutable_progress()->set_analysis_tasks_done(0);
  follow->set_analysis_round(round);
  follow->set_analysed_checkpoints(count);
  follow->set_analysis_running(true);
  follow->set_refresh_pending(false);
  follow->set_trained_since_round(0);
  follow->set_final_round(final_round);
}

void JobStateMachine::FinishRoundIfDone(const JobEntry& entry, v1::Job* job,
                                        int64_t now_ms,
                                        RecordChanges* changes) const {
  v1::FollowStatus* follow = job->mutable_follow();
  const v1::JobProgress& progress = job->progress();
  if (!follow->analysis_running() ||
      progress.analysis_tasks_done() < progress.analysis_tasks_total()) {
    return;
  }
  follow->set_analysis_running(false);
  if (follow->refresh_pending() && !follow->final_round() && !Closed(*job)) {
    // TrainedPrefix reads the stored tasks: training tasks are not part of
    // a summary's changes.
    const int trained = TrainedPrefix(entry);
    if (trained > 0) StartRound(entry, job, trained, false, now_ms, changes);
  }
}

absl::Status JobStateMachine::CheckAddCheckpoint(const std::string& job_id,
                                                 int64_t step,
                                                 const std::string& path,
                                                 bool* duplicate,
                                                 bool* job_level) const {
  *duplicate = false;
  *job_level = true;
  const JobEntry* entry = FindJob(job_id);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  const v1::Job& job = entry->job;
  if (!Following(job)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", job_id,
        "' does not follow a training run (its spec has no "
        "model.follow); its checkpoints were fixed at submission"));
  }
  for (const v1::Checkpoint& taken : job.spec().model().checkpoints()) {
    if (taken.step() != step) continue;
    if (taken.path() == path) {
      *duplicate = true;
      return absl::OkStatus();
    }
    *job_level = false;
    return absl::AlreadyExistsError(
        absl::StrCat("checkpoint.step: step ", step, " of job '", job_id,
                     "' was already taken from '", taken.path(), "'"));
  }
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job '", job_id, "' already ended in state ",
                     v1::JobState_Name(job.state())));
  }
  if (Closed(job)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", job_id, "' no longer follows its run (",
        job.follow().close_reason(), "); it takes no more checkpoints"));
  }
  if (job.spec().model().checkpoints_size() >= kMaxFollowedCheckpoints) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "job '", job_id, "' holds ", kMaxFollowedCheckpoints,
        " checkpoints, the most a job takes: close it and follow the rest "
        "of the run with a new job"));
  }
  *job_level = false;
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint.step: ", step, " must be >= 0"));
  }
  const int n = job.spec().model().checkpoints_size();
  if (n > 0 && step < job.spec().model().checkpoints(n - 1).step() &&
      !job.spec().model().follow().retrain_late()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint.step: step ", step, " arrived after step ",
        job.spec().model().checkpoints(n - 1).step(),
        " was taken; the chain is not re-trained for it (set "
        "model.follow.retrain_late to re-train from its link on)"));
  }
  return absl::OkStatus();
}

RecordChanges JobStateMachine::PlanAddCheckpoint(
    const std::string& job_id, const v1::JobSpec& validated_spec, int64_t step,
    int64_t seen_ms, int64_t last_write_ms, int64_t now_ms) const {
  const JobEntry& entry = jobs_.at(job_id);
  v1::Job job = entry.job;
  *job.mutable_spec() = validated_spec;
  const v1::JobSpec& spec = job.spec();
  const int n = spec.model().checkpoints_size();
  int p = 0;
  while (p < n && spec.model().checkpoints(p).step() != step) ++p;

  RecordChanges changes;
  // The new link and every link after it (a late step re-trains them):
  // each (re)queued with the checkpoint now at its position.
  int undone = 0;
  int64_t undone_tokens = 0;
  for (int h = 0; h < spec.hooks_size(); ++h) {
    const int32_t layer = spec.hooks(h).layer();
    for (int c = p; c < n; ++c) {
      TaskRecord task;
      const std::string id = absl::StrCat(job_id, ".l", layer, ".c", c);
      if (const TaskRecord* existing = FindTask(id); existing != nullptr) {
        task = *existing;
        if (task.state() == TASK_STATE_SUCCEEDED) {
          ++undone;
          undone_tokens += task.tokens_trained();
        }
      }
      task.set_task_id(id);
      task.set_job_id(job_id);
      task.set_hook_index(h);
      task.set_layer(layer);
      task.set_kind(TASK_KIND_TRAIN);
      task.set_checkpoint_index(c);
      task.set_chain_index(c);
      task.set_step(spec.model().checkpoints(c).step());
      task.set_state(TASK_STATE_QUEUED);
      task.set_attempts(0);
      task.set_not_before_ms(0);
      task.clear_worker_id();
      task.clear_error();
      task.set_tokens_trained(0);
      task.set_update_time_ms(now_ms);
      changes.tasks.push_back(std::move(task));
    }
  }
  v1::JobProgress* progress = job.mutable_progress();
  progress->set_tasks_total(spec.hooks_size() * n);
  progress->set_tasks_done(progress->tasks_done() - undone);
  progress->set_tokens_trained(progress->tokens_trained() - undone_tokens);

  v1::FollowStatus* follow = job.mutable_follow();
  v1::FollowedCheckpoint taken;
  taken.set_step(step);
  taken.set_path(spec.model().checkpoints(p).path());
  taken.set_seen_ms(seen_ms);
  taken.set_last_write_ms(last_write_ms);
  taken.set_taken_ms(now_ms);
  auto* checkpoints = follow->mutable_checkpoints();
  checkpoints->Add(std::move(taken));
  for (int i = checkpoints->size() - 1;
       i > 0 && checkpoints->Get(i - 1).step() > step; --i) {
    checkpoints->SwapElements(i, i - 1);
    // Re-trained after the late one: stored again later.
    checkpoints->Mutable(i)->set_stored_ms(0);
  }
  auto* refused = follow->mutable_refused();
  for (int i = refused->size() - 1; i >= 0; --i) {
    if (refused->Get(i).step() == step) refused->DeleteSubrange(i, 1);
  }
  follow->set_last_step(std::max(follow->last_step(), step));
  follow->set_last_taken_ms(now_ms);
  follow->set_state(v1::FOLLOW_STATE_TRAINING);
  job.set_update_time_ms(now_ms);
  if (job.state() == v1::JOB_STATE_QUEUED) job.set_state(v1::JOB_STATE_RUNNING);

  const bool until = spec.model().follow().has_until_step() &&
                     step >= spec.model().follow().until_step();
  if (until) {
    follow->set_state(v1::FOLLOW_STATE_CLOSED);
    follow->set_closed_ms(now_ms);
    follow->set_close_reason(absl::StrCat(
        "until_step ", spec.model().follow().until_step(), " reached"));
    if (HasAnalysis(spec)) StartRound(entry, &job, n, true, now_ms, &changes);
  } else if (follow->analysis_running() && p < follow->analysed_checkpoints()) {
    // The running round analyses links that are re-trained now: it stops
    // and runs again once they are.
    for (int h = 0; h < static_cast<int>(entry.analyses.size()); ++h) {
      std::vector<std::string> ids = entry.analyses[h];
      if (h < static_cast<int>(entry.summaries.size())) {
        ids.push_back(entry.summaries[h]);
      }
      for (const std::string& id : ids) {
        const TaskRecord* stale = FindTask(id);
        if (stale == nullptr || !Unfinished(*stale)) continue;
        TaskRecord cancelled = *stale;
        cancelled.set_state(TASK_STATE_CANCELLED);
        cancelled.set_error(
            absl::StrCat("step ", step, " re-trains the chain from link ", p));
        cancelled.set_update_time_ms(now_ms);
        changes.tasks.push_back(std::move(cancelled));
      }
    }
    follow->set_analysis_running(false);
    follow->set_refresh_pending(true);
  }
  changes.jobs.push_back(std::move(job));
  return changes;
}

RecordChanges JobStateMachine::PlanRefuseCheckpoint(const std::string& job_id,
                                                    int64_t step,
                                                    const std::string& path,
                                                    const std::string& reason,
                                                    int64_t now_ms) const {
  v1::Job job = jobs_.at(job_id).job;
  auto* refused = job.mutable_follow()->mutable_refused();
  for (int i = refused->size() - 1; i >= 0; --i) {
    if (refused->Get(i).step() == step) refused->DeleteSubrange(i, 1);
  }
  v1::RefusedCheckpoint* r = refused->Add();
  r->set_step(step);
  r->set_path(path);
  r->set_reason(reason);
  r->set_time_ms(now_ms);
  if (refused->size() > kMaxRefusedCheckpoints) {
    refused->DeleteSubrange(0, refused->size() - kMaxRefusedCheckpoints);
  }
  job.set_update_time_ms(now_ms);
  RecordChanges changes;
  changes.jobs.push_back(std::move(job));
  return changes;
}

absl::StatusOr<RecordChanges> JobStateMachine::PlanCloseJob(
    const std::string& job_id, const std::string& reason,
    int64_t now_ms) const {
  const JobEntry* entry = FindJob(job_id);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  v1::Job job = entry->job;
  if (!Following(job)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job '", job_id,
                     "' does not follow a training run; it ends by itself"));
  }
  // Idempotent, also once the job has succeeded after closing; a job that
  // was cancelled or failed is not closed by request.
  if (Closed(job) && job.state() != v1::JOB_STATE_CANCELLED &&
      job.state() != v1::JOB_STATE_FAILED) {
    return RecordChanges();
  }
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job '", job_id, "' already ended in state ",
                     v1::JobState_Name(job.state())));
  }
  RecordChanges changes;
  v1::FollowStatus* follow = job.mutable_follow();
  follow->set_state(v1::FOLLOW_STATE_CLOSED);
  follow->set_closed_ms(now_ms);
  follow->set_close_reason(reason);
  job.set_update_time_ms(now_ms);
  const int n = job.spec().model().checkpoints_size();
  if (n == 0) {
    job.set_state(v1::JOB_STATE_FAILED);
    job.set_error("closed before any checkpoint was taken");
  } else if (HasAnalysis(job.spec())) {
    // The final round: every checkpoint, against the last one, exactly as
    // a fixed-list job's analysis (it waits for the chain to be trained).
    StartRound(*entry, &job, n, true, now_ms, &changes);
  } else if (AllDone(job)) {
    job.set_state(v1::JOB_STATE_SUCCEEDED);
  }
  changes.jobs.push_back(std::move(job));
  return changes;
}

absl::StatusOr<RecordChanges> JobStateMachine::PlanRefreshAnalysis(
    const std::string& job_id, int64_t now_ms) const {
  const JobEntry* entry = FindJob(job_id);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  }
  v1::Job job = entry->job;
  auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat("job '", job_id, "': ", why));
  };
  if (!Following(job)) {
    return refuse(
        "does not follow a training run; its analysis runs once, at the end");
  }
  if (IsTerminal(job.state())) {
    return refuse(absl::StrCat("already ended in state ",
                               v1::JobState_Name(job.state())));
  }
  if (Closed(job)) return refuse("is closed; its final analysis runs now");
  if (!HasAnalysis(job.spec())) {
    return refuse("has no analysis pass (spec.analysis.analysis_tokens is 0)");
  }
  const int trained = TrainedPrefix(*entry);
  if (trained == 0) return refuse("no checkpoint is trained yet");
  RecordChanges changes;
  if (job.follow().analysis_running()) {
    if (job.follow().refresh_pending()) return changes;
    job.mutable_follow()->set_refresh_pending(true);
  } else {
    StartRound(*entry, &job, trained, false, now_ms, &changes);
  }
  job.set_update_time_ms(now_ms);
  changes.jobs.push_back(std::move(job));
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
