// Follow mode end to end, over real processes: a real saetrack-coordinator
// and saetrack-worker on loopback follow the checkpoints saetrack-tinylm
// writes while it trains; checkpoints copied in by hand, one half written,
// test completeness; AddCheckpoint, CloseJob and a coordinator killed and
// restarted while following are driven over gRPC; the final analysis of a
// following job must equal a fixed-list job's over the same checkpoints.
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using ::saetrack::testing::ChildProcess;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

constexpr int kLayer = 1;
const std::vector<int64_t> kSteps = {0, 16, 64, 256};

// saetrack-tinylm training the tiny GPT-NeoX into `out`, saving `steps`.
std::vector<std::string> TinyLm(const std::string& out,
                                const std::string& steps) {
  return {SAETRACK_TINYLM_BIN, "--corpus", SAETRACK_CORPUS, "--out", out,
          "--steps", steps, "--d_model", "32", "--layers", "2", "--heads", "4",
          "--ctx", "32", "--batch", "16", "--seed", "1",
          // Two tests at once on CI's two cores: more threads only contend.
          "--threads", "1"};
}

class FollowEndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("follow"));
    ASSERT_FALSE(dir_->empty());
    // The token file and tokenizer a job names must exist at submission:
    // a first, one-checkpoint run writes them (the followed run below
    // writes the same ones).
    auto prep = testing::RunCommand(TinyLm(*dir_ + "/data", "0"),
                                    *dir_ + "/prep", absl::Minutes(5));
    ASSERT_TRUE(prep.ok()) << prep.status();
    ASSERT_EQ(prep->exit_code, 0) << prep->err;
    fs::create_directories(*dir_ + "/lm/checkpoints");
    fs::create_directories(*dir_ + "/manual");

    StartCoordinator("127.0.0.1:0");
    auto worker =
        ChildProcess::Start({SAETRACK_WORKER_BIN, "--coordinator", Address(),
                             "--threads", "1", "--lease_wait", "1s"},
                            *dir_ + "/worker");
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = worker->release();
  }

  static void TearDownTestSuite() {
    delete worker_;
    delete coordinator_;
  }

  static void StartCoordinator(const std::string& listen) {
    const std::string port_file = *dir_ + "/ports";
    std::remove(port_file.c_str());
    auto coordinator = ChildProcess::Start(
        {SAETRACK_COORDINATOR_BIN, "--data_dir", *dir_ + "/coordinator",
         "--listen", listen, "--metrics_listen", "127.0.0.1:0", "--port_file",
         port_file},
        absl::StrCat(*dir_, "/coordinator-", starts_++));
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = coordinator->release();
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          return testing::ReadFileOrEmpty(port_file).find("metrics=") !=
                 std::string::npos;
        },
        absl::Seconds(120)))
        << coordinator_->Stderr();
    for (absl::string_view line :
         absl::StrSplit(testing::ReadFileOrEmpty(port_file), '\n')) {
      std::pair<std::string, std::string> kv = absl::StrSplit(line, '=');
      if (kv.first == "grpc") ASSERT_TRUE(absl::SimpleAtoi(kv.second, &port_));
      if (kv.first == "metrics") {
        ASSERT_TRUE(absl::SimpleAtoi(kv.second, &metrics_port_));
      }
    }
    ASSERT_GT(port_, 0);
  }

  static std::string Address() { return absl::StrCat("127.0.0.1:", port_); }

  // The job's settings with `model` (JSON) spliced in; small budgets.
  static std::string JobJson(const std::string& model) {
    return absl::StrCat(R"({"name": "follow", "model": )", model, R"(,
  "data": {"tokens_path": ")",
                        *dir_, R"(/data/tokens.u16", "context_length": 32,
           "tokenizer_path": ")",
                        *dir_, R"(/data/tokenizer.json"},
  "hooks": [{"layer": )",
                        kLayer, R"(}],
  "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3, "lr_first": 1e-3,
          "lr_later": 3e-4, "warmup_steps_first": 20, "warmup_steps_later": 5,
          "batch_size": 512, "seed": 7},
  "schedule": {"tokens_first": 100000, "tokens_later": 20000,
               "eval_tokens": 4096, "lm_eval_tokens": 0,
               "reference_checkpoints": 1},
  "analysis": {"analysis_tokens": 4096, "top_k": 5, "logit_effects_k": 3}
})");
  }

  static std::string Submit(const std::string& name, const std::string& json) {
    const std::string path = *dir_ + "/" + name;
    std::ofstream(path) << json;
    auto r = testing::RunCommand({SAETRACK_CLI_BIN, "submit", path, "--json",
                                  "--coordinator", Address()},
                                 *dir_ + "/submit-" + name, absl::Minutes(2));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    EXPECT_EQ(r->exit_code, 0) << r->err;
    v1::SubmitJobResponse response;
    EXPECT_TRUE(
        google::protobuf::util::JsonStringToMessage(r->out, &response).ok())
        << r->out;
    return response.job().job_id();
  }

  static std::unique_ptr<v1::JobService::Stub> Jobs() {
    return v1::JobService::NewStub(
        grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials()));
  }
  static std::unique_ptr<v1::QueryService::Stub> Queries() {
    return v1::QueryService::NewStub(
        grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials()));
  }
  static void Deadline(grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(60));
  }

  static v1::Job GetJob(const std::string& job_id) {
    grpc::ClientContext context;
    Deadline(&context);
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    v1::Job job;
    grpc::Status s = Jobs()->GetJob(&context, request, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  static grpc::Status AddCheckpoint(const std::string& job_id, int64_t step,
                                    const std::string& path,
                                    v1::AddCheckpointResponse* response) {
    grpc::ClientContext context;
    Deadline(&context);
    v1::AddCheckpointRequest request;
    request.set_job_id(job_id);
    request.set_step(step);
    request.set_path(path);
    return Jobs()->AddCheckpoint(&context, request, response);
  }

  static grpc::Status Close(const std::string& job_id, v1::Job* job) {
    grpc::ClientContext context;
    Deadline(&context);
    v1::CloseJobRequest request;
    request.set_job_id(job_id);
    v1::CloseJobResponse response;
    grpc::Status s = Jobs()->CloseJob(&context, request, &response);
    *job = response.job();
    return s;
  }

  static v1::DriftSummary Drift(const std::string& job_id) {
    grpc::ClientContext context;
    Deadline(&context);
    v1::GetDriftSummaryRequest request;
    request.set_job_id(job_id);
    request.set_layer(kLayer);
    v1::DriftSummary drift;
    grpc::Status s = Queries()->GetDriftSummary(&context, request, &drift);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return drift;
  }

  static v1::FeatureHistory Feature(const std::string& job_id, int id) {
    grpc::ClientContext context;
    Deadline(&context);
    v1::GetFeatureHistoryRequest request;
    request.set_job_id(job_id);
    request.set_layer(kLayer);
    request.set_feature_id(id);
    v1::FeatureHistory history;
    grpc::Status s = Queries()->GetFeatureHistory(&context, request, &history);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return history;
  }

  // Waits for `done(job)`, failing with the job and logs otherwise.
  static v1::Job WaitForJob(const std::string& job_id,
                            const std::function<bool(const v1::Job&)>& done,
                            absl::Duration timeout = absl::Minutes(10)) {
    v1::Job job;
    const bool ok = testing::WaitFor(
        [&] {
          job = GetJob(job_id);
          return done(job) || job.state() == v1::JOB_STATE_FAILED ||
                 job.state() == v1::JOB_STATE_CANCELLED;
        },
        timeout);
    EXPECT_TRUE(ok && done(job)) << job.DebugString() << "\ncoordinator:\n"
                                 << coordinator_->Stderr() << "\nworker:\n"
                                 << worker_->Stderr();
    return job;
  }

  static std::vector<int64_t> TakenSteps(const v1::Job& job) {
    std::vector<int64_t> steps;
    for (const auto& c : job.follow().checkpoints()) steps.push_back(c.step());
    return steps;
  }

  static std::string Checkpoint(int64_t step) {
    return absl::StrCat(*dir_, "/lm/checkpoints/step-", step);
  }

  static std::string* dir_;
  static ChildProcess* coordinator_;
  static ChildProcess* worker_;
  static int port_;
  static int metrics_port_;
  static int starts_;
  static std::string* live_job_;
};

std::string* FollowEndToEndTest::dir_ = nullptr;
ChildProcess* FollowEndToEndTest::coordinator_ = nullptr;
ChildProcess* FollowEndToEndTest::worker_ = nullptr;
int FollowEndToEndTest::port_ = 0;
int FollowEndToEndTest::metrics_port_ = 0;
int FollowEndToEndTest::starts_ = 0;
std::string* FollowEndToEndTest::live_job_ = nullptr;

// The trainer starts after the job: every checkpoint is found as it is
// written, trained in step order, and the job ends at until_step with the
// final analysis, having run a provisional round on the way.
TEST_F(FollowEndToEndTest, ATheJobFollowsTheTrainerAsItWrites) {
  const std::string job_id =
      Submit("live.json",
             JobJson(absl::StrCat(R"({"follow": {"dir": ")", *dir_,
                                  R"(/lm/checkpoints", "poll_interval_s": 0.2,
                               "until_step": 256, "analyse_every": 2}})")));
  ASSERT_FALSE(job_id.empty());
  v1::Job job = GetJob(job_id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job.follow().state(), v1::FOLLOW_STATE_WAITING);

  std::string steps;
  for (int64_t s : kSteps) absl::StrAppend(&steps, steps.empty() ? "" : ",", s);
  auto trainer =
      ChildProcess::Start(TinyLm(*dir_ + "/lm", steps), *dir_ + "/trainer");
  ASSERT_TRUE(trainer.ok()) << trainer.status();

  job = WaitForJob(job_id, [](const v1::Job& j) {
    return j.state() == v1::JOB_STATE_SUCCEEDED;
  });
  absl::StatusOr<int> trained = (*trainer)->Wait(absl::Minutes(2));
  ASSERT_TRUE(trained.ok());
  EXPECT_EQ(*trained, 0) << (*trainer)->Stderr();
  EXPECT_EQ(TakenSteps(job), kSteps);
  EXPECT_EQ(job.follow().state(), v1::FOLLOW_STATE_CLOSED);
  EXPECT_EQ(job.follow().close_reason(), "until_step 256 reached");
  EXPECT_EQ(job.follow().refused_size(), 0) << job.DebugString();
  EXPECT_TRUE(job.follow().final_round());
  // analyse_every 2: a provisional round, then the final one.
  EXPECT_GE(job.follow().analysis_round(), 2);
  for (const v1::FollowedCheckpoint& c : job.follow().checkpoints()) {
    EXPECT_GT(c.last_write_ms(), 0);
    EXPECT_GE(c.taken_ms(), c.last_write_ms());
    EXPECT_GE(c.stored_ms(), c.taken_ms());
  }
  const v1::DriftSummary drift = Drift(job_id);
  EXPECT_FALSE(drift.provisional());
  EXPECT_EQ(drift.through_step(), 256);
  EXPECT_EQ(drift.checkpoints_size(), 4);
  EXPECT_FALSE(Feature(job_id, 3).provisional());
  live_job_ = new std::string(job_id);
}

