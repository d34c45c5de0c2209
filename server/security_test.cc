// The attacks of the security review, replayed against a real coordinator
// (in process, over real loopback gRPC and a real RocksDB in a temp dir) with
// data roots: reading files outside the roots through a job's token file,
// forging another worker's results, storing impossible numbers, and backups
// written anywhere. Each must be refused with the right code, and nothing may
// be stored or returned.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/access_tokens.h"
#include "saetrack/v1/admin.grpc.pb.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "server/coordinator.h"
#include "server/internal/test_fixtures.h"
#include "server/testing/worker_rpc_testing.h"

namespace saetrack {
namespace {

using ::saetrack::server::testing::MakeSpec;
using ::saetrack::server::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kDIn = 64;    // MakeSpec's hidden size.
constexpr int kDSae = 128;  // Its expansion 2 x 64.

grpc::ClientContext* WithDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(20));
  return ctx;
}

// SAE weights of the spec's shape.
std::string Weights() {
  format::SafetensorsWriter writer;
  const std::vector<float> values(kDIn * kDSae, 0.01f);
  const std::pair<const char*, std::vector<int64_t>> tensors[] = {
      {"W_enc", {kDIn, kDSae}},
      {"b_enc", {kDSae}},
      {"W_dec", {kDSae, kDIn}},
      {"b_dec", {kDIn}}};
  for (const auto& [name, shape] : tensors) {
    EXPECT_TRUE(writer.AddF32(name, shape, values.data()).ok());
  }
  return writer.Serialize();
}

v1::FeatureStatsBlock Stats() {
  v1::FeatureStatsBlock stats;
  for (int i = 0; i < kDSae; ++i) {
    stats.add_frequency(0.01f);
    stats.add_mean_activation(0.5f);
    stats.add_max_activation(2.0f);
    stats.add_encoder_norm(1.0f);
  }
  return stats;
}

