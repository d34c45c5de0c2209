#include "server/internal/task_scheduler.h"

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/clock.h"
#include "server/internal/coordinator_metrics.h"
#include "storage/kv_store.h"

namespace saetrack::server {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kTtl = absl::Seconds(10);

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

class TaskSchedulerTest : public testing::Test {
 protected:
  void SetUp() override { scheduler_ = Open(); }

  std::unique_ptr<TaskScheduler> Open(int max_attempts = 2) {
    SchedulerOptions options;
    options.lease_ttl = kTtl;
    options.max_attempts = max_attempts;
    options.expiry_check_interval = absl::ZeroDuration();  // Lazy only.
    auto s = TaskScheduler::Recover(store_.get(), &clock_, &metrics_, options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  std::string Create(const v1::JobSpec& spec) {
    auto submitted = scheduler_->CreateJob(spec, "", "");
    EXPECT_TRUE(submitted.ok()) << submitted.status();
    return submitted->job.job_id();
  }

  // Leases without waiting; nullopt when nothing is runnable.
  std::optional<v1::Task> LeaseNow(const std::string& worker = "w") {
    auto task =
        scheduler_->Lease(worker, absl::ZeroDuration(), [] { return false; });
    EXPECT_TRUE(task.ok()) << task.status();
    return task.ok() ? *task : std::nullopt;
  }

  std::unique_ptr<storage::KvStore> store_ = storage::NewInMemoryStore();
  FakeClock clock_;
  CoordinatorMetrics metrics_;
  std::unique_ptr<TaskScheduler> scheduler_;
};

TEST_F(TaskSchedulerTest, JobIdsAreSortableAndParse) {
  EXPECT_EQ(JobIdForSeq(1), "job-000001");
  EXPECT_EQ(JobIdForSeq(1234567), "job-1234567");
  EXPECT_EQ(SeqOfJobId("job-000042"), 42);
  EXPECT_EQ(SeqOfJobId("job-"), std::nullopt);
  EXPECT_EQ(SeqOfJobId("job-12x"), std::nullopt);
  EXPECT_EQ(SeqOfJobId("task-1"), std::nullopt);
}

TEST_F(TaskSchedulerTest, ChainRunsInOrderWithInitFromPredecessor) {
  const std::string job = Create(Spec(3, 1));
  std::optional<v1::Task> t0 = LeaseNow();
  ASSERT_TRUE(t0.has_value());
  EXPECT_EQ(t0->train().chain_index(), 0);
  EXPECT_EQ(t0->lease_epoch(), 1);
  EXPECT_FALSE(t0->train().has_init_from());
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_RUNNING);
  // The chain's next task waits for its predecessor.
  EXPECT_FALSE(LeaseNow().has_value());

  ASSERT_TRUE(
      scheduler_->Complete(t0->task_id(), 1, storage::WriteBatch(), 100).ok());
  std::optional<v1::Task> t1 = LeaseNow();
  ASSERT_TRUE(t1.has_value());
  EXPECT_EQ(t1->train().chain_index(), 1);
  EXPECT_EQ(t1->train().checkpoint_index(), 1);
  EXPECT_EQ(t1->train().init_from().step(), 0);
  EXPECT_EQ(t1->train().init_from().job_id(), job);
  // Exactly once: a retried completion of the same lease (its answer was
  // lost) is acknowledged and stores nothing again; another epoch's is
  // refused.
  storage::WriteBatch again;
  again.Put(storage::Column::kMeta, "written-twice", "x");
  EXPECT_TRUE(
      scheduler_->Complete(t0->task_id(), 1, std::move(again), 100).ok());
  EXPECT_TRUE(absl::IsNotFound(
      store_->Get(storage::Column::kMeta, "written-twice").status()));
  EXPECT_EQ(scheduler_->GetJob(job)->progress().tasks_done(), 1);
  EXPECT_EQ(
      scheduler_->Complete(t0->task_id(), 2, storage::WriteBatch(), 100).code(),
      absl::StatusCode::kAborted);
}

TEST_F(TaskSchedulerTest, BackwardChainStartsAtLastCheckpoint) {
  Create(Spec(3, 1, 0, v1::Schedule::BACKWARD));
  std::optional<v1::Task> t0 = LeaseNow();
  ASSERT_TRUE(t0.has_value());
  EXPECT_EQ(t0->train().checkpoint_index(), 2);
  ASSERT_TRUE(
      scheduler_->Complete(t0->task_id(), 1, storage::WriteBatch(), 1).ok());
  std::optional<v1::Task> t1 = LeaseNow();
  ASSERT_TRUE(t1.has_value());
  EXPECT_EQ(t1->train().checkpoint_index(), 1);
  EXPECT_EQ(t1->train().init_from().step(), 200);
}

TEST_F(TaskSchedulerTest, HigherPriorityThenOlderJobFirstAndChainsInParallel) {
  const std::string low = Create(Spec(1, 1, /*priority=*/0));
  const std::string high = Create(Spec(2, 2, /*priority=*/5));
  std::optional<v1::Task> a = LeaseNow();
  std::optional<v1::Task> b = LeaseNow();
  std::optional<v1::Task> c = LeaseNow();
  ASSERT_TRUE(a && b && c);
  // Both chains (layers) of the high-priority job run in parallel.
  EXPECT_EQ(a->job_id(), high);
  EXPECT_EQ(a->train().hook().layer(), 0);
  EXPECT_EQ(b->job_id(), high);
  EXPECT_EQ(b->train().hook().layer(), 1);
  EXPECT_EQ(c->job_id(), low);
  EXPECT_FALSE(LeaseNow().has_value());
}

TEST_F(TaskSchedulerTest, DeviceRestrictsWhichWorkerGetsTheTask) {
  v1::JobSpec spec = Spec(1, 1);
  spec.set_device("cuda");
  Create(spec);
  absl::StatusOr<std::string> cpu = scheduler_->RegisterWorker("cpu");
  absl::StatusOr<std::string> gpu = scheduler_->RegisterWorker("cuda");
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  EXPECT_NE(*cpu, *gpu);
  EXPECT_FALSE(LeaseNow(*cpu).has_value());
  EXPECT_TRUE(LeaseNow(*gpu).has_value());
}

// Registrations are stored: after a restart a cpu worker still does not get
// a cuda job, nor a small one a job that needs more memory.
TEST_F(TaskSchedulerTest, WorkerRegistrationsSurviveARestart) {
  absl::StatusOr<std::string> cpu =
      scheduler_->RegisterWorker("cpu", 4'000'000'000);
  absl::StatusOr<std::string> gpu = scheduler_->RegisterWorker("cuda");
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  scheduler_ = Open();
  ASSERT_NE(scheduler_, nullptr);
  v1::JobSpec spec = Spec(1, 1);
  spec.set_device("cuda");
  Create(spec);
  v1::JobSpec big = Spec(1, 1);
  big.set_min_worker_memory_bytes(8'000'000'000);
  Create(big);
  EXPECT_FALSE(LeaseNow(*cpu).has_value());
  std::optional<v1::Task> task = LeaseNow(*gpu);
  ASSERT_TRUE(task.has_value());
  EXPECT_EQ(task->job_id(), "job-000001");
  // Ids keep counting where they were.
  absl::StatusOr<std::string> next = scheduler_->RegisterWorker("cpu");
  ASSERT_TRUE(next.ok());
  // The sequence, then 64 random bits (16 hex digits).
  EXPECT_THAT(*next, ::testing::MatchesRegex("worker-000003-[0-9a-f]{16}"));
}

TEST_F(TaskSchedulerTest, ExpiredLeaseRequeuesThenFailsTheJob) {
  const std::string job = Create(Spec(2, 1));
  std::optional<v1::Task> first = LeaseNow();
  ASSERT_TRUE(first.has_value());
  clock_.Advance(kTtl - absl::Milliseconds(1));
  ASSERT_TRUE(scheduler_->Heartbeat(first->task_id(), 1).ok());
  clock_.Advance(kTtl - absl::Milliseconds(1));  // Renewed: still live.
  EXPECT_FALSE(LeaseNow().has_value());
  clock_.Advance(absl::Milliseconds(2));
  std::optional<v1::Task> second = LeaseNow();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->task_id(), first->task_id());
  EXPECT_EQ(second->lease_epoch(), 2);
  EXPECT_EQ(scheduler_->Heartbeat(first->task_id(), 1).status().code(),
            absl::StatusCode::kAborted);

  clock_.Advance(kTtl);  // Second expiry: max_attempts (2) reached.
  EXPECT_FALSE(LeaseNow().has_value());
  absl::StatusOr<v1::Job> failed = scheduler_->GetJob(job);
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed->error(), HasSubstr("lease expired"));
}

TEST_F(TaskSchedulerTest, RequeuedTasksBackOffExponentially) {
  SchedulerOptions options;
  options.lease_ttl = kTtl;
  options.max_attempts = 4;
  options.retry_backoff = absl::Seconds(1);
  options.retry_backoff_max = absl::Seconds(3);
  options.expiry_check_interval = absl::ZeroDuration();
  scheduler_.reset();
  absl::StatusOr<std::unique_ptr<TaskScheduler>> opened =
      TaskScheduler::Recover(store_.get(), &clock_, &metrics_, options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  scheduler_ = *std::move(opened);
  Create(Spec(1, 1));
  // Attempt 1 fails: 1 s backoff; attempt 2: 2 s; attempt 3: 4 s capped to 3.
  for (const absl::Duration backoff :
       {absl::Seconds(1), absl::Seconds(2), absl::Seconds(3)}) {
    std::optional<v1::Task> task = LeaseNow();
    ASSERT_TRUE(task.has_value());
    ASSERT_TRUE(
        scheduler_->Fail(task->task_id(), task->lease_epoch(), "flaky", true)
            .ok());
    clock_.Advance(backoff - absl::Milliseconds(1));
    EXPECT_FALSE(LeaseNow().has_value()) << backoff;
    clock_.Advance(absl::Milliseconds(1));
  }
  EXPECT_TRUE(LeaseNow().has_value());
}

TEST_F(TaskSchedulerTest, ChainAffinityPrefersTheWorkerWithThePreviousSae) {
  const std::string j1 = Create(Spec(2, 1));
  const std::string j2 = Create(Spec(2, 1));
  std::optional<v1::Task> a0 = LeaseNow("a");
  std::optional<v1::Task> b0 = LeaseNow("b");
  ASSERT_TRUE(a0 && b0);
  EXPECT_EQ(a0->job_id(), j1);
  EXPECT_EQ(b0->job_id(), j2);
  ASSERT_TRUE(scheduler_->Complete(a0->task_id(), 1, {}, 100).ok());
  ASSERT_TRUE(scheduler_->Complete(b0->task_id(), 1, {}, 100).ok());
  // Without affinity "b" would get the older job's next task.
  std::optional<v1::Task> b1 = LeaseNow("b");
  ASSERT_TRUE(b1.has_value());
  EXPECT_EQ(b1->job_id(), j2);
  EXPECT_EQ(b1->train().chain_index(), 1);
  std::optional<v1::Task> a1 = LeaseNow("a");
  ASSERT_TRUE(a1.has_value());
  EXPECT_EQ(a1->job_id(), j1);
}

TEST_F(TaskSchedulerTest, AWorkerGetsTheOtherHooksOfItsCheckpointFirst) {
  // Two hooks, three checkpoints, one worker: it keeps the other hook's
  // activations of the checkpoint it just trained, so it gets that hook's
  // task before the next link of its own chain.
  const std::string job = Create(Spec(3, 2));
  absl::StatusOr<std::string> worker = scheduler_->RegisterWorker("cpu");
  ASSERT_TRUE(worker.ok());
  std::vector<std::pair<int, int>> order;  // (checkpoint, layer)
  while (std::optional<v1::Task> t = LeaseNow(*worker)) {
    if (!t->has_train()) break;
    order.emplace_back(t->train().checkpoint_index(),
                       t->train().hook().layer());
    ASSERT_TRUE(
        scheduler_->Complete(t->task_id(), t->lease_epoch(), {}, 1).ok());
  }
  EXPECT_EQ(order, (std::vector<std::pair<int, int>>{
                       {0, 0}, {0, 1}, {1, 0}, {1, 1}, {2, 0}, {2, 1}}));
  // Two workers still train both chains in parallel.
  Create(Spec(2, 2));
  absl::StatusOr<std::string> other = scheduler_->RegisterWorker("cpu");
  ASSERT_TRUE(other.ok());
  std::optional<v1::Task> a = LeaseNow(*worker);
  std::optional<v1::Task> b = LeaseNow(*other);
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->train().hook().layer(), b->train().hook().layer());
}

TEST_F(TaskSchedulerTest, RetryableFailureRequeuesFatalFailsTheJob) {
  const std::string job = Create(Spec(1, 2));
  std::optional<v1::Task> a = LeaseNow();
  std::optional<v1::Task> b = LeaseNow();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(scheduler_->Fail(a->task_id(), 1, "oom", true).ok());
  std::optional<v1::Task> again = LeaseNow();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->task_id(), a->task_id());
  EXPECT_EQ(again->lease_epoch(), 2);
  ASSERT_TRUE(scheduler_->Fail(a->task_id(), 2, "bad file", false).ok());
  absl::StatusOr<v1::Job> failed = scheduler_->GetJob(job);
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed->error(), HasSubstr("bad file"));
  // The other chain's worker is told to stop and cannot complete.
  EXPECT_EQ(scheduler_->Heartbeat(b->task_id(), 1).value(), true);
  EXPECT_EQ(
      scheduler_->Complete(b->task_id(), 1, storage::WriteBatch(), 1).code(),
      absl::StatusCode::kAborted);
}