// The same checkpoints as a fixed list: the same SAEs, the same analysis.
TEST_F(FollowEndToEndTest, BTheFinalAnalysisEqualsAFixedListJobs) {
  ASSERT_NE(live_job_, nullptr);
  std::string list;
  for (int64_t s : kSteps) {
    absl::StrAppend(&list, list.empty() ? "" : ", ", R"({"step": )", s,
                    R"(, "path": ")", Checkpoint(s), R"("})");
  }
  const std::string fixed = Submit(
      "fixed.json", JobJson(absl::StrCat(R"({"checkpoints": [)", list, "]}")));
  ASSERT_FALSE(fixed.empty());
  WaitForJob(fixed, [](const v1::Job& j) {
    return j.state() == v1::JOB_STATE_SUCCEEDED;
  });
  v1::DriftSummary a = Drift(*live_job_);
  v1::DriftSummary b = Drift(fixed);
  a.clear_job_id();
  b.clear_job_id();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(a, b))
      << a.DebugString() << "\nvs\n"
      << b.DebugString();
  for (int id : {0, 3, 17, 100}) {
    v1::FeatureHistory x = Feature(*live_job_, id);
    v1::FeatureHistory y = Feature(fixed, id);
    x.clear_job_id();
    y.clear_job_id();
    // Reference checks sit at other chain positions (a following job's
    // chain length is not known in advance); they are checkpoint metrics,
    // not part of a feature's history.
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(x, y))
        << "feature " << id;
  }
}

