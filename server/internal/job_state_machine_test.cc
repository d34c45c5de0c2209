#include "server/internal/job_state_machine.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/internal/lease_table.h"

// Pure tests: every time is an explicit now_ms; no store, clock or thread.
namespace saetrack::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kT0 = 1'700'000'000'000;  // Unix ms.

v1::JobSpec Spec(int num_checkpoints, int num_hooks, int priority = 0,
                 v1::Schedule::Direction direction = v1::Schedule::FORWARD) {
  v1::JobSpec spec;
  for (int i = 0; i < num_checkpoints; ++i) {
    v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
    c->set_step(i * 100);
    c->set_path("/ckpt");
  }
  for (int h = 0; h < num_hooks; ++h) spec.add_hooks()->set_layer(h);
  spec.mutable_sae()->set_d_sae(16);
  spec.mutable_schedule()->set_direction(direction);
  spec.set_priority(priority);
  return spec;
}

v1::JobSpec AnalysedSpec(int num_checkpoints, int num_hooks = 1) {
  v1::JobSpec spec = Spec(num_checkpoints, num_hooks);
  spec.mutable_analysis()->set_analysis_tokens(1024);
  spec.mutable_analysis()->set_top_k(5);
  return spec;
}

bool Never(const TaskRecord&) { return false; }

// Drives a JobStateMachine as the scheduler does, applying every plan (as if
// its write succeeded).
class JobStateMachineTest : public testing::Test {
 protected:
  JobStateMachine::Options options_ = [] {
    JobStateMachine::Options o;
    o.max_attempts = 2;
    return o;
  }();
  JobStateMachine state_{options_};
  int64_t next_seq_ = 1;

  std::string Create(const v1::JobSpec& spec, int64_t now_ms = kT0) {
    RecordChanges changes = state_.PlanCreateJob(spec, next_seq_++, "", now_ms);
    state_.Apply(changes);
    return changes.jobs.front().job_id();
  }

  // The runnable task of hook `h` of `job_id`, or null.
  const TaskRecord* Runnable(const std::string& job_id, int h,
                             int64_t now_ms = kT0) {
    const TaskRecord* previous = nullptr;
    return state_.RunnableInHook(*state_.FindJob(job_id), h, now_ms, Never,
                                 &previous);
  }

  TaskRecord Grant(const TaskRecord& task, const std::string& worker = "w",
                   int64_t now_ms = kT0) {
    state_.Apply(state_.PlanGrant(task, worker, now_ms));
    return *state_.FindTask(task.task_id());
  }

  void Complete(const std::string& task_id, int64_t tokens = 10,
                int64_t now_ms = kT0) {
    state_.Apply(
        state_.PlanComplete(*state_.FindTask(task_id), tokens, now_ms));
  }

  const v1::Job& Job(const std::string& job_id) {
    return state_.FindJob(job_id)->job;
  }
};

TEST_F(JobStateMachineTest, PlanningChangesNothingUntilApplied) {
  const RecordChanges changes = state_.PlanCreateJob(Spec(2, 1), 1, "r", kT0);
  EXPECT_EQ(state_.FindJob("job-000001"), nullptr);
  EXPECT_EQ(state_.jobs_version(), 0);
  state_.Apply(changes);
  ASSERT_NE(state_.FindJob("job-000001"), nullptr);
  EXPECT_EQ(Job("job-000001").request_id(), "r");
  EXPECT_EQ(state_.FindJob("job-000001")->version, 0);
  EXPECT_EQ(state_.jobs_version(), 1);
}

TEST_F(JobStateMachineTest, CreatesChainsAnalysesAndSummaries) {
  const RecordChanges changes =
      state_.PlanCreateJob(AnalysedSpec(3, 2), 7, "", kT0);
  ASSERT_EQ(changes.jobs.size(), 1u);
  const v1::Job& job = changes.jobs[0];
  EXPECT_EQ(job.job_id(), "job-000007");
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.create_time_ms(), kT0);
  EXPECT_EQ(job.progress().tasks_total(), 6);
  EXPECT_EQ(job.progress().analysis_tasks_total(), 8);  // 2 x (3 + summary)
  // 6 training, 6 analysis, 2 summary tasks.
  ASSERT_EQ(changes.tasks.size(), 14u);
  int train = 0, analyse = 0, summarise = 0;
  for (const TaskRecord& t : changes.tasks) {
    EXPECT_EQ(t.state(), TASK_STATE_QUEUED);
    EXPECT_EQ(t.update_time_ms(), kT0);
    train += t.kind() == TASK_KIND_TRAIN;
    analyse += t.kind() == TASK_KIND_ANALYSE;
    summarise += t.kind() == TASK_KIND_SUMMARISE;
  }
  EXPECT_EQ(train, 6);
  EXPECT_EQ(analyse, 6);
  EXPECT_EQ(summarise, 2);
  state_.Apply(changes);
  const JobStateMachine::JobEntry& entry = *state_.FindJob("job-000007");
  EXPECT_THAT(
      entry.chains[1],
      ElementsAre("job-000007.l1.c0", "job-000007.l1.c1", "job-000007.l1.c2"));
  EXPECT_THAT(
      entry.analyses[0],
      ElementsAre("job-000007.l0.a0", "job-000007.l0.a1", "job-000007.l0.a2"));
  EXPECT_THAT(entry.summaries,
              ElementsAre("job-000007.l0.summary", "job-000007.l1.summary"));
}