// An analysis block over `positions` rows whose top positions are
// `position(i)` for feature i (one per feature, the rest padding).
v1::FeatureAnalysisBlock Analysis(int top_k, int64_t positions,
                                  int32_t first_position) {
  v1::FeatureAnalysisBlock block;
  block.set_analysis_positions(positions);
  block.set_top_k(top_k);
  for (int i = 0; i < kDSae; ++i) {
    block.add_frequency(0.01f);
    block.add_mean_activation(0.5f);
    block.add_max_activation(2.0f);
    block.add_progress_activation(0.1f);
    block.add_progress_feature(0.1f);
    for (int j = 0; j < top_k; ++j) {
      block.add_top_positions(j == 0 ? first_position : -1);
      block.add_top_values(j == 0 ? 1.0f : 0.0f);
      block.add_top_tokens(j == 0 ? 0 : -1);
    }
  }
  return block;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path() + "/root";
    outside_ = dir_.path() + "/outside";
    std::filesystem::create_directories(root_);
    std::filesystem::create_directories(outside_);
    std::filesystem::create_directories(dir_.path() + "/backups");
    // A secret as large as the job's token file, so that a read that
    // followed a link would succeed.
    secret_ = outside_ + "/secret";
    std::string bytes;
    while (bytes.size() < 8192) bytes += "TOP-SECRET-KEY!!";
    std::ofstream(secret_, std::ios::binary) << bytes;
    CoordinatorOptions options = Options();
    absl::StatusOr<std::unique_ptr<Coordinator>> c =
        Coordinator::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = *std::move(c);
    auto channel =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", coordinator_->port()),
                            grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel);
    queries_ = v1::QueryService::NewStub(channel);
    workers_ = v1::WorkerService::NewStub(channel);
    admin_ = v1::AdminService::NewStub(channel);
  }
  void TearDown() override {
    if (coordinator_) coordinator_->Shutdown();
  }

  CoordinatorOptions Options() const {
    CoordinatorOptions options;
    options.data_dir = dir_.path() + "/data";
    options.listen_address = "127.0.0.1:0";
    options.metrics_listen_address = "";
    options.data_roots = {root_};
    options.backup_root = dir_.path() + "/backups";
    options.shutdown_grace_ms = 1000;
    return options;
  }

  // A job over files under the root, with an analysis pass of 4 contexts.
  v1::JobSpec Spec() const {
    v1::JobSpec spec = MakeSpec(root_, {0});
    spec.mutable_analysis()->set_analysis_tokens(128);
    spec.mutable_analysis()->set_top_k(2);
    return spec;
  }

  grpc::Status Submit(const v1::JobSpec& spec, std::string* job_id) {
    grpc::ClientContext ctx;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    v1::SubmitJobResponse response;
    grpc::Status s = jobs_->SubmitJob(WithDeadline(&ctx), request, &response);
    if (job_id != nullptr) *job_id = response.job().job_id();
    return s;
  }

  std::string Register() {
    grpc::ClientContext ctx;
    v1::RegisterWorkerResponse response;
    EXPECT_TRUE(workers_
                    ->RegisterWorker(WithDeadline(&ctx),
                                     v1::RegisterWorkerRequest(), &response)
                    .ok());
    return response.worker_id();
  }

  std::optional<v1::Task> Lease(const std::string& worker) {
    grpc::ClientContext ctx;
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker);
    request.set_wait_ms(2000);
    v1::LeaseTaskResponse response;
    EXPECT_TRUE(
        workers_->LeaseTask(WithDeadline(&ctx), request, &response).ok());
    if (!response.has_task()) return std::nullopt;
    return response.task();
  }

  grpc::Status Upload(const std::string& worker, const v1::Task& task,
                      v1::ArtifactKind kind, const std::string& bytes) {
    server::testing::UploadOptions options;
    options.worker_id = worker;
    return server::testing::UploadArtifact(
        *workers_, task.task_id(), task.lease_epoch(), kind, bytes, options);
  }

  grpc::Status Heartbeat(const std::string& worker, const std::string& task_id,
                         int64_t epoch) {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest request;
    request.set_worker_id(worker);
    request.set_task_id(task_id);
    request.set_lease_epoch(epoch);
    v1::HeartbeatResponse response;
    return workers_->Heartbeat(WithDeadline(&ctx), request, &response);
  }

  grpc::Status Complete(const std::string& worker, const v1::Task& task,
                        const v1::CheckpointMetrics& metrics = Good()) {
    grpc::ClientContext ctx;
    v1::CompleteTaskRequest request;
    request.set_worker_id(worker);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    if (task.has_train()) *request.mutable_metrics() = metrics;
    v1::CompleteTaskResponse response;
    return workers_->CompleteTask(WithDeadline(&ctx), request, &response);
  }

  grpc::Status Fail(const std::string& worker, const std::string& task_id,
                    int64_t epoch) {
    grpc::ClientContext ctx;
    v1::FailTaskRequest request;
    request.set_worker_id(worker);
    request.set_task_id(task_id);
    request.set_lease_epoch(epoch);
    request.set_error("forged failure");
    request.set_retryable(false);
    v1::FailTaskResponse response;
    return workers_->FailTask(WithDeadline(&ctx), request, &response);
  }

  static v1::CheckpointMetrics Good() {
    v1::CheckpointMetrics m;
    m.set_tokens_trained(8192);
    m.set_fvu(0.2);
    m.set_l0(5);
    m.set_dead_fraction(0.1);
    m.set_d_in(kDIn);
    return m;
  }

  // Uploads both training artifacts of `task` as `worker`.
  void UploadTraining(const std::string& worker, const v1::Task& task) {
    grpc::Status s =
        Upload(worker, task, v1::ARTIFACT_KIND_SAE_WEIGHTS, Weights());
    ASSERT_TRUE(s.ok()) << s.error_message();
    s = Upload(worker, task, v1::ARTIFACT_KIND_FEATURE_STATS,
               Stats().SerializeAsString());
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  int StoredCheckpoints(const std::string& job_id) {
    grpc::ClientContext ctx;
    v1::GetCheckpointMetricsRequest request;
    request.set_job_id(job_id);
    request.set_layer(0);
    v1::GetCheckpointMetricsResponse response;
    grpc::Status s =
        queries_->GetCheckpointMetrics(WithDeadline(&ctx), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.checkpoints_size();
  }

  v1::JobState State(const std::string& job_id) {
    grpc::ClientContext ctx;
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    v1::Job job;
    EXPECT_TRUE(jobs_->GetJob(WithDeadline(&ctx), request, &job).ok());
    return job.state();
  }

  grpc::Status History(const std::string& job_id, v1::FeatureHistory* out) {
    grpc::ClientContext ctx;
    v1::GetFeatureHistoryRequest request;
    request.set_job_id(job_id);
    request.set_layer(0);
    request.set_feature_id(3);
    request.set_include_contexts(true);
    return queries_->GetFeatureHistory(WithDeadline(&ctx), request, out);
  }

  // Trains the job's one SAE as `worker` and leases its analysis task.
  v1::Task TrainThenLeaseAnalysis(const std::string& worker) {
    std::optional<v1::Task> train = Lease(worker);
    EXPECT_TRUE(train.has_value() && train->has_train());
    if (!train.has_value()) return v1::Task();
    UploadTraining(worker, *train);
    grpc::Status s = Complete(worker, *train);
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::optional<v1::Task> analyse = Lease(worker);
    EXPECT_TRUE(analyse.has_value() && analyse->has_analyse());
    return analyse.value_or(v1::Task());
  }

  TempDir dir_;
  std::string root_;
  std::string outside_;
  std::string secret_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::QueryService::Stub> queries_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

// --- reading files outside the roots ----------------------------------------

TEST_F(SecurityTest, ATokenFileOutsideTheRootsIsRefusedAlikeWhetherItExists) {
  v1::JobSpec existing = Spec();
  existing.mutable_data()->set_tokens_path(secret_);
  v1::JobSpec missing = Spec();
  const std::string nowhere = outside_ + "/no-such-file";
  missing.mutable_data()->set_tokens_path(nowhere);
  const grpc::Status a = Submit(existing, nullptr);
  const grpc::Status b = Submit(missing, nullptr);
  EXPECT_EQ(a.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(b.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(a.error_message(),
              HasSubstr("spec.data.tokens_path: '" + secret_ +
                        "' is outside the data roots"));
  // Nothing tells the two apart but the path the client chose: no size,
  // no "does not exist".
  EXPECT_EQ(absl::StrReplaceAll(a.error_message(), {{secret_, "P"}}),
            absl::StrReplaceAll(b.error_message(), {{nowhere, "P"}}));
  // A path that climbs out of the root, and a symlink inside it leading out.
  v1::JobSpec climbing = Spec();
  climbing.mutable_data()->set_tokens_path(root_ + "/../outside/secret");
  grpc::Status c = Submit(climbing, nullptr);
  EXPECT_EQ(c.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(c.error_message(), HasSubstr("'..' component"));
  ASSERT_EQ(::symlink(secret_.c_str(), (root_ + "/link").c_str()), 0);
  v1::JobSpec linked = Spec();
  linked.mutable_data()->set_tokens_path(root_ + "/link");
  c = Submit(linked, nullptr);
  EXPECT_EQ(c.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(c.error_message(), HasSubstr("is outside the data roots"));
}

TEST_F(SecurityTest,
       AForgedAnalysisBlockPointingBeyondTheAnalysisSetIsRefused) {
  std::string job;
  ASSERT_TRUE(Submit(Spec(), &job).ok());
  const std::string worker = Register();
  const v1::Task analyse = TrainThenLeaseAnalysis(worker);
  ASSERT_TRUE(analyse.has_analyse());
  const int top_k = analyse.analyse().spec().analysis().top_k();
  // A block claiming a huge analysis set, to point anywhere in the file.
  grpc::Status s =
      Upload(worker, analyse, v1::ARTIFACT_KIND_FEATURE_ANALYSIS,
             Analysis(top_k, int64_t{1} << 30, 1 << 29).SerializeAsString());
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = Complete(worker, analyse);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("FEATURE_ANALYSIS.analysis_positions: 1073741824"));
  // Within the claimed set but beyond the spec's 128 rows, and negative.
  for (int32_t position : {128, -5}) {
    s = Upload(worker, analyse, v1::ARTIFACT_KIND_FEATURE_ANALYSIS,
               Analysis(top_k, 128, position).SerializeAsString());
    ASSERT_TRUE(s.ok()) << s.error_message();
    s = Complete(worker, analyse);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(),
                HasSubstr("FEATURE_ANALYSIS.top_positions[0]"));
  }
  v1::FeatureHistory history;
  s = History(job, &history);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(history.points_size(), 1);
  EXPECT_EQ(history.points(0).contexts_size(), 0);  // Nothing stored.
  EXPECT_NE(State(job), v1::JOB_STATE_SUCCEEDED);
  // The lease stayed: the real result is still taken.
  s = Upload(worker, analyse, v1::ARTIFACT_KIND_FEATURE_ANALYSIS,
             Analysis(top_k, 128, 100).SerializeAsString());
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = Complete(worker, analyse);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

TEST_F(SecurityTest, ATokenFileSwappedForASymlinkAfterSubmissionReadsNothing) {
  std::string job;
  ASSERT_TRUE(Submit(Spec(), &job).ok());
  const std::string worker = Register();
  const v1::Task analyse = TrainThenLeaseAnalysis(worker);
  ASSERT_TRUE(analyse.has_analyse());
  const int top_k = analyse.analyse().spec().analysis().top_k();
  grpc::Status s = Upload(worker, analyse, v1::ARTIFACT_KIND_FEATURE_ANALYSIS,
                          Analysis(top_k, 128, 100).SerializeAsString());
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = Complete(worker, analyse);
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::FeatureHistory history;
  s = History(job, &history);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(history.points_size(), 1);
  ASSERT_EQ(history.points(0).contexts_size(), 1);
  EXPECT_GT(history.points(0).contexts(0).window_size(), 0);

  // The token file becomes a link to the secret.
  const std::string tokens = root_ + "/tokens.bin";
  ASSERT_EQ(::unlink(tokens.c_str()), 0);
  ASSERT_EQ(::symlink(secret_.c_str(), tokens.c_str()), 0);
  v1::FeatureHistory swapped;
  s = History(job, &swapped);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("symbolic link"));
  EXPECT_EQ(swapped.points_size(), 0);
  // A directory on the path swapped for a link leading out: refused too.
  ASSERT_EQ(::unlink(tokens.c_str()), 0);
  std::ofstream(outside_ + "/tokens.bin", std::ios::binary)
      << std::string(8192, 'S');
  std::filesystem::rename(root_, dir_.path() + "/root-moved");
  ASSERT_EQ(::symlink(outside_.c_str(), root_.c_str()), 0);
  s = History(job, &swapped);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("outside the data roots"));
  EXPECT_EQ(swapped.points_size(), 0);
}

// --- forged results ----------------------------------------------------------

TEST_F(SecurityTest, AnotherWorkersLeaseCannotBeRenewedFedCompletedOrFailed) {
  std::string job;
  ASSERT_TRUE(Submit(Spec(), &job).ok());
  const std::string holder = Register();
  const std::string forger = Register();
  EXPECT_NE(holder, forger);
  // Ids are unguessable: the sequence plus 64 random bits.
  EXPECT_THAT(holder, ::testing::MatchesRegex("worker-[0-9]{6}-[0-9a-f]{16}"));
  std::optional<v1::Task> task = Lease(holder);
  ASSERT_TRUE(task.has_value());
  const std::string id = task->task_id();
  const int64_t epoch = task->lease_epoch();
  auto expect_refused = [&](const grpc::Status& s, const std::string& call) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED)
        << call << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), Not(HasSubstr(holder))) << call;
    EXPECT_THAT(s.error_message(), Not(HasSubstr("current epoch"))) << call;
  };
  expect_refused(Heartbeat(forger, id, epoch), "Heartbeat");
  expect_refused(
      Upload(forger, *task, v1::ARTIFACT_KIND_SAE_WEIGHTS, Weights()),
      "UploadArtifact");
  expect_refused(Complete(forger, *task), "CompleteTask");
  expect_refused(Fail(forger, id, epoch), "FailTask");
  // A guessed wrong epoch tells nothing about the right one either.
  const grpc::Status stale = Heartbeat(forger, id, epoch + 1);
  expect_refused(stale, "Heartbeat(stale)");
  EXPECT_THAT(stale.error_message(),
              Not(HasSubstr(absl::StrCat("epoch ", epoch, ")"))));
  // The holder's uploads are not the forger's to complete either.
  UploadTraining(holder, *task);
  expect_refused(Complete(forger, *task), "CompleteTask(after upload)");
  EXPECT_EQ(StoredCheckpoints(job), 0);
  EXPECT_EQ(State(job), v1::JOB_STATE_RUNNING);
  // The real worker is unaffected.
  EXPECT_TRUE(Heartbeat(holder, id, epoch).ok());
  const grpc::Status s = Complete(holder, *task);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(StoredCheckpoints(job), 1);
}

