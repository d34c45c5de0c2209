// Fault tolerance over real processes: a real tiny GPT-NeoX (saetrack-tinylm,
// trained once for the suite), real saetrack-coordinator processes over
// RocksDB temp dirs and real saetrack-worker processes on loopback, driven
// through the saetrack CLI. Workers and coordinators are killed (SIGKILL) or
// stopped (SIGTERM) in the middle of a job; every job must still end with
// exactly one SAE per checkpoint, in chain order, and what was stored before a
// crash must survive it unchanged.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using ::saetrack::testing::ChildProcess;
using ::saetrack::testing::CommandResult;

constexpr int kLayer = 1;
// Few LM steps: the checkpoints only need to differ, not to be good.
const std::vector<int> kSteps = {0, 8, 16, 32};

template <typename T>
T FromJson(const std::string& json) {
  T message;
  auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

std::string* lm_dir = nullptr;  // The suite's tiny LM (tokens + checkpoints).

// A job over the suite's LM with the given SAE budgets.
std::string JobJson(int64_t tokens_first, int64_t tokens_later) {
  std::string checkpoints;
  for (int s : kSteps) {
    absl::StrAppend(&checkpoints, checkpoints.empty() ? "" : ", ",
                    "{\"step\": ", s, ", \"path\": \"", *lm_dir,
                    "/checkpoints/step-", s, "\"}");
  }
  return absl::StrCat(R"({
  "name": "fault",
  "model": {"architecture": "gpt_neox", "checkpoints": [)",
                      checkpoints, R"(]},
  "data": {"tokens_path": ")",
                      *lm_dir, R"(/tokens.u16", "context_length": 32},
  "hooks": [{"layer": )",
                      kLayer, R"(}],
  "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3, "lr_first": 1e-3,
          "lr_later": 3e-4, "warmup_steps_first": 20, "warmup_steps_later": 5,
          "batch_size": 512, "seed": 7},
  "schedule": {"tokens_first": )",
                      tokens_first, R"(, "tokens_later": )", tokens_later,
                      R"(, "eval_tokens": 4096, "lm_eval_tokens": 0}
})");
}

// One coordinator (restartable on the same directory) and its workers, all
// logging under one temp dir.
class Cluster {
 public:
  explicit Cluster(const std::string& name)
      : dir_(testing::MakeTempDir(name)) {}
  // Kills what still runs; the directory (logs, ~75 MB of RocksDB) is kept
  // only when the test failed.
  ~Cluster() {
    workers_.clear();
    coordinator_.reset();
    if (!::testing::Test::HasFailure() && !dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  const std::string& dir() const { return dir_; }
  int port() const { return port_; }
  std::string Address() const { return absl::StrCat("127.0.0.1:", port_); }
  ChildProcess* coordinator() { return coordinator_.get(); }
  ChildProcess* worker(int i) { return workers_[i].get(); }

  // Starts a coordinator on `data` (RocksDB); `port` 0 picks a free one.
  // Returns false (with a test failure) if it does not come up.
  bool StartCoordinator(int port, int64_t lease_ttl_ms) {
    const std::string port_file = dir_ + "/ports";
    std::remove(port_file.c_str());
    auto started = ChildProcess::Start(
        {SAETRACK_COORDINATOR_BIN, "--data_dir", dir_ + "/data", "--listen",
         absl::StrCat("127.0.0.1:", port), "--metrics_listen", "127.0.0.1:0",
         "--port_file", port_file, "--lease_ttl_ms",
         std::to_string(lease_ttl_ms)},
        absl::StrCat(dir_, "/coordinator-", coordinator_starts_++));
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return false;
    coordinator_ = *std::move(started);
    const bool up = testing::WaitFor(
        [&] {
          return testing::ReadFileOrEmpty(port_file).find("metrics=") !=
                     std::string::npos ||
                 coordinator_->Wait(absl::ZeroDuration()).ok();
        },
        absl::Seconds(30));
    port_ = 0;
    for (absl::string_view line :
         absl::StrSplit(testing::ReadFileOrEmpty(port_file), '\n')) {
      std::pair<std::string, std::string> kv = absl::StrSplit(line, '=');
      if (kv.first == "grpc") {
        EXPECT_TRUE(absl::SimpleAtoi(kv.second, &port_));
      }
    }
    EXPECT_TRUE(up && port_ > 0) << coordinator_->Stderr();
    return up && port_ > 0;
  }

  ChildProcess* StartWorker(const std::string& lease_wait = "1s") {
    const int n = static_cast<int>(workers_.size());
    auto started = ChildProcess::Start(
        {SAETRACK_WORKER_BIN, "--coordinator", Address(), "--threads", "1",
         "--metrics_listen=", "--lease_wait", lease_wait, "--name",
         absl::StrCat("w", n)},
        absl::StrCat(dir_, "/worker-", n));
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return nullptr;
    workers_.push_back(*std::move(started));
    return workers_.back().get();
  }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), SAETRACK_CLI_BIN);
    args.push_back("--coordinator");
    args.push_back(Address());
    auto result = testing::RunCommand(
        args, absl::StrCat(dir_, "/cli-", cli_calls_++), absl::Seconds(60));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  // Submits a job and returns its id ("" on failure).
  std::string Submit(const std::string& job_json) {
    const std::string path = dir_ + "/job.json";
    std::ofstream(path) << job_json;
    CommandResult r = Cli({"submit", path, "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    if (r.exit_code != 0) return "";
    return FromJson<v1::SubmitJobResponse>(r.out).job().job_id();
  }

  // The job, or a default one (state unspecified) when the call fails.
  v1::Job Status(const std::string& job_id) {
    CommandResult r = Cli({"status", job_id, "--json"});
    if (r.exit_code != 0) return v1::Job();
    return FromJson<v1::Job>(r.out);
  }

  // The metrics rows; `ok` false when the call failed.
  v1::GetCheckpointMetricsResponse Metrics(const std::string& job_id,
                                           bool* ok = nullptr) {
    CommandResult r =
        Cli({"metrics", job_id, "--layer", std::to_string(kLayer), "--json"});
    if (ok != nullptr) *ok = r.exit_code == 0;
    if (r.exit_code != 0) return v1::GetCheckpointMetricsResponse();
    return FromJson<v1::GetCheckpointMetricsResponse>(r.out);
  }

  // Polls until the job ends (any terminal state) or `timeout`; returns it.
  v1::Job WaitForEnd(const std::string& job_id, absl::Duration timeout) {
    v1::Job job;
    testing::WaitFor(
        [&] {
          job = Status(job_id);
          return job.state() == v1::JOB_STATE_SUCCEEDED ||
                 job.state() == v1::JOB_STATE_FAILED ||
                 job.state() == v1::JOB_STATE_CANCELLED;
        },
        timeout);
    return job;
  }

  // Every process's log, for failure messages.
  std::string Logs() const {
    std::string logs;
    if (coordinator_ != nullptr) {
      absl::StrAppend(&logs, "coordinator:\n", coordinator_->Stderr());
    }
    for (size_t i = 0; i < workers_.size(); ++i) {
      absl::StrAppend(&logs, "worker ", i, ":\n", workers_[i]->Stderr());
    }
    return logs;
  }

 private:
  std::string dir_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  int port_ = 0;
  int coordinator_starts_ = 0;
  int cli_calls_ = 0;
};

// Exactly one row per checkpoint, in chain order, each for its checkpoint.
void ExpectOneRowPerCheckpointInChainOrder(
    const v1::GetCheckpointMetricsResponse& metrics) {
  ASSERT_EQ(metrics.checkpoints_size(), static_cast<int>(kSteps.size()))
      << metrics.DebugString();
  std::set<int64_t> steps;
  for (int i = 0; i < metrics.checkpoints_size(); ++i) {
    const v1::CheckpointMetrics& m = metrics.checkpoints(i);
    EXPECT_EQ(m.chain_index(), i);
    EXPECT_EQ(m.step(), kSteps[i]);
    EXPECT_EQ(m.layer(), kLayer);
    EXPECT_GT(m.tokens_trained(), 0);
    steps.insert(m.step());
  }
  EXPECT_EQ(steps.size(), kSteps.size());
}

// How many times `needle` occurs in `haystack`.
int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

// grpc.health.v1.Health/Check by hand (no generated health stubs here):
// request field 1 = service, response field 1 = status. Returns 1 SERVING,
// 2 NOT_SERVING, -1 when the call fails (e.g. nothing listening).
int HealthStatus(const std::string& address) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  std::string request = "";  // service "": the server as a whole.
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::CompletionQueue cq;
  auto call =
      stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", in, &cq);
  call->StartCall();
  grpc::ByteBuffer out;
  grpc::Status status;
  call->Finish(&out, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) return -1;
  std::vector<grpc::Slice> slices;
  out.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // An empty response is the default: UNKNOWN (0).
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
}

class FaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("fault-lm");
    ASSERT_FALSE(dir.empty());
    lm_dir = new std::string(dir + "/lm");
    std::string steps;
    for (int s : kSteps) absl::StrAppend(&steps, steps.empty() ? "" : ",", s);
    auto lm = testing::RunCommand(
        {SAETRACK_TINYLM_BIN, "--corpus", SAETRACK_CORPUS, "--out", *lm_dir,
         "--steps", steps, "--d_model", "32", "--layers", "2", "--heads", "4",
         "--ctx", "32", "--batch", "16", "--seed", "1",
         // One thread: far faster than two for a model this small.
         "--threads", "1"},
        dir + "/tinylm", absl::Minutes(5));
    ASSERT_TRUE(lm.ok()) << lm.status();
    ASSERT_EQ(lm->exit_code, 0) << lm->err;
  }

  static void TearDownTestSuite() {
    delete lm_dir;
    lm_dir = nullptr;
  }
};