TEST_F(JobStateMachineTest, BackwardChainsStartAtTheLastCheckpoint) {
  const std::string job = Create(Spec(3, 1, 0, v1::Schedule::BACKWARD));
  const TaskRecord* first = Runnable(job, 0);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->chain_index(), 0);
  EXPECT_EQ(first->checkpoint_index(), 2);
  EXPECT_EQ(first->step(), 200);
  EXPECT_EQ(JobStateMachine::FinalChainIndex(Job(job).spec()), 0);
}

TEST_F(JobStateMachineTest, ChainRunsInOrderAndTheJobSucceedsAtTheEnd) {
  const std::string job = Create(Spec(2, 1));
  const TaskRecord t0 = Grant(*Runnable(job, 0), "w", kT0 + 5);
  EXPECT_EQ(t0.state(), TASK_STATE_RUNNING);
  EXPECT_EQ(t0.lease_epoch(), 1);
  EXPECT_EQ(t0.attempts(), 1);
  EXPECT_EQ(t0.worker_id(), "w");
  EXPECT_EQ(t0.update_time_ms(), kT0 + 5);
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_RUNNING);
  // The next link waits for its predecessor.
  EXPECT_EQ(Runnable(job, 0), nullptr);

  Complete(t0.task_id(), 100, kT0 + 9);
  EXPECT_EQ(state_.FindTask(t0.task_id())->state(), TASK_STATE_SUCCEEDED);
  EXPECT_EQ(state_.FindTask(t0.task_id())->tokens_trained(), 100);
  EXPECT_EQ(Job(job).progress().tasks_done(), 1);
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_RUNNING);
  const TaskRecord* previous = nullptr;
  const TaskRecord* t1 =
      state_.RunnableInHook(*state_.FindJob(job), 0, kT0, Never, &previous);
  ASSERT_NE(t1, nullptr);
  EXPECT_EQ(t1->chain_index(), 1);
  ASSERT_NE(previous, nullptr);
  EXPECT_EQ(previous->task_id(), t0.task_id());

  Complete(Grant(*t1).task_id(), 50, kT0 + 20);
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Job(job).progress().tasks_done(), 2);
  EXPECT_EQ(Job(job).progress().tokens_trained(), 150);
  EXPECT_EQ(Job(job).update_time_ms(), kT0 + 20);
  // No longer an active job.
  int active = 0;
  state_.ForEachActiveJob([&](const JobStateMachine::JobEntry&) {
    ++active;
    return true;
  });
  EXPECT_EQ(active, 0);
}

TEST_F(JobStateMachineTest, LiveTaskNamesTheEpochAndTheState) {
  const std::string job = Create(Spec(1, 1));
  const TaskRecord t = Grant(*Runnable(job, 0));
  EXPECT_TRUE(state_.LiveTask(t.task_id(), 1).ok());
  absl::StatusOr<const TaskRecord*> stale = state_.LiveTask(t.task_id(), 2);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(stale.status().message(),
              HasSubstr("stale lease epoch 2 of task job-000001.l0.c0"));
  EXPECT_EQ(state_.LiveTask("nope", 1).status().code(),
            absl::StatusCode::kAborted);
  Complete(t.task_id());
  EXPECT_THAT(state_.LiveTask(t.task_id(), 1).status().message(),
              HasSubstr("no longer leased (state succeeded)"));
}

TEST_F(JobStateMachineTest, RetriesBackOffExponentiallyUpToTheCap) {
  options_.max_attempts = 4;
  options_.retry_backoff = absl::Seconds(1);
  options_.retry_backoff_max = absl::Seconds(3);
  state_ = JobStateMachine(options_);
  const std::string job = Create(Spec(1, 1));
  int64_t now = kT0;
  // Attempt 1 fails: 1 s; attempt 2: 2 s; attempt 3: 4 s capped to 3 s.
  for (const int64_t backoff_ms : {1000, 2000, 3000}) {
    const TaskRecord* task = Runnable(job, 0, now);
    ASSERT_NE(task, nullptr) << backoff_ms;
    const TaskRecord running = Grant(*task, "w", now);
    bool requeued = false;
    const RecordChanges failed =
        state_.PlanFail(running, "flaky", /*retryable=*/true, now, &requeued);
    EXPECT_TRUE(requeued);
    ASSERT_EQ(failed.tasks.size(), 1u);
    EXPECT_TRUE(failed.jobs.empty());
    EXPECT_EQ(failed.tasks[0].state(), TASK_STATE_QUEUED);
    EXPECT_EQ(failed.tasks[0].not_before_ms(), now + backoff_ms);
    EXPECT_EQ(failed.tasks[0].error(), "flaky");
    EXPECT_EQ(failed.tasks[0].worker_id(), "");
    state_.Apply(failed);
    EXPECT_EQ(Runnable(job, 0, now + backoff_ms - 1), nullptr);
    now += backoff_ms;
  }
  // The fourth attempt is the last: failing it fails the job.
  const TaskRecord last = Grant(*Runnable(job, 0, now), "w", now);
  EXPECT_EQ(last.attempts(), 4);
  bool requeued = true;
  state_.Apply(state_.PlanFail(last, "flaky", true, now, &requeued));
  EXPECT_FALSE(requeued);
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(Job(job).error(), "task job-000001.l0.c0 failed: flaky");
}