// Checkpoints arriving by hand in the Hugging Face Trainer's layout: a half
// written one waits; AddCheckpoint is idempotent; late, conflicting and
// invalid checkpoints fail alone; a coordinator killed while following
// loses nothing and finds what was written while it was down; close ends it.
TEST_F(FollowEndToEndTest, CPartialLateAddedRestartedAndClosed) {
  const std::string manual = *dir_ + "/manual";
  const std::string job_id = Submit(
      "manual.json", JobJson(absl::StrCat(R"({"follow": {"dir": ")", manual,
                                          R"(", "pattern": "checkpoint-{step}",
                               "poll_interval_s": 0.2}})")));
  ASSERT_FALSE(job_id.empty());
  auto copy = [&](int64_t step) {
    const std::string to = absl::StrCat(manual, "/checkpoint-", step);
    fs::create_directories(to);
    fs::copy_file(Checkpoint(step) + "/config.json", to + "/config.json");
    fs::copy_file(Checkpoint(step) + "/model.safetensors",
                  to + "/model.safetensors");
  };
  copy(0);
  v1::Job job = WaitForJob(job_id, [](const v1::Job& j) {
    return j.follow().checkpoints_size() == 1;
  });
  EXPECT_EQ(job.follow().checkpoints(0).path(), manual + "/checkpoint-0");

  // Half of the weights: not taken while it stays so.
  const std::string half = manual + "/checkpoint-16";
  fs::create_directories(half);
  fs::copy_file(Checkpoint(16) + "/config.json", half + "/config.json");
  std::ifstream in(Checkpoint(16) + "/model.safetensors", std::ios::binary);
  const std::string weights((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
  ASSERT_GT(weights.size(), 1000u);
  {
    std::ofstream out(half + "/model.safetensors", std::ios::binary);
    out << weights.substr(0, weights.size() / 2);
  }
  absl::SleepFor(absl::Seconds(3));  // 15 scans.
  job = GetJob(job_id);
  EXPECT_EQ(TakenSteps(job), std::vector<int64_t>{0});
  EXPECT_EQ(job.follow().refused_size(), 0) << job.DebugString();
  {
    std::ofstream out(half + "/model.safetensors",
                      std::ios::binary | std::ios::app);
    out << weights.substr(weights.size() / 2);
  }
  job = WaitForJob(job_id, [](const v1::Job& j) {
    return j.follow().checkpoints_size() == 2;
  });
  EXPECT_EQ(TakenSteps(job), (std::vector<int64_t>{0, 16}));

  // AddCheckpoint: taken once, then answered unchanged.
  v1::AddCheckpointResponse added;
  grpc::Status s = AddCheckpoint(job_id, 64, Checkpoint(64), &added);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(added.created());
  EXPECT_EQ(TakenSteps(added.job()), (std::vector<int64_t>{0, 16, 64}));
  s = AddCheckpoint(job_id, 64, Checkpoint(64), &added);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(added.created());
  EXPECT_EQ(added.job().follow().checkpoints_size(), 3);
  s = AddCheckpoint(job_id, 64, Checkpoint(16), &added);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // A late step (the job does not re-train) and a directory that is no
  // checkpoint fail alone, recorded; following goes on.
  s = AddCheckpoint(job_id, 8, Checkpoint(0), &added);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("retrain_late"));
  s = AddCheckpoint(job_id, 100, manual, &added);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("checkpoint.path"));
  job = GetJob(job_id);
  ASSERT_EQ(job.follow().refused_size(), 3) << job.DebugString();
  EXPECT_EQ(job.follow().refused(0).step(), 64);
  EXPECT_THAT(job.follow().refused(0).reason(), HasSubstr("already taken"));
  EXPECT_EQ(job.follow().refused(1).step(), 8);
  EXPECT_EQ(job.follow().refused(2).step(), 100);
  EXPECT_EQ(job.follow().refused(2).path(), manual);
  EXPECT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  s = AddCheckpoint("job-999999", 1, Checkpoint(0), &added);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);

  // Killed while following; a checkpoint written meanwhile is found after.
  job = WaitForJob(
      job_id, [](const v1::Job& j) { return j.progress().tasks_done() == 3; });
  coordinator_->Signal(SIGKILL);
  ASSERT_TRUE(coordinator_->Wait(absl::Seconds(30)).ok());
  delete coordinator_;
  coordinator_ = nullptr;
  copy(256);
  StartCoordinator(Address());  // The same port: the worker reconnects.
  job = WaitForJob(job_id, [](const v1::Job& j) {
    return j.follow().checkpoints_size() == 4 && j.progress().tasks_done() == 4;
  });
  EXPECT_EQ(TakenSteps(job), kSteps);
  for (const v1::FollowedCheckpoint& c : job.follow().checkpoints()) {
    EXPECT_GT(c.stored_ms(), 0) << c.step();
  }
  EXPECT_EQ(job.follow().refused_size(), 3);
  EXPECT_EQ(job.follow().state(), v1::FOLLOW_STATE_WAITING);

  // Close: the final analysis, then SUCCEEDED; closing again is a no-op.
  v1::Job closed;
  s = Close(job_id, &closed);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(closed.follow().state(), v1::FOLLOW_STATE_CLOSED);
  EXPECT_EQ(closed.follow().close_reason(), "closed by request");
  job = WaitForJob(job_id, [](const v1::Job& j) {
    return j.state() == v1::JOB_STATE_SUCCEEDED;
  });
  EXPECT_FALSE(Drift(job_id).provisional());
  s = Close(job_id, &closed);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(closed.state(), v1::JOB_STATE_SUCCEEDED);
  // An ended job takes no checkpoint.
  s = AddCheckpoint(*live_job_, 512, Checkpoint(0), &added);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("already ended"));
}

}  // namespace
}  // namespace saetrack
