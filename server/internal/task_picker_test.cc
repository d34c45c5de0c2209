#include "server/internal/task_picker.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "server/internal/job_state_machine.h"

// Pure tests of the picking policy over a JobStateMachine driven by hand.
namespace saetrack::server {
namespace {

constexpr int64_t kNow = 1'700'000'000'000;

v1::JobSpec Spec(int num_checkpoints, int num_hooks, int priority = 0) {
  v1::JobSpec spec;
  for (int i = 0; i < num_checkpoints; ++i) {
    v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
    c->set_step(i * 100);
    c->set_path("/ckpt");
  }
  for (int h = 0; h < num_hooks; ++h) spec.add_hooks()->set_layer(h);
  spec.mutable_sae()->set_d_sae(16);
  spec.set_priority(priority);
  return spec;
}

bool Never(const TaskRecord&) { return false; }

class TaskPickerTest : public testing::Test {
 protected:
  std::string Create(const v1::JobSpec& spec) {
    RecordChanges changes = state_.PlanCreateJob(spec, next_seq_++, "", kNow);
    state_.Apply(changes);
    return changes.jobs.front().job_id();
  }

  // Picks for `worker_id` and grants it as the scheduler would (recording
  // the worker's last grant). Empty when nothing is picked.
  std::string PickAndGrant(const std::string& worker_id) {
    WorkerInfo& info = workers_[worker_id];
    const TaskRecord* task = PickTask(state_, worker_id, info, kNow, Never);
    if (task == nullptr) return "";
    const std::string id = task->task_id();
    state_.Apply(state_.PlanGrant(*task, worker_id, kNow));
    info.last_job_id = task->job_id();
    info.last_checkpoint_index = task->checkpoint_index();
    info.last_kind = task->kind();
    return id;
  }

  void Complete(const std::string& task_id) {
    state_.Apply(state_.PlanComplete(*state_.FindTask(task_id), 1, kNow));
  }

  JobStateMachine state_{JobStateMachine::Options()};
  std::map<std::string, WorkerInfo> workers_;
  int64_t next_seq_ = 1;
};

TEST_F(TaskPickerTest, PriorityThenAgeThenHookIndex) {
  Create(Spec(1, 1, /*priority=*/0));  // job-000001
  Create(Spec(1, 2, /*priority=*/5));  // job-000002
  Create(Spec(1, 1, /*priority=*/5));  // job-000003
  std::vector<std::string> order;
  for (int i = 0; i < 5; ++i) order.push_back(PickAndGrant(""));
  EXPECT_EQ(order, (std::vector<std::string>{
                       "job-000002.l0.c0", "job-000002.l1.c0",
                       "job-000003.l0.c0", "job-000001.l0.c0", ""}));
}

TEST_F(TaskPickerTest, DeviceAndMemoryMustFit) {
  v1::JobSpec cuda = Spec(1, 1);
  cuda.set_device("cuda");
  const std::string cuda_job = Create(cuda);
  v1::JobSpec big = Spec(1, 1);
  big.set_min_worker_memory_bytes(8'000'000'000);
  const std::string big_job = Create(big);

  WorkerInfo small_cpu{"cpu", 4'000'000'000};
  EXPECT_EQ(PickTask(state_, "a", small_cpu, kNow, Never), nullptr);
  WorkerInfo large_cpu{"cpu", 16'000'000'000};
  const TaskRecord* task = PickTask(state_, "b", large_cpu, kNow, Never);
  ASSERT_NE(task, nullptr);
  EXPECT_EQ(task->job_id(), big_job);
  WorkerInfo small_gpu{"cuda", 4'000'000'000};
  task = PickTask(state_, "c", small_gpu, kNow, Never);
  ASSERT_NE(task, nullptr);
  EXPECT_EQ(task->job_id(), cuda_job);
  // Unknown device and memory: any job, the oldest first.
  task = PickTask(state_, "d", WorkerInfo{}, kNow, Never);
  ASSERT_NE(task, nullptr);
  EXPECT_EQ(task->job_id(), cuda_job);
}

TEST_F(TaskPickerTest, ChainAffinityWithinAPriorityLevel) {
  const std::string j1 = Create(Spec(2, 1));
  const std::string j2 = Create(Spec(2, 1));
  const std::string a0 = PickAndGrant("a");
  const std::string b0 = PickAndGrant("b");
  EXPECT_EQ(a0, "job-000001.l0.c0");
  EXPECT_EQ(b0, "job-000002.l0.c0");
  Complete(a0);
  Complete(b0);
  // "b" trained job 2's first link: it gets the next one although job 1 is
  // older.
  const TaskRecord* next = PickTask(state_, "b", WorkerInfo{}, kNow, Never);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->task_id(), "job-000002.l0.c1");
  // A stranger gets the oldest job's.
  next = PickTask(state_, "c", WorkerInfo{}, kNow, Never);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->task_id(), "job-000001.l0.c1");
  // Affinity never jumps a priority level.
  Create(Spec(1, 1, /*priority=*/9));
  next = PickTask(state_, "b", WorkerInfo{}, kNow, Never);
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->task_id(), "job-000003.l0.c0");
}

TEST_F(TaskPickerTest, TheOtherHooksOfTheLastCheckpointFirst) {
  Create(Spec(3, 2));
  std::vector<std::string> order;
  for (std::string id = PickAndGrant("w"); !id.empty();
       id = PickAndGrant("w")) {
    order.push_back(id);
    Complete(id);
  }
  // Checkpoint by checkpoint: both hooks of one before the next link.
  EXPECT_EQ(order,
            (std::vector<std::string>{"job-000001.l0.c0", "job-000001.l1.c0",
                                      "job-000001.l0.c1", "job-000001.l1.c1",
                                      "job-000001.l0.c2", "job-000001.l1.c2"}));
}

TEST_F(TaskPickerTest, BusyAndBackedOffTasksAreNotCandidates) {
  Create(Spec(1, 2));
  const auto busy = [](const TaskRecord& t) {
    return t.task_id() == "job-000001.l0.c0";
  };
  const TaskRecord* task = PickTask(state_, "w", WorkerInfo{}, kNow, busy);
  ASSERT_NE(task, nullptr);
  EXPECT_EQ(task->task_id(), "job-000001.l1.c0");
  // A requeued task waits out its backoff.
  JobStateMachine::Options options;
  options.retry_backoff = absl::Seconds(2);
  JobStateMachine state(options);
  RecordChanges created = state.PlanCreateJob(Spec(1, 1), 1, "", kNow);
  state.Apply(created);
  const TaskRecord* only = PickTask(state, "w", WorkerInfo{}, kNow, Never);
  ASSERT_NE(only, nullptr);
  state.Apply(state.PlanGrant(*only, "w", kNow));
  bool requeued = false;
  state.Apply(state.PlanFail(*state.FindTask("job-000001.l0.c0"), "flaky", true,
                             kNow, &requeued));
  ASSERT_TRUE(requeued);
  EXPECT_EQ(PickTask(state, "w", WorkerInfo{}, kNow + 1999, Never), nullptr);
  EXPECT_NE(PickTask(state, "w", WorkerInfo{}, kNow + 2000, Never), nullptr);
}

}  // namespace
}  // namespace saetrack::server
