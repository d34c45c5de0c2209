// The coordinator's scheduler: jobs, tasks, leases and the writes that make
// their transitions durable, behind one thread-safe API.
#ifndef SAETRACK_SERVER_INTERNAL_TASK_SCHEDULER_H_
#define SAETRACK_SERVER_INTERNAL_TASK_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/worker.pb.h"
#include "server/clock.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_state_machine.h"
#include "server/internal/job_store.h"
#include "server/internal/lease_table.h"
#include "server/internal/records.pb.h"
#include "server/internal/result_committer.h"
#include "server/internal/task_picker.h"
#include "storage/kv_store.h"

namespace saetrack::server {

struct SchedulerOptions {
  absl::Duration lease_ttl = absl::Seconds(30);
  // Times a task may be leased before its job fails.
  int max_attempts = 3;
  // A requeued task waits retry_backoff * 2^(attempts - 1), at most
  // retry_backoff_max, before it can be leased again. Zero: at once.
  absl::Duration retry_backoff = absl::ZeroDuration();
  absl::Duration retry_backoff_max = absl::Seconds(60);
  // Real-time period of the background lease-expiry check; zero disables the
  // thread (leases are still checked on every worker call).
  absl::Duration expiry_check_interval = absl::Seconds(1);
  // Writes (a task's results, then every transition's records) go to the
  // store without the scheduler's lock held: it is held only to decide and
  // to apply a written change. false: every write under the lock, every
  // other call waiting for it (the baseline commit_latency_bench measures
  // against).
  bool commit_outside_lock = true;
};

// What a worker-side call needs to know about a valid lease.
struct LeaseInfo {
  std::string job_id;
  std::string task_id;
  // The worker holding the lease.
  std::string worker_id;
  int32_t layer = 0;
  int64_t step = 0;
  int32_t chain_index = 0;
  // Feature count of the job's SAEs.
  int32_t d_sae = 0;
  TaskKind kind = TASK_KIND_TRAIN;
  // Analysis tasks: true for the final checkpoint's pass, whose analysis
  // block is kept as the reference of the others.
  bool final_analysis = false;
  // spec.analysis.top_k.
  int32_t top_k = 0;
};

// A summary (TASK_KIND_SUMMARISE) the coordinator itself computes.
struct SummaryWork {
  std::string task_id;
  std::string job_id;
  v1::JobSpec spec;
  int32_t hook_index = 0;
  int32_t layer = 0;
  // The hook's checkpoint steps in step order (the last is the final one).
  std::vector<int64_t> steps;
  // A following job's provisional round (before its final one).
  bool provisional = false;
};

// Holds every job and task in memory, mirrored in the database: each state
// transition is written (synced) in one WriteBatch before it becomes visible.
// Tasks of one chain (one hook over the job's checkpoints) run in chain
// order; the next task of a chain becomes leasable when its predecessor
// succeeds. Among leasable tasks the highest job priority wins, then the
// oldest job, then the lowest hook index.
//
// With the analysis pass on (spec.analysis.analysis_tokens > 0), a hook whose
// chain is trained gets an analysis task per checkpoint: the final (latest
// step) checkpoint's first, then the others, in any order and in parallel;
// once all are done the hook's summary task is handed to the coordinator's
// summariser (TakeSummary). The job succeeds when every task has.
//
// A lease lasts lease_ttl past its grant or last heartbeat (by the injected
// clock). An expired lease, or a retryable failure, requeues its task (after
// a capped exponential backoff) until the task has been leased max_attempts
// times; then the job fails, and its other unfinished tasks are cancelled.
//
// Composed of the pure JobStateMachine (jobs, tasks, transitions), the
// LeaseTable, PickTask (the picking policy) and the ResultCommitter. One
// mutex guards the decisions: a call plans a transition under it, pins the
// records it writes, writes them without the mutex, and applies them under
// it again; a decision that would touch a pinned record waits for it (a
// small synced write), Lease passes over pinned tasks, and reads see the
// last applied state. So a large result being stored holds up no lease,
// heartbeat or query.
//
// Does not own the store, clock or metrics (all must outlive it). Thread-safe.
class TaskScheduler {
 public:
  // Rebuilds the state from `store`. RUNNING tasks keep their lease epoch and
  // get a fresh lease (now + ttl), so a worker still running one can finish.
  static absl::StatusOr<std::unique_ptr<TaskScheduler>> Recover(
      storage::KvStore* store, Clock* clock, CoordinatorMetrics* metrics,
      const SchedulerOptions& options);