TEST_F(TaskSchedulerTest, RecoveryKeepsEpochsAndGivesAFreshLease) {
  const std::string job = Create(Spec(2, 1));
  std::optional<v1::Task> t0 = LeaseNow();
  ASSERT_TRUE(t0.has_value());
  clock_.Advance(kTtl - absl::Seconds(1));
  scheduler_.reset();

  scheduler_ = Open();
  ASSERT_NE(scheduler_, nullptr);
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_RUNNING);
  clock_.Advance(absl::Seconds(5));  // Past the old deadline, not the new one.
  EXPECT_FALSE(scheduler_->Heartbeat(t0->task_id(), 1).value());
  ASSERT_TRUE(
      scheduler_->Complete(t0->task_id(), 1, storage::WriteBatch(), 7).ok());
  std::optional<v1::Task> t1 = LeaseNow();
  ASSERT_TRUE(t1.has_value());
  EXPECT_EQ(t1->train().chain_index(), 1);
  // New jobs continue the id sequence.
  EXPECT_EQ(Create(Spec(1, 1)), "job-000002");
}

TEST_F(TaskSchedulerTest, CompletingEveryTaskSucceedsTheJob) {
  const std::string job = Create(Spec(1, 2));
  for (int i = 0; i < 2; ++i) {
    std::optional<v1::Task> t = LeaseNow();
    ASSERT_TRUE(t.has_value());
    ASSERT_TRUE(
        scheduler_->Complete(t->task_id(), 1, storage::WriteBatch(), 50).ok());
  }
  absl::StatusOr<v1::Job> done = scheduler_->GetJob(job);
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->progress().tasks_done(), 2);
  EXPECT_EQ(done->progress().tasks_total(), 2);
  EXPECT_EQ(done->progress().tokens_trained(), 100);
}

