// Fault tolerance over real processes: a real tiny GPT-NeoX (saetrack-tinylm,
// trained once for the suite), real saetrack-coordinator processes over
// RocksDB temp dirs and real saetrack-worker processes on loopback, driven
// through the saetrack CLI. Workers and coordinators are killed (SIGKILL) or
// stopped (SIGTERM) in the middle of a job; every job must still end with
// exactly one SAE per checkpoint, in chain order, and what was stored before a
// crash must survive it unchanged. The test itself also plays a worker over
// raw WorkerService calls, to hold a lease that goes stale: nothing it sends
// under the stale epoch may be stored.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "format/crc32c.h"
#include "format/safetensors.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "server/testing/worker_rpc_testing.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using ::saetrack::testing::ChildProcess;
using ::saetrack::testing::CommandResult;

constexpr int kLayer = 1;
// Hidden size of the suite's tiny LM: the SAEs' d_in.
constexpr int kDModel = 32;
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

  // Starts a coordinator on `data` (RocksDB); `port` 0 picks a free one;
  // `extra_flags` go after the others. Returns false (with a test failure) if
  // it does not come up.
  bool StartCoordinator(int port, int64_t lease_ttl_ms,
                        const std::vector<std::string>& extra_flags = {}) {
    const std::string port_file = dir_ + "/ports";
    std::remove(port_file.c_str());
    std::vector<std::string> argv = extra_flags;
    argv.insert(argv.begin(),
                {SAETRACK_COORDINATOR_BIN, "--data_dir", dir_ + "/data",
                 "--listen", absl::StrCat("127.0.0.1:", port),
                 "--metrics_listen", "127.0.0.1:0", "--port_file", port_file,
                 "--lease_ttl_ms", std::to_string(lease_ttl_ms)});
    auto started = ChildProcess::Start(
        argv, absl::StrCat(dir_, "/coordinator-", coordinator_starts_++));
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return false;
    coordinator_ = *std::move(started);
    const bool up = testing::WaitFor(
        [&] {
          return testing::ReadFileOrEmpty(port_file).find("metrics=") !=
                     std::string::npos ||
                 coordinator_->Wait(absl::ZeroDuration()).ok();
        },
        // Recovering a database that holds gigabytes (a kill -9 mid-commit)
        // on a loaded 2-core machine can take a while.
        absl::Seconds(120));
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

// Every raw WorkerService call below gets this long before it gives up.
constexpr absl::Duration kRpcDeadline = absl::Seconds(10);

void SetDeadline(grpc::ClientContext* ctx, absl::Duration timeout) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

// SAE weights in the layout the worker uploads (W_enc [d_in, d_sae], b_enc
// [d_sae], W_dec [d_sae, d_in], b_dec [d_in], fp32), every value `value`: a
// forgery the coordinator could not tell from a real SAE by its shape.
std::string ConstantSaeWeights(int d_in, int d_sae, float value) {
  format::SafetensorsWriter writer;
  const std::vector<float> values(static_cast<size_t>(d_in) * d_sae, value);
  const std::pair<const char*, std::vector<int64_t>> tensors[] = {
      {"W_enc", {d_in, d_sae}},
      {"b_enc", {d_sae}},
      {"W_dec", {d_sae, d_in}},
      {"b_dec", {d_in}}};
  for (const auto& [name, shape] : tensors) {
    absl::Status s = writer.AddF32(name, shape, values.data());
    EXPECT_TRUE(s.ok()) << s;
  }
  return writer.Serialize();
}

// `status` is the refusal of a call made under `stale_epoch` of `task_id`
// after the task was leased again: ABORTED, naming the stale epoch but not
// the current one (which would hand it to whoever asks).
void ExpectStaleEpochRefused(const grpc::Status& status,
                             const std::string& task_id, int64_t stale_epoch,
                             const std::string& call) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED)
      << call << ": " << status.error_message();
  EXPECT_TRUE(absl::StrContains(
      status.error_message(),
      absl::StrCat("stale lease epoch ", stale_epoch, " of task ", task_id)))
      << call << ": " << status.error_message();
  EXPECT_FALSE(absl::StrContains(status.error_message(), "current epoch"))
      << call << ": " << status.error_message();
}

