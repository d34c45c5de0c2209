// The coordinator's jobs and tasks and the transitions between them, as a
// pure value: no storage, no clock, no threads.
#ifndef SAETRACK_SERVER_INTERNAL_JOB_STATE_MACHINE_H_
#define SAETRACK_SERVER_INTERNAL_JOB_STATE_MACHINE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "saetrack/v1/job.pb.h"
#include "server/internal/records.pb.h"

namespace saetrack::server {

// Records that one transition writes, in one synced batch, before the
// transition becomes visible (JobStateMachine::Apply).
struct RecordChanges {
  std::vector<TaskRecord> tasks;
  std::vector<v1::Job> jobs;

  bool empty() const { return tasks.empty() && jobs.empty(); }
};

// Every job and task of the coordinator, in memory. A transition is planned
// from the current state as RecordChanges (Plan*), which the caller writes
// to the store and then applies (Apply); planning changes nothing, so a
// transition whose write fails is simply dropped. Times are passed in as
// `now_ms` (Unix milliseconds): the same calls give the same records.
//
// Tasks of one chain (one hook over the job's checkpoints) run in chain
// order: the first unfinished task of a chain is the runnable one once it is
// QUEUED and its retry backoff (not_before_ms) has passed. With the analysis
// pass on, a trained chain's final checkpoint is analysed first, then the
// others in any order; the hook's summary is runnable once all are done. A
// job succeeds when every task has. A requeued task waits retry_backoff *
// 2^(attempts - 1), at most retry_backoff_max; a task that fails with no
// attempts left fails its job and cancels the job's other unfinished tasks.
//
// Thread-compatible: the owner (TaskScheduler) serialises access.
class JobStateMachine {
 public:
  struct Options {
    // Times a task may be leased before its job fails.
    int max_attempts = 3;
    absl::Duration retry_backoff = absl::ZeroDuration();
    absl::Duration retry_backoff_max = absl::Seconds(60);
  };

  struct JobEntry {
    v1::Job job;
    int64_t seq = 0;
    // chains[hook_index][chain_index] = task id.
    std::vector<std::vector<std::string>> chains;
    // analyses[hook_index][chain_index] = id of the analysis task of that
    // chain position's checkpoint; summaries[hook_index] = summary task id.
    // Both empty when the job has no analysis pass.
    std::vector<std::vector<std::string>> analyses;
    std::vector<std::string> summaries;
    // Bumped on every change of the job or its running tasks' progress.
    int64_t version = 0;
  };

  // What a worker reported for a running task.
  struct TaskProgress {
    int64_t tokens_done = 0;
    std::optional<double> loss;
    int64_t seq = 0;  // Orders reports: the latest loss wins.
  };

  // Progress the running tasks of one job reported.
  struct RunningProgress {
    int64_t tokens = 0;
    // The latest loss a running task reported.
    std::optional<double> loss;
  };

  explicit JobStateMachine(const Options& options) : options_(options) {}

  // The state stored as `jobs` and `tasks`. Errors: kDataLoss naming a
  // malformed job id, a task without its job or out of its job's shape, or
  // a job with missing tasks.
  static absl::StatusOr<JobStateMachine> FromRecords(
      const Options& options, std::vector<v1::Job> jobs,
      std::vector<TaskRecord> tasks);

  // --- reads (pointers valid until the next Apply) ---

  const JobEntry* FindJob(const std::string& job_id) const;
  const TaskRecord* FindTask(const std::string& task_id) const;
  const std::map<std::string, TaskRecord>& tasks() const { return tasks_; }
  // Calls `fn` with every unfinished job in leasing order (highest
  // priority, then oldest) until it returns false.
  void ForEachActiveJob(absl::FunctionRef<bool(const JobEntry&)> fn) const;
  // Up to `limit` jobs in creation order after sequence number `after_seq`;
  // `more` tells whether jobs follow them.
  std::vector<const v1::Job*> JobsAfter(int64_t after_seq, int limit,
                                        bool* more) const;
  // The RUNNING record of (task_id, epoch). Errors: kAborted naming the
  // task (unknown, another epoch, or no longer leased with its state).
  absl::StatusOr<const TaskRecord*> LiveTask(const std::string& task_id,
                                             int64_t epoch) const;
  // The runnable worker task of hook `h` of `entry` (its chain's next link,
  // else an analysis task), or null; `previous` receives the chain
  // predecessor of a training task. Tasks for which `skip` is true are not
  // runnable.
  const TaskRecord* RunnableInHook(
      const JobEntry& entry, int h, int64_t now_ms,
      absl::FunctionRef<bool(const TaskRecord&)> skip,
      const TaskRecord** previous) const;
  // The first runnable summary task (in leasing order) whose analyses are
  // all done and for which `skip` is false, or null.
  const TaskRecord* RunnableSummary(
      int64_t now_ms, absl::FunctionRef<bool(const TaskRecord&)> skip) const;
  RunningProgress ProgressOf(const JobEntry& entry) const;
  // Changes whenever any job's version does.
  int64_t jobs_version() const { return jobs_version_; }
  // The highest job sequence number, 0 when there are no jobs.
  int64_t max_job_seq() const;