TEST_F(TaskSchedulerTest, LongPollWakesWhenAJobArrives) {
  std::optional<v1::Task> got;
  std::thread poller([&] {
    auto t = scheduler_->Lease("w", absl::Seconds(20), [] { return false; });
    if (t.ok()) got = *t;
  });
  Create(Spec(1, 1));
  poller.join();  // Returns long before 20 s: woken by the new job.
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->train().chain_index(), 0);
}

TEST_F(TaskSchedulerTest, ShutdownEndsLongPolls) {
  std::optional<v1::Task> got;
  std::thread poller([&] {
    auto t = scheduler_->Lease("w", absl::Seconds(20), [] { return false; });
    if (t.ok()) got = *t;
  });
  scheduler_->Shutdown();
  poller.join();
  EXPECT_FALSE(got.has_value());
}

TEST_F(TaskSchedulerTest, ListJobsPagesOldestFirst) {
  for (int i = 0; i < 5; ++i) Create(Spec(1, 1));
  auto page = scheduler_->ListJobs("", 2);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 2u);
  EXPECT_EQ(page->jobs[0].job_id(), "job-000001");
  EXPECT_EQ(page->next_after_job_id, "job-000002");
  page = scheduler_->ListJobs("job-000004", 2);
  ASSERT_EQ(page->jobs.size(), 1u);
  EXPECT_EQ(page->jobs[0].job_id(), "job-000005");
  EXPECT_EQ(page->next_after_job_id, "");
  EXPECT_EQ(scheduler_->ListJobs("garbage", 2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TaskSchedulerTest, IdempotentCreate) {
  auto a = scheduler_->CreateJob(Spec(1, 1), "req-1", "fp-a");
  auto b = scheduler_->CreateJob(Spec(1, 1), "req-1", "fp-a");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(a->created);
  EXPECT_FALSE(b->created);
  EXPECT_EQ(a->job.job_id(), b->job.job_id());
  EXPECT_EQ(scheduler_->CreateJob(Spec(1, 1), "req-1", "fp-b").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(scheduler_->FindByRequestId("req-1", "fp-a")->value().job_id(),
            a->job.job_id());
  EXPECT_FALSE(scheduler_->FindByRequestId("req-2", "fp-a")->has_value());
}

TEST_F(TaskSchedulerTest, CancelStopsLeasingAndTellsTheRunningWorker) {
  const std::string job = Create(Spec(2, 2));
  std::optional<v1::Task> t0 = LeaseNow();
  ASSERT_TRUE(t0.has_value());

  absl::StatusOr<v1::Job> cancelled = scheduler_->CancelJob(job);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_CANCELLED);
  // Nothing more is leased; the running worker is told to stop.
  EXPECT_FALSE(LeaseNow().has_value());
  EXPECT_TRUE(scheduler_->Heartbeat(t0->task_id(), t0->lease_epoch()).value());
  // Its late result is refused and changes nothing.
  absl::Status late = scheduler_->Complete(t0->task_id(), t0->lease_epoch(),
                                           storage::WriteBatch(), 99);
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(late.message(), HasSubstr("cancelled"));
  EXPECT_EQ(scheduler_->GetJob(job)->progress().tasks_done(), 0);
  EXPECT_EQ(scheduler_->GetJob(job)->progress().tokens_trained(), 0);
}

TEST_F(TaskSchedulerTest, CancelIsIdempotentAndRefusedForEndedJobs) {
  const std::string queued = Create(Spec(1, 1));
  absl::StatusOr<v1::Job> first = scheduler_->CancelJob(queued);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<v1::Job> again = scheduler_->CancelJob(queued);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(again->update_time_ms(), first->update_time_ms());

  const std::string done = Create(Spec(1, 1));
  std::optional<v1::Task> t = LeaseNow();
  ASSERT_TRUE(t.has_value());
  ASSERT_TRUE(
      scheduler_->Complete(t->task_id(), 1, storage::WriteBatch(), 5).ok());
  absl::StatusOr<v1::Job> refused = scheduler_->CancelJob(done);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("JOB_STATE_SUCCEEDED"));

  absl::StatusOr<v1::Job> unknown = scheduler_->CancelJob("job-000099");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("job-000099"));
}