  // Stops the expiry thread.
  ~TaskScheduler();

  TaskScheduler(const TaskScheduler&) = delete;
  TaskScheduler& operator=(const TaskScheduler&) = delete;

  // --- jobs ---

  // The job first created with `request_id`. nullopt when the id is unused;
  // kAlreadyExists when it was used with a different spec fingerprint.
  absl::StatusOr<std::optional<v1::Job>> FindByRequestId(
      const std::string& request_id, const std::string& fingerprint) const;

  struct Submitted {
    v1::Job job;
    bool created = false;
  };
  // Creates a job of `spec` (validated, defaults filled) with one task per
  // (hook, checkpoint), or returns the job created earlier under the same
  // non-empty `request_id` (created = false). Job record, tasks and request
  // id go in one batch. Errors: kAlreadyExists (request id reused with a
  // different fingerprint), storage errors. `submitter` is recorded as the
  // job's submitter (the caller's token name; "" without authentication).
  absl::StatusOr<Submitted> CreateJob(const v1::JobSpec& spec,
                                      const std::string& request_id,
                                      const std::string& fingerprint,
                                      const std::string& submitter = "");

  // Errors: kNotFound naming the id.
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) const;

  struct JobPage {
    std::vector<v1::Job> jobs;
    // Empty when there are no more jobs after this page.
    std::string next_after_job_id;
  };
  // Jobs in creation order (oldest first), starting after `after_job_id`
  // (empty: from the first job). Errors: kInvalidArgument for a malformed
  // `after_job_id`.
  absl::StatusOr<JobPage> ListJobs(const std::string& after_job_id,
                                   int page_size) const;