// A resident-set figure of process `pid` from /proc ("VmRSS", "VmHWM": the
// peak), in bytes; -1 when unreadable.
int64_t ProcessMemory(pid_t pid, const std::string& field) {
  for (absl::string_view line : absl::StrSplit(
           testing::ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/status")),
           '\n')) {
    if (!absl::StartsWith(line, field + ":")) continue;
    line.remove_prefix(field.size() + 1);
    int64_t kb = 0;
    if (absl::SimpleAtoi(
            absl::StripSuffix(absl::StripAsciiWhitespace(line), " kB"), &kb)) {
      return kb * 1024;
    }
  }
  return -1;
}

// Byte `i` of the synthetic artifact of `seed`: never held whole, so that a
// test can send a gigabyte without holding one.
void FillPattern(uint64_t seed, int64_t offset, std::string* chunk) {
  for (size_t i = 0; i < chunk->size(); i += 8) {
    uint64_t z =
        seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(offset + i);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(chunk->data() + i, &z, std::min<size_t>(8, chunk->size() - i));
  }
}

struct SizeAndCrc {
  int64_t size = 0;
  uint32_t crc32c = 0;
};

// A safetensors header of SAE weights of width `d_sae` whose four tensors,
// with the 8-byte length before it, fill exactly `size` bytes: d_in is as
// large as fits and the header is padded with spaces (as the format allows).
std::string SaeHeaderFilling(int64_t size, int64_t d_sae) {
  constexpr int64_t kMinHeader = 512;
  const int64_t d_in =
      (size - 8 - kMinHeader - 4 * d_sae) / (4 * (2 * d_sae + 1));
  const int64_t enc = 4 * d_in * d_sae;
  std::string json = absl::StrCat(
      R"({"W_enc":{"dtype":"F32","shape":[)", d_in, ",", d_sae,
      R"(],"data_offsets":[0,)", enc, R"(]},"b_enc":{"dtype":"F32","shape":[)",
      d_sae, R"(],"data_offsets":[)", enc, ",", enc + 4 * d_sae,
      R"(]},"W_dec":{"dtype":"F32","shape":[)", d_sae, ",", d_in,
      R"(],"data_offsets":[)", enc + 4 * d_sae, ",", 2 * enc + 4 * d_sae,
      R"(]},"b_dec":{"dtype":"F32","shape":[)", d_in, R"(],"data_offsets":[)",
      2 * enc + 4 * d_sae, ",", 2 * enc + 4 * d_sae + 4 * d_in, "]}}");
  const int64_t header = size - 8 - (2 * enc + 4 * d_sae + 4 * d_in);
  json.resize(static_cast<size_t>(header), ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((header >> (8 * i)) & 0xff);
  return out + json;
}

// Uploads `size` bytes of FillPattern(seed) in 1 MiB chunks, as a worker
// does, as worker `worker_id`; the first bytes are a safetensors header of
// an SAE of width `d_sae` filling the size (the coordinator checks shapes).
grpc::Status UploadPattern(v1::WorkerService::Stub& stub,
                           const std::string& worker_id,
                           const std::string& task_id, int64_t epoch,
                           int64_t d_sae, int64_t size, uint64_t seed,
                           SizeAndCrc* sent) {
  const std::string header = SaeHeaderFilling(size, d_sae);
  constexpr int64_t kChunk = int64_t{1} << 20;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(5)));
  v1::UploadArtifactResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ArtifactChunk>> writer =
      stub.UploadArtifact(&ctx, &response);
  std::string data;
  uint32_t crc = 0;
  for (int64_t offset = 0; offset < size; offset += kChunk) {
    data.resize(static_cast<size_t>(std::min(kChunk, size - offset)));
    FillPattern(seed, offset, &data);
    if (offset == 0) data.replace(0, header.size(), header);
    crc = format::Crc32c(data, crc);
    v1::ArtifactChunk chunk;
    if (offset == 0) {
      chunk.set_worker_id(worker_id);
      chunk.set_task_id(task_id);
      chunk.set_lease_epoch(epoch);
      chunk.set_kind(v1::ARTIFACT_KIND_SAE_WEIGHTS);
      chunk.set_total_size(size);
    }
    chunk.set_offset(offset);
    chunk.set_data(data);
    if (offset + kChunk >= size) {
      chunk.set_last(true);
      chunk.set_total_size(size);
      chunk.set_crc32c(crc);
    }
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  *sent = {size, crc};
  return writer->Finish();
}