TEST_F(TaskSchedulerTest, CancellationSurvivesRestart) {
  const std::string job = Create(Spec(2, 1));
  std::optional<v1::Task> t0 = LeaseNow();
  ASSERT_TRUE(t0.has_value());
  ASSERT_TRUE(scheduler_->CancelJob(job).ok());
  scheduler_.reset();

  scheduler_ = Open();
  ASSERT_NE(scheduler_, nullptr);
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(LeaseNow().has_value());
  EXPECT_TRUE(scheduler_->Heartbeat(t0->task_id(), t0->lease_epoch()).value());
  EXPECT_EQ(scheduler_->CancelJob(job)->state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(TaskSchedulerTest, WaitForJobChangeSeesHeartbeatProgressAndCancel) {
  const std::string job = Create(Spec(2, 1));
  auto never = [] { return false; };
  absl::StatusOr<TaskScheduler::JobWatch> w =
      scheduler_->WaitForJobChange(job, -1, absl::Seconds(20), never);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_FALSE(w->loss.has_value());
  // Unchanged: returns at the timeout with the same version.
  absl::StatusOr<TaskScheduler::JobWatch> same = scheduler_->WaitForJobChange(
      job, w->version, absl::Milliseconds(10), never);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->version, w->version);

  std::optional<v1::Task> t0 = LeaseNow();
  ASSERT_TRUE(t0.has_value());
  ASSERT_FALSE(
      scheduler_->Heartbeat(t0->task_id(), t0->lease_epoch(), 1000, 0.5)
          .value());
  w = scheduler_->WaitForJobChange(job, w->version, absl::Seconds(20), never);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(w->running_tokens, 1000);
  EXPECT_EQ(w->loss, 0.5);

  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(scheduler_->CancelJob(job).ok());
  });
  w = scheduler_->WaitForJobChange(job, w->version, absl::Seconds(20), never);
  canceller.join();
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(w->running_tokens, 0);

  EXPECT_EQ(
      scheduler_->WaitForJobChange("job-000042", 0, absl::Seconds(1), never)
          .status()
          .code(),
      absl::StatusCode::kNotFound);
}