TEST_F(SecurityTest, ImpossibleNumbersAreRefusedAndNothingIsStored) {
  std::string job;
  ASSERT_TRUE(Submit(Spec(), &job).ok());
  const std::string worker = Register();
  std::optional<v1::Task> task = Lease(worker);
  ASSERT_TRUE(task.has_value());
  UploadTraining(worker, *task);
  struct Forgery {
    const char* field;
    v1::CheckpointMetrics metrics;
  };
  std::vector<Forgery> forgeries;
  v1::CheckpointMetrics m = Good();
  m.set_fvu(1e-9);
  m.set_tokens_trained(-999999999);
  forgeries.push_back({"metrics.tokens_trained: -999999999", m});
  m = Good();
  m.set_dead_fraction(-5);
  forgeries.push_back({"metrics.dead_fraction: -5", m});
  m = Good();
  m.set_fvu(std::nan(""));
  forgeries.push_back({"metrics.fvu: nan", m});
  m = Good();
  m.set_step(12345);
  forgeries.push_back({"metrics.step: 12345", m});
  for (const Forgery& f : forgeries) {
    const grpc::Status s = Complete(worker, *task, f.metrics);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << f.field << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(f.field));
    EXPECT_EQ(StoredCheckpoints(job), 0) << f.field;
    EXPECT_NE(State(job), v1::JOB_STATE_SUCCEEDED) << f.field;
  }
  // Feature stats out of range, and weights of another width.
  v1::FeatureStatsBlock stats = Stats();
  stats.set_frequency(7, -1.0f);
  ASSERT_TRUE(Upload(worker, *task, v1::ARTIFACT_KIND_FEATURE_STATS,
                     stats.SerializeAsString())
                  .ok());
  grpc::Status s = Complete(worker, *task);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("FEATURE_STATS.frequency[7]"));
  ASSERT_TRUE(Upload(worker, *task, v1::ARTIFACT_KIND_FEATURE_STATS,
                     Stats().SerializeAsString())
                  .ok());
  format::SafetensorsWriter narrow;
  const std::vector<float> zeros(kDIn * 8, 0.0f);
  ASSERT_TRUE(narrow.AddF32("W_enc", {kDIn, 8}, zeros.data()).ok());
  ASSERT_TRUE(narrow.AddF32("b_enc", {8}, zeros.data()).ok());
  ASSERT_TRUE(narrow.AddF32("W_dec", {8, kDIn}, zeros.data()).ok());
  ASSERT_TRUE(narrow.AddF32("b_dec", {kDIn}, zeros.data()).ok());
  ASSERT_TRUE(
      Upload(worker, *task, v1::ARTIFACT_KIND_SAE_WEIGHTS, narrow.Serialize())
          .ok());
  s = Complete(worker, *task);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("SAE_WEIGHTS.W_enc"));
  EXPECT_EQ(StoredCheckpoints(job), 0);

  // An implausibly good but possible FVU is a number, not a forgery the
  // coordinator can tell: it is stored.
  ASSERT_TRUE(
      Upload(worker, *task, v1::ARTIFACT_KIND_SAE_WEIGHTS, Weights()).ok());
  m = Good();
  m.set_fvu(1e-9);
  s = Complete(worker, *task, m);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(StoredCheckpoints(job), 1);
}