// Size and CRC-32C of the stored SAE weights of `sae`, from DownloadSae's
// chunks without holding them.
absl::StatusOr<SizeAndCrc> DownloadedSizeAndCrc(v1::WorkerService::Stub& stub,
                                                const v1::SaeRef& sae) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(5)));
  v1::DownloadSaeRequest request;
  *request.mutable_sae() = sae;
  std::unique_ptr<grpc::ClientReader<v1::DownloadChunk>> reader =
      stub.DownloadSae(&ctx, request);
  SizeAndCrc got;
  v1::DownloadChunk chunk;
  bool last = false;
  while (reader->Read(&chunk)) {
    if (chunk.offset() != got.size) {
      return absl::DataLossError(
          absl::StrCat("chunk at ", chunk.offset(), ", expected ", got.size));
    }
    got.crc32c = format::Crc32c(chunk.data(), got.crc32c);
    got.size += static_cast<int64_t>(chunk.data().size());
    if (chunk.last()) {
      last = true;
      if (chunk.total_size() != got.size || chunk.crc32c() != got.crc32c) {
        return absl::DataLossError("last chunk disagrees with the bytes");
      }
    }
  }
  const grpc::Status s = reader->Finish();
  if (!s.ok()) return FromGrpcStatus(s);
  if (!last) return absl::DataLossError("no last chunk");
  return got;
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
         "--steps", steps, "--d_model", std::to_string(kDModel), "--layers",
         "2", "--heads", "4", "--ctx", "32", "--batch", "16", "--seed", "1",
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