TEST_F(TaskSchedulerTest, ShutdownEndsWaitForJobChange) {
  const std::string job = Create(Spec(1, 1));
  absl::StatusOr<TaskScheduler::JobWatch> first = scheduler_->WaitForJobChange(
      job, -1, absl::Seconds(1), [] { return false; });
  ASSERT_TRUE(first.ok());
  absl::Status status;
  std::thread watcher([&] {
    status = scheduler_
                 ->WaitForJobChange(job, first->version, absl::Seconds(60),
                                    [] { return false; })
                 .status();
  });
  absl::SleepFor(absl::Milliseconds(50));
  scheduler_->Shutdown();
  watcher.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
}

v1::JobSpec AnalysedSpec(
    int num_checkpoints,
    v1::Schedule::Direction direction = v1::Schedule::FORWARD) {
  v1::JobSpec spec = Spec(num_checkpoints, 1, 0, direction);
  spec.mutable_analysis()->set_analysis_tokens(1024);
  spec.mutable_analysis()->set_top_k(5);
  return spec;
}

// A validator that appends (step, path) to the spec as given.
absl::StatusOr<v1::JobSpec> PlaceCheckpoint(const v1::JobSpec& spec,
                                            int64_t step,
                                            const std::string& path) {
  v1::JobSpec out = spec;
  v1::Checkpoint* c = out.mutable_model()->add_checkpoints();
  c->set_step(step);
  c->set_path(path);
  return out;
}

// Leases and completes one task, returning it.
v1::Task RunOne(TaskScheduler& scheduler) {
  auto task = scheduler.Lease("w", absl::ZeroDuration(), [] { return false; });
  EXPECT_TRUE(task.ok() && task->has_value());
  EXPECT_TRUE(scheduler
                  .Complete((*task)->task_id(), (*task)->lease_epoch(),
                            storage::WriteBatch(), 0)
                  .ok());
  return **task;
}

TEST_F(TaskSchedulerTest, AnalysisRunsAfterTheChainFinalCheckpointFirst) {
  const std::string job = Create(AnalysedSpec(3));
  EXPECT_EQ(scheduler_->GetJob(job)->progress().analysis_tasks_total(), 4);
  for (int c = 0; c < 3; ++c) EXPECT_TRUE(RunOne(*scheduler_).has_train());
  // The chain is trained: only the final checkpoint's pass is runnable.
  auto final_pass = LeaseNow();
  ASSERT_TRUE(final_pass.has_value());
  ASSERT_TRUE(final_pass->has_analyse());
  EXPECT_EQ(final_pass->analyse().sae().step(), 200);
  EXPECT_EQ(final_pass->analyse().final_sae().step(), 200);
  EXPECT_FALSE(LeaseNow("other").has_value());
  auto info =
      scheduler_->CheckLease(final_pass->task_id(), final_pass->lease_epoch());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->kind, TASK_KIND_ANALYSE);
  EXPECT_TRUE(info->final_analysis);
  EXPECT_EQ(info->top_k, 5);
  ASSERT_TRUE(scheduler_
                  ->Complete(final_pass->task_id(), final_pass->lease_epoch(),
                             storage::WriteBatch(), 0)
                  .ok());
  // Then the others, at once and on any worker, with the final as reference.
  auto a = LeaseNow("w1");
  auto b = LeaseNow("w2");
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_EQ(a->analyse().final_sae().step(), 200);
  EXPECT_NE(a->analyse().sae().step(), b->analyse().sae().step());
  EXPECT_FALSE(scheduler_->TakeSummary(absl::ZeroDuration()).has_value());
  for (const v1::Task& t : {*a, *b}) {
    ASSERT_TRUE(
        scheduler_
            ->Complete(t.task_id(), t.lease_epoch(), storage::WriteBatch(), 0)
            .ok());
  }
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_RUNNING);
  // The summary is the coordinator's, never a worker's.
  EXPECT_FALSE(LeaseNow().has_value());
  std::optional<SummaryWork> summary =
      scheduler_->TakeSummary(absl::ZeroDuration());
  ASSERT_TRUE(summary.has_value());
  EXPECT_EQ(summary->job_id, job);
  EXPECT_EQ(summary->steps, (std::vector<int64_t>{0, 100, 200}));
  // Taken once only.
  EXPECT_FALSE(scheduler_->TakeSummary(absl::ZeroDuration()).has_value());
  ASSERT_TRUE(
      scheduler_->CompleteSummary(summary->task_id, storage::WriteBatch())
          .ok());
  const v1::Job done = *scheduler_->GetJob(job);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().analysis_tasks_done(), 4);
  EXPECT_EQ(done.progress().tasks_done(), 3);
}