// --- starting without roots
// ---------------------------------------------------

TEST_F(SecurityTest, ASecuredOrExposedCoordinatorNeedsDataRoots) {
  CoordinatorOptions options = Options();
  options.data_dir = dir_.path() + "/other";
  options.backup_root = "";
  options.data_roots.clear();
  options.token_file = dir_.path() + "/tokens.txt";
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Start(options);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(), HasSubstr("--data_roots"));
  options.token_file = "";
  options.listen_address = "0.0.0.0:0";
  c = Coordinator::Start(options);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(), HasSubstr("--data_roots"));
  EXPECT_FALSE(std::filesystem::exists(options.data_dir));
  // Explicitly insecure, on loopback here.
  options.listen_address = "[::1]:0";
  options.token_file = dir_.path() + "/tokens.txt";
  ASSERT_TRUE(CreateAccessToken(options.token_file, "reader", "someone").ok());
  options.insecure = true;
  c = Coordinator::Start(options);
  EXPECT_TRUE(c.ok()) << c.status();
}

// --- backups
// ------------------------------------------------------------------

TEST_F(SecurityTest, BackupsGoOnlyIntoTheBackupRootByNameOwnerOnly) {
  auto backup = [&](const std::string& name, const std::string& to_dir = "") {
    grpc::ClientContext ctx;
    v1::BackupRequest request;
    request.set_name(name);
    request.set_to_dir(to_dir);
    v1::BackupResponse response;
    return admin_->Backup(WithDeadline(&ctx), request, &response);
  };
  const std::string data = dir_.path() + "/data";
  for (const std::string& name :
       {std::string("../escaped"), std::string("a/b"), std::string(".."),
        std::string("."), std::string(""), data + "/db/inside"}) {
    const grpc::Status s = backup(name);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_THAT(s.error_message(), HasSubstr("name:")) << name;
  }
  // The old request form, into the live data directory: refused.
  grpc::Status s = backup("", data + "/db/copy");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("to_dir:"));
  EXPECT_FALSE(std::filesystem::exists(data + "/db/copy"));
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/escaped"));

  s = backup("nightly-1");
  ASSERT_TRUE(s.ok()) << s.error_message();
  const std::string made = dir_.path() + "/backups/nightly-1";
  struct stat info;
  ASSERT_EQ(::stat(made.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 07777, 0700);
  int files = 0;
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(made)) {
    ASSERT_EQ(::stat(entry.path().c_str(), &info), 0);
    EXPECT_EQ(info.st_mode & 07777, entry.is_directory() ? 0700 : 0600)
        << entry.path();
    ++files;
  }
  EXPECT_GT(files, 0);
  s = backup("nightly-1");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);

  // Without a backup root there are no backups; a root overlapping the
  // data directory is refused at start.
  coordinator_->Shutdown();
  coordinator_.reset();
  CoordinatorOptions options = Options();
  options.backup_root = "";
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Start(options);
  ASSERT_TRUE(c.ok()) << c.status();
  admin_ = v1::AdminService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*c)->port()),
                          grpc::InsecureChannelCredentials()));
  s = backup("nightly-2");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("--backup_root"));
  (*c)->Shutdown();
  c->reset();
  for (const std::string& root : {data, data + "/db", dir_.path()}) {
    options.backup_root = root;
    c = Coordinator::Start(options);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << root;
    EXPECT_THAT(c.status().message(), HasSubstr("--backup_root")) << root;
  }
}

}  // namespace
}  // namespace saetrack