// (e) Lease fencing: the test itself, as raw worker A, leases the first task
// and goes silent; once the lease expires a real worker leases the task again
// under a higher epoch. Everything A then sends under its stale epoch (a
// complete, checksummed upload of plausible weights, a completion with
// plausible metrics, a heartbeat, a failure) is refused with ABORTED, and the
// job ends with the real worker's results only.
TEST_F(FaultTest, StaleLeaseEpochStoresNothingAfterTheTaskIsLeasedAgain) {
  // Whole 32-token contexts, so that the real worker trains exactly these.
  constexpr int64_t kTokensFirst = 32 * 1600;
  constexpr int64_t kTokensLater = 32 * 320;
  constexpr int64_t kLeaseTtlMs = 1500;
  // A's claims, none of which may reach the results.
  constexpr int64_t kFakeTokens = 7777777;
  constexpr double kFakeFvu = 0.000123;
  constexpr float kFakeWeight = 0.25f;

  Cluster cluster("fault-stale-lease");
  // No retry backoff: the task is leased again as soon as A's lease expires.
  ASSERT_TRUE(
      cluster.StartCoordinator(0, kLeaseTtlMs, {"--retry_backoff_ms", "0"}));
  const std::string job_id =
      cluster.Submit(JobJson(kTokensFirst, kTokensLater));
  ASSERT_FALSE(job_id.empty());
  std::unique_ptr<v1::WorkerService::Stub> stub =
      v1::WorkerService::NewStub(grpc::CreateChannel(
          cluster.Address(), grpc::InsecureChannelCredentials()));

  // A registers and leases while no other worker runs: the chain's first task.
  std::string a_id;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::RegisterWorkerRequest request;
    request.set_name("stale-a");
    request.mutable_capabilities()->set_device("cpu");
    v1::RegisterWorkerResponse response;
    const grpc::Status s = stub->RegisterWorker(&ctx, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    a_id = response.worker_id();
  }
  const absl::Time before_lease = absl::Now();
  v1::Task task;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::LeaseTaskRequest request;
    request.set_worker_id(a_id);
    request.set_wait_ms(5000);
    v1::LeaseTaskResponse response;
    const grpc::Status s = stub->LeaseTask(&ctx, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_TRUE(response.has_task()) << cluster.Logs();
    task = response.task();
  }
  ASSERT_EQ(task.job_id(), job_id);
  ASSERT_TRUE(task.has_train());
  EXPECT_EQ(task.train().chain_index(), 0);
  EXPECT_EQ(task.lease_ttl_ms(), kLeaseTtlMs);
  const int64_t stale_epoch = task.lease_epoch();
  EXPECT_GT(stale_epoch, 0);
  const v1::SaeConfig& sae = task.train().spec().sae();
  const int d_sae =
      sae.d_sae() > 0 ? sae.d_sae() : sae.expansion_factor() * kDModel;

  v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(a_id);
  heartbeat.set_task_id(task.task_id());
  heartbeat.set_lease_epoch(stale_epoch);
  heartbeat.set_tokens_done(512);
  heartbeat.set_loss(1.0);
  {
    // While the lease is A's, its heartbeat is accepted; then A goes silent.
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::HeartbeatResponse response;
    const grpc::Status s = stub->Heartbeat(&ctx, heartbeat, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_FALSE(response.cancel());
  }

  ChildProcess* worker = cluster.StartWorker();
  ASSERT_NE(worker, nullptr);
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        return absl::StrContains(worker->Stderr(), "chain 0): training on");
      },
      absl::Seconds(30)))
      << cluster.Logs();
  // The task was taken from A by expiry, not before: the lease was granted
  // after before_lease and renewed after that.
  EXPECT_GE(absl::Now() - before_lease, absl::Milliseconds(kLeaseTtlMs));

  // A, unaware, delivers its result under the stale epoch.
  const std::string fake_weights =
      ConstantSaeWeights(kDModel, d_sae, kFakeWeight);
  server::testing::UploadOptions as_a;
  as_a.worker_id = a_id;
  ExpectStaleEpochRefused(
      server::testing::UploadArtifact(*stub, task.task_id(), stale_epoch,
                                      v1::ARTIFACT_KIND_SAE_WEIGHTS,
                                      fake_weights, as_a),
      task.task_id(), stale_epoch, "UploadArtifact(SAE_WEIGHTS)");
  v1::FeatureStatsBlock stats;
  for (int i = 0; i < d_sae; ++i) {
    stats.add_frequency(0.5f);
    stats.add_mean_activation(1.0f);
    stats.add_max_activation(2.0f);
    stats.add_encoder_norm(1.0f);
  }
  ExpectStaleEpochRefused(
      server::testing::UploadArtifact(*stub, task.task_id(), stale_epoch,
                                      v1::ARTIFACT_KIND_FEATURE_STATS,
                                      stats.SerializeAsString(), as_a),
      task.task_id(), stale_epoch, "UploadArtifact(FEATURE_STATS)");
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::CompleteTaskRequest request;
    request.set_worker_id(a_id);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(stale_epoch);
    v1::CheckpointMetrics* m = request.mutable_metrics();
    m->set_tokens_trained(kFakeTokens);
    m->set_wall_time_s(1.5);
    m->set_mse(0.01);
    m->set_fvu(kFakeFvu);
    m->set_l0(12.0);
    m->set_dead_fraction(0.0);
    m->set_init_fvu(1.0);
    m->set_d_in(kDModel);
    m->set_d_sae(d_sae);
    v1::CompleteTaskResponse response;
    ExpectStaleEpochRefused(stub->CompleteTask(&ctx, request, &response),
                            task.task_id(), stale_epoch, "CompleteTask");
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::HeartbeatResponse response;
    ExpectStaleEpochRefused(stub->Heartbeat(&ctx, heartbeat, &response),
                            task.task_id(), stale_epoch, "Heartbeat");
  }
  {
    // Were it accepted, this permanent failure would fail the whole job.
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::FailTaskRequest request;
    request.set_worker_id(a_id);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(stale_epoch);
    request.set_error("stale worker A gives up");
    request.set_retryable(false);
    v1::FailTaskResponse response;
    ExpectStaleEpochRefused(stub->FailTask(&ctx, request, &response),
                            task.task_id(), stale_epoch, "FailTask");
  }

  const v1::Job job = cluster.WaitForEnd(job_id, absl::Seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED)
      << job.DebugString() << cluster.Logs();
  const int chain_length = static_cast<int>(kSteps.size());
  EXPECT_EQ(job.progress().tasks_done(), chain_length);
  EXPECT_EQ(job.progress().tokens_trained(),
            kTokensFirst + (chain_length - 1) * kTokensLater);
  // The real worker trained and stored every SAE, the first included, and
  // never lost a lease.
  EXPECT_EQ(Count(worker->Stderr(), ": done in "), chain_length)
      << cluster.Logs();
  EXPECT_EQ(Count(worker->Stderr(), "result not stored"), 0) << cluster.Logs();
  EXPECT_EQ(Count(worker->Stderr(), "lease lost"), 0) << cluster.Logs();

  // One row per checkpoint, each the real worker's.
  const v1::GetCheckpointMetricsResponse metrics = cluster.Metrics(job_id);
  ExpectOneRowPerCheckpointInChainOrder(metrics);
  for (const v1::CheckpointMetrics& m : metrics.checkpoints()) {
    EXPECT_EQ(m.tokens_trained(),
              m.chain_index() == 0 ? kTokensFirst : kTokensLater)
        << m.DebugString();
    EXPECT_NE(m.fvu(), kFakeFvu) << m.DebugString();
    EXPECT_EQ(m.d_in(), kDModel);
    EXPECT_EQ(m.d_sae(), d_sae);
    EXPECT_EQ(m.resumed_from_tokens(), 0);
  }

  // The stored SAE of the contested checkpoint is the real worker's: same
  // layout as A's forgery, other values.
  v1::SaeRef ref;
  ref.set_job_id(job_id);
  ref.set_layer(kLayer);
  ref.set_step(kSteps[task.train().checkpoint_index()]);
  absl::StatusOr<std::string> stored =
      server::testing::DownloadSaeArtifact(*stub, ref);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_NE(*stored, fake_weights);
  absl::StatusOr<format::SafetensorsFile> real =
      format::SafetensorsFile::FromBytes(*stored, "stored SAE");
  ASSERT_TRUE(real.ok()) << real.status();
  absl::StatusOr<format::SafetensorsFile> forged =
      format::SafetensorsFile::FromBytes(fake_weights, "A's SAE");
  ASSERT_TRUE(forged.ok()) << forged.status();
  ASSERT_EQ(real->tensors().size(), forged->tensors().size());
  for (const format::TensorView& f : forged->tensors()) {
    const format::TensorView* r = real->Find(f.name);
    ASSERT_NE(r, nullptr) << f.name;
    EXPECT_EQ(r->shape, f.shape) << f.name;
    std::vector<float> values(r->num_elements());
    ASSERT_TRUE(format::DecodeToFloat(*r, values.data()).ok()) << f.name;
    EXPECT_LT(std::count(values.begin(), values.end(), kFakeWeight),
              static_cast<int64_t>(values.size()))
        << f.name << " holds A's constant";
  }
}