TEST_F(TaskSchedulerTest, BackwardChainAnalysesTheLatestStepFirst) {
  Create(AnalysedSpec(3, v1::Schedule::BACKWARD));
  for (int c = 0; c < 3; ++c) RunOne(*scheduler_);
  auto final_pass = LeaseNow();
  ASSERT_TRUE(final_pass.has_value() && final_pass->has_analyse());
  EXPECT_EQ(final_pass->analyse().sae().step(), 200);
}

TEST_F(TaskSchedulerTest, SummaryAndAnalysisTasksSurviveARestart) {
  const std::string job = Create(AnalysedSpec(2));
  for (int c = 0; c < 4; ++c) RunOne(*scheduler_);  // 2 train + 2 analyse.
  std::optional<SummaryWork> taken =
      scheduler_->TakeSummary(absl::ZeroDuration());
  ASSERT_TRUE(taken.has_value());
  // The coordinator dies while summarising: the summary is runnable again.
  scheduler_.reset();
  scheduler_ = Open();
  std::optional<SummaryWork> again =
      scheduler_->TakeSummary(absl::ZeroDuration());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->task_id, taken->task_id);
  ASSERT_TRUE(
      scheduler_->CompleteSummary(again->task_id, storage::WriteBatch()).ok());
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(TaskSchedulerTest, FailedSummaryFailsTheJobWhenNotRetryable) {
  const std::string job = Create(AnalysedSpec(2));
  for (int c = 0; c < 4; ++c) RunOne(*scheduler_);
  std::optional<SummaryWork> taken =
      scheduler_->TakeSummary(absl::ZeroDuration());
  ASSERT_TRUE(taken.has_value());
  ASSERT_TRUE(
      scheduler_->FailSummary(taken->task_id, "decoder is corrupt", false)
          .ok());
  const v1::Job failed = *scheduler_->GetJob(job);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("decoder is corrupt"));
  EXPECT_TRUE(absl::IsAborted(
      scheduler_->CompleteSummary(taken->task_id, storage::WriteBatch())));
}