// (a) A worker killed in the middle of a task: its lease expires, a new worker
// leases the task again and the job succeeds with one SAE per checkpoint.
TEST_F(FaultTest, KilledWorkerTaskIsLeasedAgainAfterItsLeaseExpires) {
  Cluster cluster("fault-worker-kill");
  ASSERT_TRUE(cluster.StartCoordinator(0, /*lease_ttl_ms=*/1500));
  ChildProcess* first = cluster.StartWorker();
  ASSERT_NE(first, nullptr);
  // The first SAE trains long enough (seconds) to be killed in the middle.
  const std::string job_id = cluster.Submit(JobJson(250000, 20000));
  ASSERT_FALSE(job_id.empty());
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        return absl::StrContains(first->Stderr(), "chain 0): training on");
      },
      absl::Seconds(30)))
      << cluster.Logs();
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_FALSE(absl::StrContains(first->Stderr(), "chain 0): done"))
      << "the first task ended before the kill; make it longer\n"
      << cluster.Logs();
  EXPECT_EQ(cluster.Status(job_id).state(), v1::JOB_STATE_RUNNING);
  first->Signal(SIGKILL);
  absl::StatusOr<int> code = first->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 128 + SIGKILL);

  ChildProcess* second = cluster.StartWorker();
  ASSERT_NE(second, nullptr);
  const v1::Job job = cluster.WaitForEnd(job_id, absl::Seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED)
      << job.DebugString() << cluster.Logs();
  EXPECT_EQ(job.progress().tasks_done(), static_cast<int>(kSteps.size()));
  // The second worker trained the interrupted first SAE again, and the rest.
  EXPECT_EQ(Count(second->Stderr(), ": done in "),
            static_cast<int>(kSteps.size()))
      << cluster.Logs();
  EXPECT_TRUE(absl::StrContains(second->Stderr(), "chain 0): training on"));
  ExpectOneRowPerCheckpointInChainOrder(cluster.Metrics(job_id));
}