// A 1 GiB SAE through the real processes: the upload streams to disk and the
// commit writes it in parts, with the coordinator's resident set staying far
// below the artifact; then a kill -9 in the middle of the next SAE's commit
// stores either all of it or none (the staged upload survives the restart,
// so completing again stores it without another upload).
TEST_F(FaultTest,
       GigabyteResultsStayOnDiskAndAKillMidCommitStoresAllOrNothing) {
  constexpr int64_t kBig = int64_t{1} << 30;
  constexpr int64_t kSecond = int64_t{512} << 20;
  // Stated bound on the coordinator's peak resident set over its start:
  // the upload is on disk, the commit holds one 64 MiB part (and RocksDB
  // its memtables). Holding the artifact once would pass it.
  constexpr int64_t kRssBound = int64_t{384} << 20;
  constexpr int64_t kLeaseTtlMs = 120000;

  Cluster cluster("fault-large");
  ASSERT_TRUE(
      cluster.StartCoordinator(0, kLeaseTtlMs, {"--retry_backoff_ms", "0"}));
  const int port = cluster.port();
  const std::string job_id = cluster.Submit(JobJson(32 * 1600, 32 * 320));
  ASSERT_FALSE(job_id.empty());
  std::unique_ptr<v1::WorkerService::Stub> stub =
      v1::WorkerService::NewStub(grpc::CreateChannel(
          cluster.Address(), grpc::InsecureChannelCredentials()));
  std::string worker_id;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::RegisterWorkerRequest request;
    request.mutable_capabilities()->set_device("cpu");
    v1::RegisterWorkerResponse response;
    ASSERT_TRUE(stub->RegisterWorker(&ctx, request, &response).ok());
    worker_id = response.worker_id();
  }
  const auto lease = [&]() -> v1::Task {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, kRpcDeadline);
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker_id);
    request.set_wait_ms(5000);
    v1::LeaseTaskResponse response;
    const grpc::Status s = stub->LeaseTask(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.task();
  };
  const auto upload_stats = [&](const v1::Task& task) {
    const v1::SaeConfig& sae = task.train().spec().sae();
    const int d_sae =
        sae.d_sae() > 0 ? sae.d_sae() : sae.expansion_factor() * kDModel;
    v1::FeatureStatsBlock stats;
    for (int i = 0; i < d_sae; ++i) {
      stats.add_frequency(0.5f);
      stats.add_mean_activation(1.0f);
      stats.add_max_activation(2.0f);
      stats.add_encoder_norm(1.0f);
    }
    server::testing::UploadOptions options;
    options.worker_id = worker_id;
    const grpc::Status s = server::testing::UploadArtifact(
        *stub, task.task_id(), task.lease_epoch(),
        v1::ARTIFACT_KIND_FEATURE_STATS, stats.SerializeAsString(), options);
    EXPECT_TRUE(s.ok()) << s.error_message();
  };
  const auto complete = [&](const v1::Task& task) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, absl::Minutes(5));
    v1::CompleteTaskRequest request;
    request.set_worker_id(worker_id);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    request.mutable_metrics()->set_tokens_trained(1000);
    v1::CompleteTaskResponse response;
    return stub->CompleteTask(&ctx, request, &response);
  };
  const auto ref_of = [&](const v1::Task& task) {
    v1::SaeRef ref;
    ref.set_job_id(job_id);
    ref.set_layer(kLayer);
    ref.set_step(task.train()
                     .spec()
                     .model()
                     .checkpoints(task.train().checkpoint_index())
                     .step());
    return ref;
  };

  const v1::Task first = lease();
  ASSERT_TRUE(first.has_train()) << cluster.Logs();
  const pid_t pid = cluster.coordinator()->pid();
  const int64_t rss_start = ProcessMemory(pid, "VmHWM");
  ASSERT_GT(rss_start, 0);
  SizeAndCrc sent;
  const v1::SaeConfig& sae = first.train().spec().sae();
  const int64_t d_sae =
      sae.d_sae() > 0 ? sae.d_sae() : sae.expansion_factor() * kDModel;
  grpc::Status s = UploadPattern(*stub, worker_id, first.task_id(),
                                 first.lease_epoch(), d_sae, kBig, 1, &sent);
  ASSERT_TRUE(s.ok()) << s.error_message() << cluster.Logs();
  const int64_t rss_upload = ProcessMemory(pid, "VmHWM");
  upload_stats(first);
  s = complete(first);
  ASSERT_TRUE(s.ok()) << s.error_message() << cluster.Logs();
  const int64_t rss_commit = ProcessMemory(pid, "VmHWM");
  std::printf(
      "coordinator peak RSS: %.0f MiB at start, %.0f MiB after a 1 GiB "
      "upload, %.0f MiB after its commit\n",
      rss_start / 1048576.0, rss_upload / 1048576.0, rss_commit / 1048576.0);
  EXPECT_LT(rss_upload - rss_start, kRssBound);
  EXPECT_LT(rss_commit - rss_start, kRssBound);
  absl::StatusOr<SizeAndCrc> stored =
      DownloadedSizeAndCrc(*stub, ref_of(first));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->size, kBig);
  EXPECT_EQ(stored->crc32c, sent.crc32c);
  // The staged file went with the commit.
  EXPECT_TRUE(std::filesystem::is_empty(cluster.dir() + "/data/staging"));

  // The next SAE: kill -9 while its parts are being written.
  const v1::Task second = lease();
  ASSERT_TRUE(second.has_train()) << cluster.Logs();
  ASSERT_EQ(second.train().chain_index(), 1);
  ASSERT_TRUE(UploadPattern(*stub, worker_id, second.task_id(),
                            second.lease_epoch(), d_sae, kSecond, 2, &sent)
                  .ok());
  upload_stats(second);
  std::thread completing([&] { complete(second); });
  absl::SleepFor(absl::Milliseconds(300));
  cluster.coordinator()->Signal(SIGKILL);
  completing.join();
  ASSERT_TRUE(cluster.coordinator()->Wait(absl::Seconds(10)).ok());
  ASSERT_TRUE(
      cluster.StartCoordinator(port, kLeaseTtlMs, {"--retry_backoff_ms", "0"}));

  // All or nothing: the stored SAE is the whole upload, or there is none
  // and no row for it either.
  stored = DownloadedSizeAndCrc(*stub, ref_of(second));
  bool ok = false;
  v1::GetCheckpointMetricsResponse rows = cluster.Metrics(job_id, &ok);
  ASSERT_TRUE(ok);
  if (stored.ok()) {
    std::printf("the kill came after the commit: all of it is stored\n");
    EXPECT_EQ(stored->size, kSecond);
    EXPECT_EQ(stored->crc32c, sent.crc32c);
    EXPECT_EQ(rows.checkpoints_size(), 2);
  } else {
    std::printf("the kill came mid-commit: none of it is stored\n");
    ASSERT_TRUE(absl::IsNotFound(stored.status())) << stored.status();
    EXPECT_EQ(rows.checkpoints_size(), 1);
    EXPECT_TRUE(absl::StrContains(cluster.coordinator()->Stderr(),
                                  "removed the parts of 1 SAE(s)"))
        << cluster.Logs();
    // The lease and the staged upload survived: completing again stores it
    // without sending it again.
    s = complete(second);
    ASSERT_TRUE(s.ok()) << s.error_message() << cluster.Logs();
    stored = DownloadedSizeAndCrc(*stub, ref_of(second));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->size, kSecond);
    EXPECT_EQ(stored->crc32c, sent.crc32c);
  }
  rows = cluster.Metrics(job_id, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(rows.checkpoints_size(), 2);
  EXPECT_EQ(rows.checkpoints(1).step(), kSteps[1]);
  // The first SAE is unchanged by all of it.
  stored = DownloadedSizeAndCrc(*stub, ref_of(first));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->size, kBig);
}

}  // namespace
}  // namespace saetrack