  // Cancels a QUEUED or RUNNING job: its QUEUED and RUNNING tasks become
  // CANCELLED (a running task's worker learns it from its next heartbeat,
  // and its late results are refused with kAborted) and the job CANCELLED,
  // in one synced batch. Returns the job; a CANCELLED job is returned
  // unchanged. Errors: kNotFound naming the id, kFailedPrecondition naming
  // the state of a SUCCEEDED or FAILED job, storage errors (nothing changed).
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id);

  // --- following jobs ---

  // Validates a checkpoint for a job's current spec (the I/O of
  // JobValidator::ValidateNewCheckpoint), called without the scheduler's
  // lock.
  using CheckpointValidator = std::function<absl::StatusOr<v1::JobSpec>(
      const v1::JobSpec& spec, int64_t step, const std::string& path)>;
  struct AddedCheckpoint {
    v1::Job job;
    bool created = false;
  };
  // Gives following job `job_id` checkpoint (`step`, `path`), first seen at
  // `seen_ms` with its files last written at `last_write_ms` (0: unknown).
  // Idempotent on (job, step) with the same path (created = false). A
  // checkpoint refused for itself (validation, a late step, another path
  // at a taken step) is recorded on the job (follow.refused) and the
  // error returned; errors about the job (kNotFound, not following,
  // closed, ended) record nothing. Storage errors change nothing.
  absl::StatusOr<AddedCheckpoint> AddCheckpoint(
      const std::string& job_id, int64_t step, const std::string& path,
      int64_t seen_ms, int64_t last_write_ms,
      const CheckpointValidator& validate);
  // Ends following (JobStateMachine::PlanCloseJob). Idempotent.
  absl::StatusOr<v1::Job> CloseJob(const std::string& job_id,
                                   const std::string& reason);
  // A provisional analysis round now or after the running one.
  absl::StatusOr<v1::Job> RefreshAnalysis(const std::string& job_id);
  // Every job that follows a run and is not closed or ended.
  std::vector<v1::Job> FollowingJobs() const;

  // What WatchJob streams about one job.
  struct JobWatch {
    v1::Job job;
    // Changes whenever the job or the reported progress of its running
    // tasks does.
    int64_t version = 0;
    // Tokens reported by heartbeats of the job's running tasks.
    int64_t running_tokens = 0;
    // The latest loss a running task of the job reported.
    std::optional<double> loss;
  };
  // The job once its version differs from `after_version`, or when `timeout`
  // (real time) has passed or `cancelled()` turned true, whichever is first.
  // Errors: kNotFound naming the id; kUnavailable once Shutdown was called.
  absl::StatusOr<JobWatch> WaitForJobChange(
      const std::string& job_id, int64_t after_version, absl::Duration timeout,
      absl::FunctionRef<bool()> cancelled) const;

  // A number that changes whenever any job's version does: returns once it
  // differs from `after` or `timeout` has passed. Errors: kUnavailable once
  // Shutdown was called.
  absl::StatusOr<int64_t> WaitForAnyJobChange(int64_t after,
                                              absl::Duration timeout) const;

  // --- workers ---

  // A new worker id; `device` ("cpu", "cuda" or empty) restricts which jobs'
  // tasks the worker is given, and so does `memory_bytes` (0: unknown, any
  // job): a job whose spec.min_worker_memory_bytes exceeds it is not.
  // `owner`: the token name of the caller that registers it ("" without
  // authentication), stored with the registration.
  absl::StatusOr<std::string> RegisterWorker(const std::string& device,
                                             int64_t memory_bytes = 0,
                                             const std::string& owner = "");
  // The owner `worker_id` was registered with; nullopt for an unknown id.
  std::optional<std::string> WorkerOwner(const std::string& worker_id) const;

  // Leases the best runnable task to `worker_id`, waiting up to `wait` (real
  // time) for one to become runnable. nullopt when none did, when
  // `cancelled()` turned true, or on Shutdown.
  absl::StatusOr<std::optional<v1::Task>> Lease(
      const std::string& worker_id, absl::Duration wait,
      absl::FunctionRef<bool()> cancelled);

  // Renews the lease and records the task's progress as the worker reports
  // it (for WaitForJobChange). Returns true when the worker should stop
  // because the job has failed or was cancelled (its task was cancelled).
  // Errors: kAborted for an unknown task or a stale or expired lease.
  absl::StatusOr<bool> Heartbeat(const std::string& task_id, int64_t epoch,
                                 int64_t tokens_done = 0,
                                 std::optional<double> loss = std::nullopt);

  // The lease (task_id, epoch) if it is the live one. Errors: kAborted.
  absl::StatusOr<LeaseInfo> CheckLease(const std::string& task_id,
                                       int64_t epoch);

  // Atomically writes `results` together with the task's SUCCEEDED state and
  // the job's progress (SUCCEEDED when every task is). Errors: kAborted (stale
  // lease: nothing written), storage errors (nothing written).
  absl::Status Complete(const std::string& task_id, int64_t epoch,
                        storage::WriteBatch results, int64_t tokens_trained);

  // Requeues the task when `retryable` and it has attempts left, else fails
  // the job with `error`. Errors: kAborted (stale lease).
  absl::Status Fail(const std::string& task_id, int64_t epoch,
                    const std::string& error, bool retryable);

  // Requeues (or fails) every task whose lease has expired by the clock.
  void ExpireLeases();

  // --- summaries (computed by the coordinator, not leased to workers) ---

  // A runnable summary task, marked as taken until CompleteSummary or
  // FailSummary (in memory only: after a restart it is runnable again).
  // Waits up to `wait` (real time); nullopt when none became runnable or
  // on Shutdown.
  std::optional<SummaryWork> TakeSummary(absl::Duration wait);
  // Writes `results` with the task's SUCCEEDED state and the job's progress
  // in one batch. Errors: kAborted when the task is not taken (its job was
  // cancelled or failed meanwhile: nothing written), storage errors.
  absl::Status CompleteSummary(const std::string& task_id,
                               storage::WriteBatch results);
  // Requeues a taken summary after a retryable error (with the retry
  // backoff, within max_attempts), else fails its job with `error`.
  absl::Status FailSummary(const std::string& task_id, const std::string& error,
                           bool retryable);

  // Wakes every long poll (they return nullopt) and refuses new waits.
  void Shutdown();

 private:
  TaskScheduler(storage::KvStore* store, Clock* clock,
                CoordinatorMetrics* metrics, const SchedulerOptions& options,
                JobStateMachine state);

  // Writes `batch` with the records of `changes` (synced) and applies them.
  // With commit_outside_lock, mu_ is released during the write, the records
  // pinned meanwhile so that no other decision plans from them; on return
  // mu_ is held again and anything read before may have changed. Nothing is
  // applied when the write fails. REQUIRES: no record of `changes` pinned.
  // Records the refusal of checkpoint (`step`, `path`) on `job_id` and
  // returns `why`.
  absl::Status RefuseLocked(const std::string& job_id, int64_t step,
                            const std::string& path, const absl::Status& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CommitLocked(storage::WriteBatch batch,
                            const RecordChanges& changes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes committed `changes` visible (state, leases, metrics, waiters).
  void ApplyLocked(const RecordChanges& changes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a record of `changes` is pinned by a commit in flight.
  bool PinnedLocked(const RecordChanges& changes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits until some commit in flight has been applied or dropped.
  void WaitForUnpinLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Requeues (or fails) every task whose lease has expired by the clock,
  // except those being committed; may release mu_ while writing.
  void ExpireLeasesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The task handed to the worker for the granted record `task`.
  v1::Task TaskMessageLocked(const TaskRecord& task) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpiryLoop();
  int64_t NowMs() const;

  const SchedulerOptions options_;
  storage::KvStore* const store_;
  Clock* const clock_;
  CoordinatorMetrics* const metrics_;
  const ResultCommitter committer_;

  // Serialises job creation (the job sequence counter and request ids are
  // written in order) without holding mu_ during the write. Taken before
  // mu_.
  mutable absl::Mutex create_mu_;
  int64_t next_job_seq_ ABSL_GUARDED_BY(create_mu_) = 1;
  // Serialises worker registration likewise. Taken before mu_.
  absl::Mutex register_mu_;
  int64_t next_worker_seq_ ABSL_GUARDED_BY(register_mu_) = 1;

  // The decision lock: held to plan a transition and to apply a committed
  // one, not while it is written (with commit_outside_lock).
  mutable absl::Mutex mu_;
  // Signalled when a task may have become runnable, and on Shutdown.
  absl::CondVar runnable_cv_;
  // Signalled when a summary may have become runnable, and on Shutdown.
  absl::CondVar summary_cv_;
  // Signalled when a job's version changes, and on Shutdown.
  mutable absl::CondVar job_changed_cv_;
  // Signalled when a commit in flight is applied or dropped.
  absl::CondVar unpinned_cv_;
  JobStateMachine state_ ABSL_GUARDED_BY(mu_);
  LeaseTable leases_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  // Task and job ids whose records a commit in flight is writing.
  std::set<std::string> pinned_tasks_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> pinned_jobs_ ABSL_GUARDED_BY(mu_);
  // Summary tasks handed out by TakeSummary and not yet finished.
  // Taken summary tasks and the lease epoch they were taken at (a following
  // job's new analysis round bumps it: the result of the old one is then
  // refused).
  std::map<std::string, int64_t> summaries_taken_ ABSL_GUARDED_BY(mu_);
  // Tasks whose completion (results, then records) is being written: their
  // leases do not expire meanwhile.
  std::set<std::string> committing_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;

  std::thread expiry_thread_;
};

// JobIdForSeq and SeqOfJobId: server/internal/job_state_machine.h.

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_TASK_SCHEDULER_H_