// (b) The coordinator killed (SIGKILL) in the middle of a job and restarted
// on the same directory and port: the job completes, and the results it had
// acknowledged before the kill are still there, identical.
TEST_F(FaultTest, KilledCoordinatorRestartsAndTheJobCompletes) {
  Cluster cluster("fault-coordinator-kill");
  ASSERT_TRUE(cluster.StartCoordinator(0, /*lease_ttl_ms=*/1500));
  const int port = cluster.port();
  ChildProcess* worker = cluster.StartWorker();
  ASSERT_NE(worker, nullptr);
  // Every SAE takes about a second, so that the kill lands mid-chain.
  const std::string job_id = cluster.Submit(JobJson(100000, 120000));
  ASSERT_FALSE(job_id.empty());

  v1::GetCheckpointMetricsResponse before;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        before = cluster.Metrics(job_id);
        return before.checkpoints_size() >= 1;
      },
      absl::Seconds(60)))
      << cluster.Logs();
  ASSERT_LT(before.checkpoints_size(), static_cast<int>(kSteps.size()))
      << "the job ended before the kill; make it longer";
  cluster.coordinator()->Signal(SIGKILL);
  absl::StatusOr<int> code = cluster.coordinator()->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 128 + SIGKILL);

  // Same directory, same port: the running worker finds it again.
  ASSERT_TRUE(cluster.StartCoordinator(port, /*lease_ttl_ms=*/1500))
      << cluster.Logs();
  ASSERT_EQ(cluster.port(), port);
  const v1::Job job = cluster.WaitForEnd(job_id, absl::Seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED)
      << job.DebugString() << cluster.Logs();

  const v1::GetCheckpointMetricsResponse after = cluster.Metrics(job_id);
  ExpectOneRowPerCheckpointInChainOrder(after);
  ASSERT_GE(after.checkpoints_size(), before.checkpoints_size());
  for (int i = 0; i < before.checkpoints_size(); ++i) {
    EXPECT_EQ(after.checkpoints(i).SerializeAsString(),
              before.checkpoints(i).SerializeAsString())
        << "chain " << i << " changed across the restart:\nbefore "
        << before.checkpoints(i).DebugString() << "after "
        << after.checkpoints(i).DebugString();
  }
  EXPECT_TRUE(worker->Wait(absl::ZeroDuration()).status().code() ==
              absl::StatusCode::kDeadlineExceeded)
      << "the worker exited:\n"
      << cluster.Logs();
}