  // The chain position of the final (latest step) checkpoint of a job.
  static int FinalChainIndex(const v1::JobSpec& spec);
  // Chain positions the current analysis round covers (all of them for a
  // fixed-list job; 0..analysed_checkpoints-1 for a following one), and the
  // one the round analyses as the final checkpoint.
  static int AnalysedCount(const v1::Job& job);
  static int AnalysisFinalIndex(const v1::Job& job);
  // Whether the SAE at chain position `chain_index` of a following job gets
  // the trust checks: positions 0, 4, 16, 64, ... up to
  // schedule.reference_checkpoints of them (the chain's length is not known
  // in advance).
  static bool FollowReferenceCheck(const v1::JobSpec& spec, int chain_index);
  static bool IsFollowing(const v1::Job& job) {
    return job.spec().model().has_follow();
  }
  // Calls `fn` with the id of every task of `entry`, of every kind.
  static void ForEachTaskId(const JobEntry& entry,
                            absl::FunctionRef<void(const std::string&)> fn);

  // --- transitions (planned, not applied) ---

  // Job `seq` of `spec` (QUEUED) with one training task per (hook,
  // checkpoint) in chain order, and analysis and summary tasks when the
  // spec has an analysis pass. jobs[0] is the new job.
  // `submitter`: the caller's token name ("" without authentication).
  RecordChanges PlanCreateJob(const v1::JobSpec& spec, int64_t seq,
                              const std::string& request_id, int64_t now_ms,
                              const std::string& submitter = "") const;
  // Cancels the job's QUEUED and RUNNING tasks and the job. Empty for a job
  // already CANCELLED. Errors: kNotFound naming the id, kFailedPrecondition
  // naming the state of a SUCCEEDED or FAILED job.
  absl::StatusOr<RecordChanges> PlanCancelJob(const std::string& job_id,
                                              int64_t now_ms) const;
  // `task` RUNNING for `worker_id` under the next lease epoch (and its job
  // RUNNING if it was QUEUED). REQUIRES: `task` is runnable.
  RecordChanges PlanGrant(const TaskRecord& task, const std::string& worker_id,
                          int64_t now_ms) const;
  // `task` SUCCEEDED and its job's progress counted (SUCCEEDED when every
  // task is). REQUIRES: `task` is RUNNING.
  RecordChanges PlanComplete(const TaskRecord& task, int64_t tokens_trained,
                             int64_t now_ms) const;
  // The requeue of `task` with the retry backoff when `retryable` and it has
  // attempts left (`*requeued` true); else `task` FAILED with `error`, the
  // job FAILED with `job_error` and its other unfinished tasks CANCELLED.
  RecordChanges PlanRetryOrFail(const TaskRecord& task,
                                const std::string& error, bool retryable,
                                const std::string& job_error, int64_t now_ms,
                                bool* requeued) const;
  // A worker's failure report of RUNNING `task`.
  RecordChanges PlanFail(const TaskRecord& task, const std::string& error,
                         bool retryable, int64_t now_ms, bool* requeued) const;
  // The expiry of RUNNING `task`'s lease: requeued or, with no attempts
  // left, its job failed.
  RecordChanges PlanExpire(const TaskRecord& task, int64_t now_ms,
                           bool* requeued) const;
  // --- following jobs ---

