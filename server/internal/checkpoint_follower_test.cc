// The follower over a real scheduler (in-memory store), the job validator
// and checkpoint directories written in a temp dir: what it takes, what it
// refuses, and that a refused checkpoint is offered again only once it has
// been written anew.
#include "server/internal/checkpoint_follower.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/clock.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_validator.h"
#include "server/internal/task_scheduler.h"
#include "server/internal/test_fixtures.h"
#include "storage/kv_store.h"

namespace saetrack::server {
namespace {

using ::saetrack::server::testing::MakeSpec;
using ::saetrack::server::testing::TempDir;
using ::saetrack::server::testing::WriteCheckpoint;
using ::testing::HasSubstr;

// A safetensors file whose header promises 4096 bytes of data it lacks: the
// scanner finds it whole (its length matches its data_offsets) but the
// validator refuses it (the shape needs more).
std::string ShapeDisagreesWithOffsets() {
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[1024],"data_offsets":[0,64]}})";
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(header.size() >> (8 * i));
  }
  return out + header + std::string(64, '\0');
}

class CheckpointFollowerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto scheduler =
        TaskScheduler::Recover(store_.get(), &clock_, &metrics_, {});
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    scheduler_ = *std::move(scheduler);
    run_ = dir_.path() + "/run";
    std::filesystem::create_directories(run_);
    v1::JobSpec spec = MakeSpec(dir_.path(), {0});
    spec.mutable_model()->clear_checkpoints();
    spec.mutable_model()->mutable_follow()->set_dir(run_);
    absl::StatusOr<v1::JobSpec> validated = validator_.Validate(spec);
    ASSERT_TRUE(validated.ok()) << validated.status();
    auto created = scheduler_->CreateJob(*validated, "", "");
    ASSERT_TRUE(created.ok()) << created.status();
    job_id_ = created->job.job_id();
    follower_ = std::make_unique<CheckpointFollower>(
        scheduler_.get(), &validator_,
        format::DataRoots(std::vector<std::string>{dir_.path()}));
  }

  // Two polls a poll interval (10 s) apart from `*at`, which moves on: a
  // checkpoint that held still between them is complete.
  void PollTwice(absl::Time* at) {
    for (int i = 0; i < 2; ++i) {
      *at += absl::Seconds(10);
      follower_->PollOnce(*at);
    }
  }

  v1::Job Job() { return *scheduler_->GetJob(job_id_); }

  TempDir dir_;
  std::string run_;
  std::unique_ptr<storage::KvStore> store_ = storage::NewInMemoryStore();
  FakeClock clock_;
  CoordinatorMetrics metrics_;
  JobValidator validator_{std::vector<std::string>{dir_.path()}};
  std::unique_ptr<TaskScheduler> scheduler_;
  std::string job_id_;
  std::unique_ptr<CheckpointFollower> follower_;
};

TEST_F(CheckpointFollowerTest,
       ARefusedCheckpointIsOfferedAgainOnlyOnceRewritten) {
  WriteCheckpoint(run_ + "/step-0");
  WriteCheckpoint(run_ + "/step-5");
  std::ofstream(run_ + "/step-5/model.safetensors",
                std::ios::binary | std::ios::trunc)
      << ShapeDisagreesWithOffsets();
  absl::Time at = absl::Now();
  PollTwice(&at);
  v1::Job job = Job();
  ASSERT_EQ(job.follow().checkpoints_size(), 1) << job.DebugString();
  EXPECT_EQ(job.follow().checkpoints(0).step(), 0);
  ASSERT_EQ(job.follow().refused_size(), 1) << job.DebugString();
  EXPECT_EQ(job.follow().refused(0).step(), 5);
  EXPECT_THAT(job.follow().refused(0).reason(), HasSubstr("checkpoint.path"));
  const int64_t refused_at = job.follow().refused(0).time_ms();

  // Unchanged, it is not offered again, including at the periodic re-check
  // of refused steps (a minute on).
  clock_.Advance(absl::Seconds(90));
  for (int i = 0; i < 10; ++i) PollTwice(&at);
  job = Job();
  ASSERT_EQ(job.follow().refused_size(), 1);
  EXPECT_EQ(job.follow().refused(0).time_ms(), refused_at);
  EXPECT_EQ(job.follow().checkpoints_size(), 1);

  // Written anew (whole this time), it is taken at the next re-check.
  absl::SleepFor(absl::Milliseconds(20));  // A newer mtime than the refusal.
  std::ofstream(run_ + "/step-5/model.safetensors",
                std::ios::binary | std::ios::trunc)
      << format::SafetensorsWriter().Serialize();
  for (int i = 0; i < 8 && Job().follow().checkpoints_size() < 2; ++i) {
    PollTwice(&at);
  }
  job = Job();
  ASSERT_EQ(job.follow().checkpoints_size(), 2) << job.DebugString();
  EXPECT_EQ(job.follow().checkpoints(1).step(), 5);
}

}  // namespace
}  // namespace saetrack::server