// (c) Two workers racing for the tasks of one chain: every checkpoint gets
// exactly one result, in chain order, and no SAE is trained twice.
TEST_F(FaultTest, TwoWorkersRacingStoreOneResultPerCheckpointInOrder) {
  Cluster cluster("fault-race");
  ASSERT_TRUE(cluster.StartCoordinator(0, /*lease_ttl_ms=*/30000));
  ChildProcess* a = cluster.StartWorker();
  ChildProcess* b = cluster.StartWorker();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::string job_id = cluster.Submit(JobJson(50000, 20000));
  ASSERT_FALSE(job_id.empty());
  const v1::Job job = cluster.WaitForEnd(job_id, absl::Seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED)
      << job.DebugString() << cluster.Logs();
  ExpectOneRowPerCheckpointInChainOrder(cluster.Metrics(job_id));

  // Each SAE was trained and stored once, by one of the two.
  const std::string logs = a->Stderr() + b->Stderr();
  EXPECT_EQ(Count(logs, ": done in "), static_cast<int>(kSteps.size()))
      << cluster.Logs();
  EXPECT_EQ(Count(logs, "result not stored"), 0) << cluster.Logs();
  for (int i = 0; i < static_cast<int>(kSteps.size()); ++i) {
    EXPECT_EQ(Count(logs, absl::StrCat("chain ", i, "): training on")), 1)
        << cluster.Logs();
  }
}

// (d) SIGTERM with a worker connected (in a long poll): health stops serving
// and the coordinator exits 0 within a few seconds; the worker stays up and
// stops on its own SIGTERM.
TEST_F(FaultTest, SigtermStopsServingAndExitsZeroWithAWorkerConnected) {
  Cluster cluster("fault-sigterm");
  ASSERT_TRUE(cluster.StartCoordinator(0, /*lease_ttl_ms=*/30000));
  ChildProcess* worker = cluster.StartWorker(/*lease_wait=*/"30s");
  ASSERT_NE(worker, nullptr);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(worker->Stderr(), "registered with"); },
      absl::Seconds(30)))
      << cluster.Logs();
  absl::SleepFor(absl::Milliseconds(300));  // Into its long poll.
  ASSERT_EQ(HealthStatus(cluster.Address()), 1);

  const absl::Time start = absl::Now();
  cluster.coordinator()->Signal(SIGTERM);
  EXPECT_TRUE(testing::WaitFor(
      [&] { return HealthStatus(cluster.Address()) != 1; }, absl::Seconds(5)))
      << cluster.Logs();
  absl::StatusOr<int> code = cluster.coordinator()->Wait(absl::Seconds(10));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(code.ok()) << code.status() << cluster.Logs();
  EXPECT_EQ(*code, 0) << cluster.Logs();
  EXPECT_LT(took, absl::Seconds(5)) << cluster.Logs();
  EXPECT_EQ(HealthStatus(cluster.Address()), -1);  // Nothing listening.

  EXPECT_TRUE(worker->Wait(absl::ZeroDuration()).status().code() ==
              absl::StatusCode::kDeadlineExceeded)
      << "the worker exited with the coordinator:\n"
      << cluster.Logs();
  worker->Signal(SIGTERM);
  absl::StatusOr<int> worker_code = worker->Wait(absl::Seconds(15));
  ASSERT_TRUE(worker_code.ok()) << worker_code.status();
  EXPECT_EQ(*worker_code, 0) << cluster.Logs();
}

}  // namespace
}  // namespace saetrack