// A following job: checkpoints taken through the scheduler (validation
// stubbed), a provisional round's summary still being computed when the
// job closes is refused, and the final round's summary completes the job.
TEST_F(TaskSchedulerTest, AFollowingJobsStaleRoundSummaryIsRefused) {
  v1::JobSpec spec = AnalysedSpec(0);
  spec.mutable_model()->mutable_follow()->set_dir("/run");
  const std::string job = Create(spec);
  const TaskScheduler::CheckpointValidator place = PlaceCheckpoint;
  for (int64_t step : {0, 10}) {
    auto added = scheduler_->AddCheckpoint(job, step, "/ckpt", 1, 1, place);
    ASSERT_TRUE(added.ok()) << added.status();
    EXPECT_TRUE(added->created);
  }
  auto again = scheduler_->AddCheckpoint(job, 10, "/ckpt", 1, 1, place);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  // A refused checkpoint is recorded on the job.
  auto refused = scheduler_->AddCheckpoint(
      job, 20, "/bad", 1, 1,
      [](const v1::JobSpec&, int64_t, const std::string&) {
        return absl::StatusOr<v1::JobSpec>(
            absl::InvalidArgumentError("checkpoint.path: broken"));
      });
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_EQ(scheduler_->GetJob(job)->follow().refused_size(), 1);
  for (int c = 0; c < 2; ++c) EXPECT_TRUE(RunOne(*scheduler_).has_train());
  ASSERT_TRUE(scheduler_->RefreshAnalysis(job).ok());
  for (int c = 0; c < 2; ++c) EXPECT_TRUE(RunOne(*scheduler_).has_analyse());
  std::optional<SummaryWork> stale =
      scheduler_->TakeSummary(absl::ZeroDuration());
  ASSERT_TRUE(stale.has_value());
  EXPECT_TRUE(stale->provisional);
  EXPECT_EQ(stale->steps, (std::vector<int64_t>{0, 10}));
  // Closed while the provisional summary is computed: the final round.
  auto closed = scheduler_->CloseJob(job, "closed by request");
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_TRUE(absl::IsAborted(
      scheduler_->CompleteSummary(stale->task_id, storage::WriteBatch())));
  EXPECT_EQ(scheduler_->GetJob(job)->progress().analysis_tasks_done(), 0);
  for (int c = 0; c < 2; ++c) EXPECT_TRUE(RunOne(*scheduler_).has_analyse());
  std::optional<SummaryWork> final_summary =
      scheduler_->TakeSummary(absl::ZeroDuration());
  ASSERT_TRUE(final_summary.has_value());
  EXPECT_FALSE(final_summary->provisional);
  ASSERT_TRUE(
      scheduler_->CompleteSummary(final_summary->task_id, storage::WriteBatch())
          .ok());
  EXPECT_EQ(scheduler_->GetJob(job)->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(TaskSchedulerTest, WorkersGetOnlyJobsThatFitTheirMemory) {
  v1::JobSpec big = Spec(1, 1);
  big.set_min_worker_memory_bytes(8'000'000'000);
  const std::string job = Create(big);
  auto small = scheduler_->RegisterWorker("cpu", 4'000'000'000);
  auto large = scheduler_->RegisterWorker("cpu", 16'000'000'000);
  auto unknown = scheduler_->RegisterWorker("cpu", 0);
  ASSERT_TRUE(small.ok() && large.ok() && unknown.ok());
  EXPECT_FALSE(LeaseNow(*small).has_value());
  auto task = LeaseNow(*large);
  ASSERT_TRUE(task.has_value());
  EXPECT_EQ(task->job_id(), job);
  // A worker that reports no memory may take any job.
  Create(big);
  EXPECT_TRUE(LeaseNow(*unknown).has_value());
}

// A store whose writes can be held back: while held, every Write waits
// (counted in `waiting`) until released, so a test can act while a commit
// is in flight. Thread-safe.
class HoldingStore final : public storage::KvStore {
 public:
  absl::StatusOr<std::string> Get(storage::Column column,
                                  std::string_view key) const override {
    return base_->Get(column, key);
  }
  absl::Status Write(const storage::WriteBatch& batch,
                     const storage::WriteOptions& options) override {
    {
      absl::MutexLock lock(&mu_);
      ++waiting_;
      mu_.Await(absl::Condition(
          +[](bool* held) { return !*held; }, &held_));
      --waiting_;
    }
    return base_->Write(batch, options);
  }
  absl::Status Scan(storage::Column column, std::string_view prefix,
                    std::string_view start,
                    storage::ScanVisitor visit) const override {
    return base_->Scan(column, prefix, start, visit);
  }
  absl::StatusOr<uint64_t> LiveDataBytes() const override {
    return base_->LiveDataBytes();
  }
  absl::Status Checkpoint(const std::string& dir) override {
    return base_->Checkpoint(dir);
  }

  void Hold() {
    absl::MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    held_ = false;
  }
  // Waits (up to 10 s) until `n` writes are held. Returns whether they are.
  bool AwaitWaiting(int n) {
    absl::MutexLock lock(&mu_);
    want_ = n;
    return mu_.AwaitWithTimeout(absl::Condition(this, &HoldingStore::Enough),
                                absl::Seconds(10));
  }

 private:
  bool Enough() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return waiting_ >= want_;
  }

  std::unique_ptr<storage::KvStore> base_ = storage::NewInMemoryStore();
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int want_ ABSL_GUARDED_BY(mu_) = 0;
};

class TaskSchedulerCommitTest : public testing::Test {
 protected:
  void SetUp() override {
    SchedulerOptions options;
    options.lease_ttl = kTtl;
    options.expiry_check_interval = absl::ZeroDuration();
    auto s = TaskScheduler::Recover(&store_, &clock_, &metrics_, options);
    ASSERT_TRUE(s.ok()) << s.status();
    scheduler_ = *std::move(s);
    auto job = scheduler_->CreateJob(Spec(2, 2), "", "");
    ASSERT_TRUE(job.ok()) << job.status();
    job_ = job->job.job_id();
    for (int i = 0; i < 2; ++i) {
      auto task =
          scheduler_->Lease("w", absl::ZeroDuration(), [] { return false; });
      ASSERT_TRUE(task.ok() && task->has_value());
      tasks_.push_back(**task);
    }
  }

  HoldingStore store_;
  FakeClock clock_;
  CoordinatorMetrics metrics_;
  std::unique_ptr<TaskScheduler> scheduler_;
  std::string job_;
  std::vector<v1::Task> tasks_;
};

// Heartbeats, lease checks and queries are answered while a completion is
// being written; the completion becomes visible only once written.
TEST_F(TaskSchedulerCommitTest, CallsGoOnWhileACompletionIsWritten) {
  const v1::Task& done = tasks_[0];
  const v1::Task& other = tasks_[1];
  store_.Hold();
  absl::Status completed;
  std::thread completer([&] {
    storage::WriteBatch results;
    results.Put(storage::Column::kMeta, "result", "weights");
    completed = scheduler_->Complete(done.task_id(), done.lease_epoch(),
                                     std::move(results), 100);
  });
  ASSERT_TRUE(store_.AwaitWaiting(1));  // The results' write.
  EXPECT_EQ(
      scheduler_->Heartbeat(other.task_id(), other.lease_epoch(), 5).value(),
      false);
  EXPECT_TRUE(
      scheduler_->CheckLease(other.task_id(), other.lease_epoch()).ok());
  EXPECT_EQ(scheduler_->GetJob(job_)->progress().tasks_done(), 0);
  // A second completion of the same lease is told to come back.
  EXPECT_EQ(scheduler_
                ->Complete(done.task_id(), done.lease_epoch(),
                           storage::WriteBatch(), 100)
                .code(),
            absl::StatusCode::kUnavailable);
  // The lease does not expire while its completion is written (the other
  // one is renewed, not to be expired meanwhile).
  clock_.Advance(kTtl - absl::Milliseconds(1));
  ASSERT_TRUE(scheduler_->Heartbeat(other.task_id(), other.lease_epoch()).ok());
  clock_.Advance(absl::Milliseconds(2));
  scheduler_->ExpireLeases();
  EXPECT_TRUE(scheduler_->CheckLease(done.task_id(), done.lease_epoch()).ok());
  EXPECT_EQ(scheduler_->GetJob(job_)->state(), v1::JOB_STATE_RUNNING);
  store_.Release();
  completer.join();
  ASSERT_TRUE(completed.ok()) << completed;
  EXPECT_EQ(scheduler_->GetJob(job_)->progress().tasks_done(), 1);
  EXPECT_EQ(store_.Get(storage::Column::kMeta, "result").value(), "weights");
}

// A transition is durable before it is visible: while a cancellation is
// written the running worker still hears "go on", and then "stop".
TEST_F(TaskSchedulerCommitTest, ACancellationIsVisibleOnlyOnceWritten) {
  const v1::Task& running = tasks_[0];
  store_.Hold();
  absl::StatusOr<v1::Job> cancelled;
  std::thread canceller([&] { cancelled = scheduler_->CancelJob(job_); });
  ASSERT_TRUE(store_.AwaitWaiting(1));
  EXPECT_EQ(scheduler_->GetJob(job_)->state(), v1::JOB_STATE_RUNNING);
  EXPECT_FALSE(
      scheduler_->Heartbeat(running.task_id(), running.lease_epoch()).value());
  store_.Release();
  canceller.join();
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(scheduler_->GetJob(job_)->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(
      scheduler_->Heartbeat(running.task_id(), running.lease_epoch()).value());
}

// Adds that arrive while another add of the same job is being written are
// checked again once it is: one of them takes a step, the same step and path
// again is a duplicate, the same step from another path is ALREADY_EXISTS,
// and an earlier step is late. Nothing is taken twice or lost.
TEST_F(TaskSchedulerCommitTest, AddsThatWaitForAnotherAddAreCheckedAgain) {
  v1::JobSpec spec = Spec(1, 1);
  spec.mutable_model()->mutable_follow()->set_dir("/run");
  auto created = scheduler_->CreateJob(spec, "", "");
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string job = created->job.job_id();
  const TaskScheduler::CheckpointValidator place = PlaceCheckpoint;
  store_.Hold();
  absl::StatusOr<TaskScheduler::AddedCheckpoint> first =
      absl::UnknownError("not run");
  std::thread taker(
      [&] { first = scheduler_->AddCheckpoint(job, 200, "/a", 1, 1, place); });
  ASSERT_TRUE(store_.AwaitWaiting(1));  // The first add is being written.
  struct Racer {
    int64_t step;
    std::string path;
    absl::StatusOr<TaskScheduler::AddedCheckpoint> result =
        absl::UnknownError("not run");
  };
  std::vector<Racer> racers = {
      {200, "/a"}, {200, "/a"}, {200, "/b"}, {150, "/c"}, {300, "/d"}};
  std::vector<std::thread> threads;
  for (Racer& racer : racers) {
    threads.emplace_back([&, r = &racer] {
      r->result = scheduler_->AddCheckpoint(job, r->step, r->path, 1, 1, place);
    });
  }
  // Let them check and plan against the state before the first add.
  absl::SleepFor(absl::Milliseconds(300));
  store_.Release();
  taker.join();
  for (std::thread& t : threads) t.join();

  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created);
  for (int i : {0, 1}) {
    ASSERT_TRUE(racers[i].result.ok()) << racers[i].result.status();
    EXPECT_FALSE(racers[i].result->created);
  }
  EXPECT_TRUE(absl::IsAlreadyExists(racers[2].result.status()))
      << racers[2].result.status();
  EXPECT_TRUE(absl::IsFailedPrecondition(racers[3].result.status()))
      << racers[3].result.status();
  EXPECT_THAT(racers[3].result.status().message(),
              HasSubstr("arrived after step"));
  ASSERT_TRUE(racers[4].result.ok()) << racers[4].result.status();
  EXPECT_TRUE(racers[4].result->created);

  absl::StatusOr<v1::Job> after = scheduler_->GetJob(job);
  ASSERT_TRUE(after.ok()) << after.status();
  std::vector<std::pair<int64_t, std::string>> chain;
  for (const v1::Checkpoint& c : after->spec().model().checkpoints()) {
    chain.emplace_back(c.step(), c.path());
  }
  EXPECT_EQ(chain, (std::vector<std::pair<int64_t, std::string>>{
                       {0, "/ckpt"}, {200, "/a"}, {300, "/d"}}));
  EXPECT_EQ(after->follow().refused_size(), 2);
}

}  // namespace
}  // namespace saetrack::server