TEST_F(JobStateMachineTest, ZeroBackoffRequeuesAtOnce) {
  const std::string job = Create(Spec(1, 1));
  const TaskRecord running = Grant(*Runnable(job, 0));
  bool requeued = false;
  const RecordChanges changes =
      state_.PlanFail(running, "oom", true, kT0 + 7, &requeued);
  EXPECT_EQ(changes.tasks[0].not_before_ms(), 0);
  state_.Apply(changes);
  EXPECT_NE(Runnable(job, 0, kT0 + 7), nullptr);
}

TEST_F(JobStateMachineTest, AttemptLimitFailsTheJobAndCancelsTheRest) {
  const std::string job = Create(Spec(2, 2));
  const TaskRecord a = Grant(*Runnable(job, 0));
  const TaskRecord b = Grant(*Runnable(job, 1));
  bool requeued = true;
  // A fatal error fails at once, whatever the attempts left.
  const RecordChanges changes =
      state_.PlanFail(a, "bad file", /*retryable=*/false, kT0 + 1, &requeued);
  EXPECT_FALSE(requeued);
  // a FAILED; b (running) and both chains' second links CANCELLED.
  ASSERT_EQ(changes.tasks.size(), 4u);
  ASSERT_EQ(changes.jobs.size(), 1u);
  EXPECT_EQ(changes.jobs[0].state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(changes.jobs[0].error(), "task job-000001.l0.c0 failed: bad file");
  state_.Apply(changes);
  EXPECT_EQ(state_.FindTask(a.task_id())->state(), TASK_STATE_FAILED);
  EXPECT_EQ(state_.FindTask(a.task_id())->error(), "bad file");
  const TaskRecord& cancelled = *state_.FindTask(b.task_id());
  EXPECT_EQ(cancelled.state(), TASK_STATE_CANCELLED);
  EXPECT_EQ(cancelled.error(),
            "job failed: task job-000001.l0.c0 failed: bad file");
  EXPECT_EQ(cancelled.lease_epoch(), 1);  // The worker is told to stop.
  EXPECT_EQ(state_.FindTask("job-000001.l1.c1")->state(), TASK_STATE_CANCELLED);
  EXPECT_THAT(state_.LiveTask(b.task_id(), 1).status().message(),
              HasSubstr("state cancelled"));
}

TEST_F(JobStateMachineTest, LeasesExpireAtTheirExactDeadline) {
  const std::string job = Create(Spec(1, 1));
  const TaskRecord task = Grant(*Runnable(job, 0));
  LeaseTable leases;
  const absl::Time deadline = absl::FromUnixMillis(kT0 + 10'000);
  leases.Grant(task.task_id(), task.lease_epoch(), deadline);
  EXPECT_TRUE(leases.ExpiredAt(deadline - absl::Milliseconds(1)).empty());
  // A renewal under another epoch does nothing.
  EXPECT_FALSE(leases.Renew(task.task_id(), 2, deadline + absl::Seconds(5)));
  EXPECT_THAT(leases.ExpiredAt(deadline), ElementsAre(task.task_id()));
  EXPECT_TRUE(leases.Renew(task.task_id(), 1, deadline + absl::Seconds(5)));
  EXPECT_TRUE(leases.ExpiredAt(deadline).empty());

  bool requeued = false;
  const RecordChanges first = state_.PlanExpire(task, kT0 + 15'000, &requeued);
  EXPECT_TRUE(requeued);
  EXPECT_EQ(first.tasks[0].state(), TASK_STATE_QUEUED);
  EXPECT_EQ(first.tasks[0].error(), "lease expired");
  EXPECT_EQ(first.tasks[0].update_time_ms(), kT0 + 15'000);
  state_.Apply(first);
  // The second lease of two allowed expires too: the job fails.
  const TaskRecord again = Grant(*Runnable(job, 0, kT0 + 15'000));
  EXPECT_EQ(again.lease_epoch(), 2);
  state_.Apply(state_.PlanExpire(again, kT0 + 30'000, &requeued));
  EXPECT_FALSE(requeued);
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(Job(job).error(),
            "lease expired: task job-000001.l0.c0 was leased 2 times without "
            "completing");
}

TEST_F(JobStateMachineTest, CancellationEndsUnfinishedTasksOnly) {
  const std::string job = Create(Spec(2, 2));
  const TaskRecord done = Grant(*Runnable(job, 0));
  Complete(done.task_id());
  const TaskRecord running = Grant(*Runnable(job, 1));
  absl::StatusOr<RecordChanges> changes = state_.PlanCancelJob(job, kT0 + 3);
  ASSERT_TRUE(changes.ok()) << changes.status();
  EXPECT_EQ(changes->tasks.size(), 3u);  // Not the succeeded one.
  ASSERT_EQ(changes->jobs.size(), 1u);
  EXPECT_EQ(changes->jobs[0].state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(changes->jobs[0].error(), "cancelled by request");
  state_.Apply(*changes);
  EXPECT_EQ(state_.FindTask(done.task_id())->state(), TASK_STATE_SUCCEEDED);
  EXPECT_EQ(state_.FindTask(running.task_id())->state(), TASK_STATE_CANCELLED);
  EXPECT_EQ(state_.FindTask(running.task_id())->error(), "job cancelled");
  EXPECT_EQ(Runnable(job, 0), nullptr);
  // Again: nothing to write.
  absl::StatusOr<RecordChanges> again = state_.PlanCancelJob(job, kT0 + 4);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());

  const std::string finished = Create(Spec(1, 1));
  Complete(Grant(*Runnable(finished, 0)).task_id());
  absl::StatusOr<RecordChanges> refused = state_.PlanCancelJob(finished, kT0);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("JOB_STATE_SUCCEEDED"));
  absl::StatusOr<RecordChanges> unknown =
      state_.PlanCancelJob("job-000099", kT0);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("job-000099"));
}

TEST_F(JobStateMachineTest, AnalysisFinalFirstThenOthersThenSummary) {
  const std::string job = Create(AnalysedSpec(3));
  for (int c = 0; c < 3; ++c) {
    const TaskRecord* t = Runnable(job, 0);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->kind(), TASK_KIND_TRAIN);
    Complete(Grant(*t).task_id());
  }
  // Only the final checkpoint's pass, until it is done.
  const TaskRecord final_pass = Grant(*Runnable(job, 0));
  EXPECT_EQ(final_pass.kind(), TASK_KIND_ANALYSE);
  EXPECT_EQ(final_pass.chain_index(), 2);
  EXPECT_EQ(Runnable(job, 0), nullptr);
  EXPECT_EQ(state_.RunnableSummary(kT0, Never), nullptr);
  Complete(final_pass.task_id(), 0);
  const TaskRecord a = Grant(*Runnable(job, 0));
  const TaskRecord b = Grant(*Runnable(job, 0));
  EXPECT_NE(a.task_id(), b.task_id());
  EXPECT_EQ(state_.RunnableSummary(kT0, Never), nullptr);
  Complete(a.task_id(), 0);
  Complete(b.task_id(), 0);
  EXPECT_EQ(Job(job).progress().analysis_tasks_done(), 3);
  const TaskRecord* summary = state_.RunnableSummary(kT0, Never);
  ASSERT_NE(summary, nullptr);
  EXPECT_EQ(summary->task_id(), "job-000001.l0.summary");
  // Skipped (taken by the summariser): none other.
  EXPECT_EQ(state_.RunnableSummary(kT0, [](const TaskRecord&) { return true; }),
            nullptr);
  state_.Apply(state_.PlanCompleteSummary(*summary, kT0 + 1));
  const TaskRecord& stored = *state_.FindTask("job-000001.l0.summary");
  EXPECT_EQ(stored.state(), TASK_STATE_SUCCEEDED);
  EXPECT_EQ(stored.worker_id(), "coordinator");
  EXPECT_EQ(stored.attempts(), 1);
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Job(job).progress().analysis_tasks_done(), 4);
}

TEST_F(JobStateMachineTest, AFailedSummaryRetriesThenFailsTheJob) {
  const std::string job = Create(AnalysedSpec(1));
  for (int i = 0; i < 2; ++i) Complete(Grant(*Runnable(job, 0)).task_id(), 0);
  const TaskRecord summary = *state_.RunnableSummary(kT0, Never);
  bool requeued = false;
  state_.Apply(
      state_.PlanFailSummary(summary, "disk hiccup", true, kT0, &requeued));
  EXPECT_TRUE(requeued);
  EXPECT_EQ(state_.FindTask(summary.task_id())->attempts(), 1);
  const TaskRecord again = *state_.RunnableSummary(kT0, Never);
  state_.Apply(
      state_.PlanFailSummary(again, "disk hiccup", true, kT0, &requeued));
  EXPECT_FALSE(requeued);  // Two attempts allowed.
  EXPECT_EQ(Job(job).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(Job(job).error(),
            "summary job-000001.l0.summary failed: disk hiccup");
}

TEST_F(JobStateMachineTest, VersionsAndProgressFollowTheChanges) {
  const std::string job = Create(Spec(1, 2));
  const int64_t v0 = state_.FindJob(job)->version;
  const int64_t all0 = state_.jobs_version();
  const TaskRecord t = Grant(*Runnable(job, 0));
  // The task and the job (QUEUED -> RUNNING) changed.
  EXPECT_EQ(state_.FindJob(job)->version, v0 + 2);
  EXPECT_EQ(state_.jobs_version(), all0 + 1);
  EXPECT_TRUE(state_.RecordProgress(t.task_id(), 500, 0.25));
  EXPECT_FALSE(state_.RecordProgress(t.task_id(), 500, 0.25));      // Same.
  EXPECT_FALSE(state_.RecordProgress("job-000001.l1.c0", 9, 1.0));  // Queued.
  EXPECT_EQ(state_.FindJob(job)->version, v0 + 3);
  JobStateMachine::RunningProgress progress =
      state_.ProgressOf(*state_.FindJob(job));
  EXPECT_EQ(progress.tokens, 500);
  EXPECT_EQ(progress.loss, 0.25);
  Complete(t.task_id());
  progress = state_.ProgressOf(*state_.FindJob(job));
  EXPECT_EQ(progress.tokens, 0);
  EXPECT_FALSE(progress.loss.has_value());
}

TEST_F(JobStateMachineTest, SameCallsGiveTheSameRecords) {
  JobStateMachine other(options_);
  const RecordChanges a = state_.PlanCreateJob(AnalysedSpec(2, 2), 3, "x", kT0);
  const RecordChanges b = other.PlanCreateJob(AnalysedSpec(2, 2), 3, "x", kT0);
  ASSERT_EQ(a.tasks.size(), b.tasks.size());
  for (size_t i = 0; i < a.tasks.size(); ++i) {
    EXPECT_EQ(a.tasks[i].SerializeAsString(), b.tasks[i].SerializeAsString());
  }
  EXPECT_EQ(a.jobs[0].SerializeAsString(), b.jobs[0].SerializeAsString());
}

TEST_F(JobStateMachineTest, RecoversTheSameStateFromItsRecords) {
  const std::string job = Create(AnalysedSpec(2, 2));
  const TaskRecord running = Grant(*Runnable(job, 0));
  Complete(Grant(*Runnable(job, 1)).task_id(), 30);
  Create(Spec(1, 1));

  std::vector<v1::Job> jobs;
  bool more = true;
  for (const v1::Job* j : state_.JobsAfter(0, 100, &more)) jobs.push_back(*j);
  EXPECT_FALSE(more);
  std::vector<TaskRecord> tasks;
  for (const auto& [id, task] : state_.tasks()) tasks.push_back(task);
  absl::StatusOr<JobStateMachine> recovered =
      JobStateMachine::FromRecords(options_, jobs, tasks);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(recovered->max_job_seq(), 2);
  EXPECT_EQ(recovered->FindJob(job)->job.progress().tokens_trained(), 30);
  EXPECT_EQ(recovered->FindJob(job)->chains, state_.FindJob(job)->chains);
  EXPECT_EQ(recovered->FindJob(job)->analyses, state_.FindJob(job)->analyses);
  EXPECT_EQ(recovered->FindJob(job)->summaries, state_.FindJob(job)->summaries);
  EXPECT_TRUE(recovered->LiveTask(running.task_id(), 1).ok());
  const TaskRecord* previous = nullptr;
  const TaskRecord* next = recovered->RunnableInHook(*recovered->FindJob(job),
                                                     1, kT0, Never, &previous);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->task_id(), "job-000001.l1.c1");

  // Damaged records are refused, naming what is wrong.
  std::vector<v1::Job> bad_jobs = jobs;
  bad_jobs[1].set_job_id("job-x");
  absl::StatusOr<JobStateMachine> bad =
      JobStateMachine::FromRecords(options_, bad_jobs, tasks);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("'job-x' is malformed"));
  std::vector<TaskRecord> orphan = tasks;
  orphan[0].set_job_id("job-000042");
  bad = JobStateMachine::FromRecords(options_, jobs, orphan);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("has no matching job"));
  std::vector<TaskRecord> missing = tasks;
  missing.erase(missing.begin());
  bad = JobStateMachine::FromRecords(options_, jobs, missing);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(),
              HasSubstr("stored tasks of job 'job-000001' are incomplete"));
}

// --- following jobs ---

v1::JobSpec FollowSpec(int num_hooks = 1, bool analysis = true) {
  v1::JobSpec spec = analysis ? AnalysedSpec(0, num_hooks) : Spec(0, num_hooks);
  spec.mutable_model()->mutable_follow()->set_dir("/run");
  spec.mutable_schedule()->set_reference_checkpoints(3);
  return spec;
}

class FollowTest : public JobStateMachineTest {
 protected:
  // Takes (step, "/ckpt/<step>") as the validator would place it.
  void Take(const std::string& job_id, int64_t step, int64_t now_ms = kT0) {
    bool duplicate = true;
    bool job_level = true;
    ASSERT_TRUE(state_
                    .CheckAddCheckpoint(job_id, step, Path(step), &duplicate,
                                        &job_level)
                    .ok());
    ASSERT_FALSE(duplicate);
    v1::JobSpec spec = state_.FindJob(job_id)->job.spec();
    auto* checkpoints = spec.mutable_model()->mutable_checkpoints();
    v1::Checkpoint* c = checkpoints->Add();
    c->set_step(step);
    c->set_path(Path(step));
    for (int i = checkpoints->size() - 1;
         i > 0 && checkpoints->Get(i - 1).step() > step; --i) {
      checkpoints->SwapElements(i, i - 1);
    }
    state_.Apply(state_.PlanAddCheckpoint(job_id, spec, step, now_ms - 5,
                                          now_ms - 10, now_ms));
  }
  static std::string Path(int64_t step) { return absl::StrCat("/ckpt/", step); }
  // Runs every runnable task of the job (training, analysis, summaries)
  // until none is left; returns how many ran.
  int RunAll(const std::string& job_id, int64_t now_ms = kT0) {
    int ran = 0;
    for (bool progress = true; progress;) {
      progress = false;
      const auto& entry = *state_.FindJob(job_id);
      for (int h = 0; h < static_cast<int>(entry.chains.size()); ++h) {
        if (const TaskRecord* t = Runnable(job_id, h, now_ms); t != nullptr) {
          const std::string id = t->task_id();
          Grant(*t, "w", now_ms);
          Complete(id, 10, now_ms);
          progress = true;
          ++ran;
          break;
        }
      }
      if (progress) continue;
      if (const TaskRecord* s = state_.RunnableSummary(now_ms, Never);
          s != nullptr) {
        state_.Apply(state_.PlanCompleteSummary(*s, now_ms));
        progress = true;
        ++ran;
      }
    }
    return ran;
  }
  const v1::Job& JobOf(const std::string& job_id) {
    return state_.FindJob(job_id)->job;
  }
};

TEST_F(FollowTest, AFollowingJobRunsAndWaitsBeforeItsFirstCheckpoint) {
  const std::string id = Create(FollowSpec());
  EXPECT_EQ(JobOf(id).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(JobOf(id).follow().state(), v1::FOLLOW_STATE_WAITING);
  EXPECT_EQ(JobOf(id).follow().waiting_since_ms(), kT0);
  EXPECT_EQ(JobOf(id).follow().last_step(), -1);
  EXPECT_EQ(Runnable(id, 0), nullptr);
  EXPECT_EQ(state_.RunnableSummary(kT0, Never), nullptr);
}

TEST_F(FollowTest, EachCheckpointAppendsALinkPerHookTrainedInOrder) {
  const std::string id = Create(FollowSpec(/*num_hooks=*/2));
  Take(id, 0, kT0 + 100);
  EXPECT_EQ(JobOf(id).follow().state(), v1::FOLLOW_STATE_TRAINING);
  EXPECT_EQ(JobOf(id).progress().tasks_total(), 2);
  Take(id, 16, kT0 + 200);
  EXPECT_EQ(JobOf(id).progress().tasks_total(), 4);
  EXPECT_EQ(JobOf(id).follow().last_step(), 16);
  ASSERT_EQ(JobOf(id).follow().checkpoints_size(), 2);
  EXPECT_EQ(JobOf(id).follow().checkpoints(1).last_write_ms(), kT0 + 190);
  const TaskRecord* first = Runnable(id, 1);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->task_id(), "job-000001.l1.c0");
  EXPECT_EQ(first->step(), 0);
  // Both hooks at step 0 done: the checkpoint is stored, not before.
  Grant(*first);
  Complete("job-000001.l1.c0", 10, kT0 + 300);
  EXPECT_EQ(JobOf(id).follow().checkpoints(0).stored_ms(), 0);
  Grant(*Runnable(id, 0));
  Complete("job-000001.l0.c0", 10, kT0 + 400);
  EXPECT_EQ(JobOf(id).follow().checkpoints(0).stored_ms(), kT0 + 400);
  EXPECT_EQ(RunAll(id, kT0 + 500), 2);
  EXPECT_EQ(JobOf(id).follow().state(), v1::FOLLOW_STATE_WAITING);
  EXPECT_EQ(JobOf(id).follow().waiting_since_ms(), kT0 + 500);
  // Still following: no analysis without a round, not SUCCEEDED.
  EXPECT_EQ(JobOf(id).state(), v1::JOB_STATE_RUNNING);
}

TEST_F(FollowTest, TakingIsIdempotentAndLateOrConflictingStepsAreRefused) {
  const std::string id = Create(FollowSpec());
  Take(id, 10);
  Take(id, 20);
  bool duplicate = false;
  bool job_level = true;
  EXPECT_TRUE(
      state_.CheckAddCheckpoint(id, 10, Path(10), &duplicate, &job_level).ok());
  EXPECT_TRUE(duplicate);
  absl::Status other =
      state_.CheckAddCheckpoint(id, 10, "/elsewhere", &duplicate, &job_level);
  EXPECT_EQ(other.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(other.message(), HasSubstr("already taken from '/ckpt/10'"));
  EXPECT_FALSE(job_level);
  absl::Status late =
      state_.CheckAddCheckpoint(id, 15, Path(15), &duplicate, &job_level);
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.message(), HasSubstr("retrain_late"));
  EXPECT_FALSE(job_level);
  state_.Apply(state_.PlanRefuseCheckpoint(id, 15, Path(15),
                                           std::string(late.message()), kT0));
  ASSERT_EQ(JobOf(id).follow().refused_size(), 1);
  EXPECT_EQ(JobOf(id).follow().refused(0).step(), 15);
  // A job that does not follow takes nothing.
  const std::string fixed = Create(Spec(2, 1));
  absl::Status not_following =
      state_.CheckAddCheckpoint(fixed, 300, "/x", &duplicate, &job_level);
  EXPECT_EQ(not_following.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(job_level);
  EXPECT_EQ(
      state_.CheckAddCheckpoint("job-000099", 1, "/x", &duplicate, &job_level)
          .code(),
      absl::StatusCode::kNotFound);
}

TEST_F(FollowTest, ALateStepWithRetrainLateRetrainsFromItsLink) {
  v1::JobSpec spec = FollowSpec(1, /*analysis=*/false);
  spec.mutable_model()->mutable_follow()->set_retrain_late(true);
  const std::string id = Create(spec);
  Take(id, 0);
  Take(id, 20);
  Take(id, 40);
  RunAll(id);
  EXPECT_EQ(JobOf(id).progress().tasks_done(), 3);
  Take(id, 10, kT0 + 1000);
  const v1::Job& job = JobOf(id);
  EXPECT_EQ(job.progress().tasks_total(), 4);
  // Links 1..3 (steps 10, 20, 40) train again, link 0 stays.
  EXPECT_EQ(job.progress().tasks_done(), 1);
  EXPECT_EQ(job.progress().tokens_trained(), 10);
  EXPECT_EQ(state_.FindTask("job-000001.l0.c1")->step(), 10);
  EXPECT_EQ(state_.FindTask("job-000001.l0.c2")->step(), 20);
  EXPECT_EQ(state_.FindTask("job-000001.l0.c3")->step(), 40);
  EXPECT_EQ(state_.FindTask("job-000001.l0.c2")->state(), TASK_STATE_QUEUED);
  ASSERT_EQ(job.follow().checkpoints_size(), 4);
  EXPECT_EQ(job.follow().checkpoints(1).step(), 10);
  EXPECT_GT(job.follow().checkpoints(0).stored_ms(), 0);
  EXPECT_EQ(job.follow().checkpoints(2).stored_ms(), 0);
  const TaskRecord* next = Runnable(id, 0);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->task_id(), "job-000001.l0.c1");
  EXPECT_EQ(RunAll(id), 3);
  EXPECT_EQ(JobOf(id).progress().tasks_done(), 4);
}

TEST_F(FollowTest, ClosingRunsTheFinalRoundAndTheJobSucceedsAsAFixedOne) {
  const std::string id = Create(FollowSpec());
  Take(id, 0);
  Take(id, 8);
  Take(id, 64);
  RunAll(id);
  ASSERT_EQ(JobOf(id).state(), v1::JOB_STATE_RUNNING);
  absl::StatusOr<RecordChanges> close =
      state_.PlanCloseJob(id, "closed by request", kT0 + 1);
  ASSERT_TRUE(close.ok()) << close.status();
  state_.Apply(*close);
  const v1::Job& closed = JobOf(id);
  EXPECT_EQ(closed.follow().state(), v1::FOLLOW_STATE_CLOSED);
  EXPECT_EQ(closed.follow().close_reason(), "closed by request");
  EXPECT_TRUE(closed.follow().final_round());
  EXPECT_EQ(closed.follow().analysed_checkpoints(), 3);
  EXPECT_EQ(closed.progress().analysis_tasks_total(), 4);
  // The final checkpoint's pass first, as for a fixed-list job.
  const TaskRecord* first = Runnable(id, 0);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->task_id(), "job-000001.l0.a2");
  EXPECT_EQ(JobStateMachine::AnalysisFinalIndex(closed), 2);
  // Closing again changes nothing; a closed job takes no checkpoint.
  absl::StatusOr<RecordChanges> again = state_.PlanCloseJob(id, "x", kT0 + 2);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
  bool duplicate = false;
  bool job_level = false;
  EXPECT_EQ(
      state_.CheckAddCheckpoint(id, 100, "/c", &duplicate, &job_level).code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(job_level);
  EXPECT_EQ(RunAll(id), 4);
  EXPECT_EQ(JobOf(id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(FollowTest, ClosingWithoutCheckpointsFailsTheJob) {
  const std::string id = Create(FollowSpec());
  absl::StatusOr<RecordChanges> close = state_.PlanCloseJob(id, "r", kT0);
  ASSERT_TRUE(close.ok());
  state_.Apply(*close);
  EXPECT_EQ(JobOf(id).state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(JobOf(id).error(), HasSubstr("before any checkpoint"));
  // A fixed-list job cannot be closed.
  const std::string fixed = Create(Spec(1, 1));
  EXPECT_EQ(state_.PlanCloseJob(fixed, "r", kT0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A following job that fails or is cancelled follows no more, and says so;
// closing it afterwards is refused with the state it ended in.
TEST_F(FollowTest, AFailedOrCancelledJobFollowsNoMore) {
  const std::string failing = Create(FollowSpec());
  Take(failing, 0, kT0 + 100);
  const TaskRecord task = Grant(*Runnable(failing, 0), "w", kT0 + 200);
  bool requeued = true;
  state_.Apply(state_.PlanFail(task, "weights deleted", /*retryable=*/false,
                               kT0 + 300, &requeued));
  EXPECT_EQ(JobOf(failing).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(JobOf(failing).follow().state(), v1::FOLLOW_STATE_CLOSED);
  EXPECT_EQ(JobOf(failing).follow().close_reason(), "job failed");
  EXPECT_EQ(JobOf(failing).follow().closed_ms(), kT0 + 300);
  EXPECT_FALSE(JobOf(failing).follow().analysis_running());
  absl::StatusOr<RecordChanges> close =
      state_.PlanCloseJob(failing, "r", kT0 + 400);
  EXPECT_EQ(close.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(close.status().message(), HasSubstr("JOB_STATE_FAILED"));

  const std::string cancelled = Create(FollowSpec());
  Take(cancelled, 0, kT0 + 100);
  absl::StatusOr<RecordChanges> cancel =
      state_.PlanCancelJob(cancelled, kT0 + 500);
  ASSERT_TRUE(cancel.ok()) << cancel.status();
  state_.Apply(*cancel);
  EXPECT_EQ(JobOf(cancelled).follow().state(), v1::FOLLOW_STATE_CLOSED);
  EXPECT_EQ(JobOf(cancelled).follow().close_reason(), "job cancelled");
  EXPECT_EQ(state_.PlanCloseJob(cancelled, "r", kT0 + 600).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(FollowTest, UntilStepClosesTheJob) {
  v1::JobSpec spec = FollowSpec(1, /*analysis=*/false);
  spec.mutable_model()->mutable_follow()->set_until_step(32);
  const std::string id = Create(spec);
  Take(id, 16);
  EXPECT_NE(JobOf(id).follow().state(), v1::FOLLOW_STATE_CLOSED);
  Take(id, 32);
  EXPECT_EQ(JobOf(id).follow().state(), v1::FOLLOW_STATE_CLOSED);
  EXPECT_EQ(JobOf(id).follow().close_reason(), "until_step 32 reached");
  RunAll(id);
  EXPECT_EQ(JobOf(id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(FollowTest, AnalyseEveryRunsProvisionalRoundsOverTheTrainedPrefix) {
  v1::JobSpec spec = FollowSpec();
  spec.mutable_model()->mutable_follow()->set_analyse_every(2);
  const std::string id = Create(spec);
  Take(id, 0);
  RunAll(id);
  EXPECT_FALSE(JobOf(id).follow().analysis_running());
  EXPECT_EQ(JobOf(id).follow().analysis_round(), 0);
  Take(id, 1);
  Take(id, 2);
  // Link 1 trains: the second trained checkpoint starts round 1 over
  // links 0..1, while link 2 is leased elsewhere.
  Grant(*Runnable(id, 0));
  Complete("job-000001.l0.c1");
  EXPECT_TRUE(JobOf(id).follow().analysis_running());
  EXPECT_EQ(JobOf(id).follow().analysis_round(), 1);
  EXPECT_EQ(JobOf(id).follow().analysed_checkpoints(), 2);
  const TaskRecord* link2 = Runnable(id, 0);
  ASSERT_NE(link2, nullptr);
  EXPECT_EQ(link2->task_id(), "job-000001.l0.c2");
  Grant(*link2);
  const TaskRecord* pass = Runnable(id, 0);
  ASSERT_NE(pass, nullptr);
  EXPECT_EQ(pass->task_id(), "job-000001.l0.a1");  // The round's final one.
  Grant(*pass);
  Complete("job-000001.l0.a1");
  Grant(*Runnable(id, 0));
  Complete("job-000001.l0.a0");
  const TaskRecord* summary = state_.RunnableSummary(kT0, Never);
  ASSERT_NE(summary, nullptr);
  state_.Apply(state_.PlanCompleteSummary(*summary, kT0));
  EXPECT_FALSE(JobOf(id).follow().analysis_running());
  EXPECT_EQ(JobOf(id).state(), v1::JOB_STATE_RUNNING);
  // A refresh on request covers whatever is trained then.
  Complete("job-000001.l0.c2");
  absl::StatusOr<RecordChanges> refresh = state_.PlanRefreshAnalysis(id, kT0);
  ASSERT_TRUE(refresh.ok()) << refresh.status();
  state_.Apply(*refresh);
  EXPECT_EQ(JobOf(id).follow().analysis_round(), 2);
  EXPECT_EQ(JobOf(id).follow().analysed_checkpoints(), 3);
  EXPECT_EQ(JobOf(id).progress().analysis_tasks_total(), 4);
  // Asked again while it runs: after it.
  absl::StatusOr<RecordChanges> again = state_.PlanRefreshAnalysis(id, kT0);
  ASSERT_TRUE(again.ok());
  state_.Apply(*again);
  EXPECT_TRUE(JobOf(id).follow().refresh_pending());
  RunAll(id);
  EXPECT_EQ(JobOf(id).follow().analysis_round(), 3);
  EXPECT_FALSE(JobOf(id).follow().analysis_running());
  EXPECT_FALSE(JobOf(id).follow().refresh_pending());
}

TEST_F(FollowTest, RefreshIsRefusedWithTheReason) {
  const std::string id = Create(FollowSpec());
  EXPECT_THAT(state_.PlanRefreshAnalysis(id, kT0).status().message(),
              HasSubstr("no checkpoint is trained yet"));
  const std::string plain = Create(FollowSpec(1, /*analysis=*/false));
  EXPECT_THAT(state_.PlanRefreshAnalysis(plain, kT0).status().message(),
              HasSubstr("no analysis pass"));
}

TEST_F(FollowTest, RecordsRoundTripMidRound) {
  v1::JobSpec spec = FollowSpec(/*num_hooks=*/2);
  const std::string id = Create(spec);
  Take(id, 0);
  Take(id, 4);
  RunAll(id);
  ASSERT_TRUE(state_.PlanRefreshAnalysis(id, kT0).ok());
  state_.Apply(*state_.PlanRefreshAnalysis(id, kT0));
  Take(id, 8);
  std::vector<v1::Job> jobs{JobOf(id)};
  std::vector<TaskRecord> tasks;
  for (const auto& [task_id, task] : state_.tasks()) tasks.push_back(task);
  absl::StatusOr<JobStateMachine> restored =
      JobStateMachine::FromRecords(options_, jobs, tasks);
  ASSERT_TRUE(restored.ok()) << restored.status();
  const JobStateMachine::JobEntry* entry = restored->FindJob(id);
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->chains[0].size(), 3u);
  EXPECT_EQ(entry->analyses[1].size(), 2u);
  EXPECT_EQ(entry->summaries[1], "job-000001.l1.summary");
  // A following job missing a chain link is refused.
  tasks.erase(std::remove_if(tasks.begin(), tasks.end(),
                             [](const TaskRecord& t) {
                               return t.task_id() == "job-000001.l0.c1";
                             }),
              tasks.end());
  EXPECT_EQ(JobStateMachine::FromRecords(options_, jobs, tasks).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(FollowTest, AJobTakesAtMostTenThousandCheckpoints) {
  v1::JobSpec spec = FollowSpec(1, /*analysis=*/false);
  for (int i = 0; i < 10'000; ++i) {
    v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
    c->set_step(i);
    c->set_path("/ckpt");
  }
  const std::string id = Create(spec);
  bool duplicate = false;
  bool job_level = false;
  absl::Status s =
      state_.CheckAddCheckpoint(id, 20'000, "/c", &duplicate, &job_level);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("close it"));
  EXPECT_TRUE(job_level);
}

TEST(FollowReferenceCheckTest, LogSpacedPositionsUpToTheCount) {
  v1::JobSpec spec;
  spec.mutable_schedule()->set_reference_checkpoints(4);
  std::vector<int> positions;
  for (int c = 0; c < 300; ++c) {
    if (JobStateMachine::FollowReferenceCheck(spec, c)) positions.push_back(c);
  }
  EXPECT_THAT(positions, ElementsAre(0, 4, 16, 64));
  spec.mutable_schedule()->set_reference_checkpoints(0);
  EXPECT_FALSE(JobStateMachine::FollowReferenceCheck(spec, 0));
}

}  // namespace
}  // namespace saetrack::server