  // Why following job `job_id` cannot take checkpoint (`step`, `path`) now,
  // or OK; `*duplicate` is set when the step was taken with this path
  // already (nothing to do). `*job_level` tells errors about the job
  // (NOT_FOUND, not following, closed, ended) from errors about the
  // checkpoint (ALREADY_EXISTS for another path at a taken step,
  // FAILED_PRECONDITION for a late step without follow.retrain_late).
  absl::Status CheckAddCheckpoint(const std::string& job_id, int64_t step,
                                  const std::string& path, bool* duplicate,
                                  bool* job_level) const;
  // The checkpoint taken: `validated_spec` is the job's spec with it placed
  // by step (JobValidator::ValidateNewCheckpoint). Appended, a training
  // task per hook is added; placed before the latest, the chain is
  // re-trained from its link on (follow.retrain_late). Taking until_step
  // closes the job. REQUIRES: CheckAddCheckpoint is OK and not duplicate.
  RecordChanges PlanAddCheckpoint(const std::string& job_id,
                                  const v1::JobSpec& validated_spec,
                                  int64_t step, int64_t seen_ms,
                                  int64_t last_write_ms, int64_t now_ms) const;
  // Records a refused checkpoint on the job (at most the latest 100).
  RecordChanges PlanRefuseCheckpoint(const std::string& job_id, int64_t step,
                                     const std::string& path,
                                     const std::string& reason,
                                     int64_t now_ms) const;
  // Ends following (`reason`): the final analysis round starts, or the job
  // succeeds / fails as a fixed-list job would. Empty for a job already
  // closed. Errors: kNotFound, kFailedPrecondition (not following, ended).
  absl::StatusOr<RecordChanges> PlanCloseJob(const std::string& job_id,
                                             const std::string& reason,
                                             int64_t now_ms) const;
  // A provisional analysis round over the trained checkpoints now, or after
  // the running one. Errors: kNotFound, kFailedPrecondition naming why.
  absl::StatusOr<RecordChanges> PlanRefreshAnalysis(const std::string& job_id,
                                                    int64_t now_ms) const;

  // Summary `task` (QUEUED) SUCCEEDED, done by the coordinator.
  RecordChanges PlanCompleteSummary(const TaskRecord& task,
                                    int64_t now_ms) const;
  // A failed attempt at summary `task` (QUEUED): requeued or its job failed.
  RecordChanges PlanFailSummary(const TaskRecord& task,
                                const std::string& error, bool retryable,
                                int64_t now_ms, bool* requeued) const;

  // --- applying ---

  // Makes committed `changes` visible: each record replaces the one with
  // its id; a job not known yet is added with its tasks (which must be in
  // `changes`). Bumps the versions of the jobs touched (not of a new one)
  // and jobs_version; a task that stops RUNNING loses its progress.
  void Apply(const RecordChanges& changes);
  // Records a RUNNING task's progress. Returns true (and bumps the job's
  // version) when it differs from the last report.
  bool RecordProgress(const std::string& task_id, int64_t tokens_done,
                      std::optional<double> loss);

 private:
  // Adds `job` (not known yet) with empty task slots shaped by its spec.
  absl::Status AddJob(v1::Job job);
  // Puts a task of a known job into its slot. Errors: kDataLoss.
  absl::Status PlaceTask(const TaskRecord& task);
  int64_t BackoffMs(int attempts) const;
  // Adds to `changes` an analysis round of following job `job` over its
  // first `count` chain positions (the final one when `final_round`),
  // updating `job` (which the caller puts into `changes`).
  void StartRound(const JobEntry& entry, v1::Job* job, int count,
                  bool final_round, int64_t now_ms,
                  RecordChanges* changes) const;
  // The job after summary `done` of a round of a following job completed.
  void FinishRoundIfDone(const JobEntry& entry, v1::Job* job, int64_t now_ms,
                         RecordChanges* changes) const;
  // Trained chain positions of every hook, from the start.
  int TrainedPrefix(const JobEntry& entry) const;

  Options options_;
  std::map<std::string, JobEntry> jobs_;
  std::map<int64_t, std::string> jobs_by_seq_;
  // Unfinished jobs ordered by (-priority, seq): the leasing order.
  std::set<std::pair<int64_t, int64_t>> active_jobs_;
  std::map<std::string, TaskRecord> tasks_;
  // Progress of RUNNING tasks, by task id.
  std::map<std::string, TaskProgress> task_progress_;
  int64_t next_progress_seq_ = 1;
  int64_t jobs_version_ = 0;
};

// "job-000042" for sequence number 42.
std::string JobIdForSeq(int64_t seq);
// The sequence number of a job id, or nullopt when malformed.
std::optional<int64_t> SeqOfJobId(const std::string& job_id);

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_JOB_STATE_MACHINE_H_
