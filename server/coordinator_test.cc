// The coordinator over real gRPC on port 0, against a temporary RocksDB.
#include "server/coordinator.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "format/crc32c.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "saetrack/v1/admin.grpc.pb.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/test_fixtures.h"
#include "server/testing/worker_rpc_testing.h"

namespace saetrack {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::saetrack::server::testing::HttpGet;
using ::saetrack::server::testing::MakeSpec;
using ::saetrack::server::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int kDSae = 128;  // MakeSpec: expansion 2 x hidden_size 64.
constexpr int64_t kTtlMs = 10000;

grpc::ClientContext* WithDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(20));
  return ctx;
}

// Registers a worker through `workers` and leases a task for it.
void RegisterAndLease(v1::WorkerService::Stub& workers, std::string* worker_id,
                      v1::LeaseTaskResponse* leased) {
  grpc::ClientContext register_ctx;
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(workers
                  .RegisterWorker(WithDeadline(&register_ctx),
                                  v1::RegisterWorkerRequest(), &registered)
                  .ok());
  grpc::ClientContext lease_ctx;
  v1::LeaseTaskRequest lease;
  lease.set_worker_id(registered.worker_id());
  ASSERT_TRUE(workers.LeaseTask(WithDeadline(&lease_ctx), lease, leased).ok());
  ASSERT_TRUE(leased->has_task());
  *worker_id = registered.worker_id();
}

class CoordinatorTest : public testing::Test {
 protected:
  void SetUp() override { Start(); }
  void TearDown() override {
    if (coordinator_) coordinator_->Shutdown();
  }

  void Start(int max_attempts = 3,
             int64_t max_staged_bytes = int64_t{8} << 30) {
    CoordinatorOptions options;
    options.max_staged_bytes = max_staged_bytes;
    options.data_dir = data_.path() + "/data";
    options.listen_address = "127.0.0.1:0";
    options.metrics_listen_address = "";
    // Backups land where a restored coordinator finds them (copy/db).
    options.backup_root = data_.path() + "/copy";
    std::filesystem::create_directories(options.backup_root);
    options.lease_ttl_ms = kTtlMs;
    options.max_attempts = max_attempts;
    options.max_artifact_bytes = 1 << 20;
    options.clock = &clock_;
    // Leases are checked lazily on worker calls; no background timing.
    options.lease_check_interval_ms = 3600 * 1000;
    options.shutdown_grace_ms = 1000;
    absl::StatusOr<std::unique_ptr<Coordinator>> c =
        Coordinator::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = *std::move(c);
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", coordinator_->port()),
                            grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel_);
    queries_ = v1::QueryService::NewStub(channel_);
    workers_ = v1::WorkerService::NewStub(channel_);
  }

  void Restart() {
    coordinator_->Shutdown();
    coordinator_.reset();
    Start();
  }

  grpc::Status Submit(const v1::JobSpec& spec, const std::string& request_id,
                      v1::SubmitJobResponse* response) {
    grpc::ClientContext ctx;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    request.set_request_id(request_id);
    return jobs_->SubmitJob(WithDeadline(&ctx), request, response);
  }

  std::string SubmitOk(const v1::JobSpec& spec) {
    v1::SubmitJobResponse response;
    grpc::Status s = Submit(spec, "", &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.job().job_id();
  }

  v1::Job GetJob(const std::string& job_id) {
    grpc::ClientContext ctx;
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    v1::Job job;
    grpc::Status s = jobs_->GetJob(WithDeadline(&ctx), request, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  v1::ListJobsResponse ListJobs(int page_size = 0,
                                const std::string& token = "") {
    grpc::ClientContext ctx;
    v1::ListJobsRequest request;
    request.set_page_size(page_size);
    request.set_page_token(token);
    v1::ListJobsResponse response;
    grpc::Status s = jobs_->ListJobs(WithDeadline(&ctx), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

  std::string Register() {
    grpc::ClientContext ctx;
    v1::RegisterWorkerRequest request;
    request.set_name("test");
    v1::RegisterWorkerResponse response;
    grpc::Status s =
        workers_->RegisterWorker(WithDeadline(&ctx), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.heartbeat_interval_ms(), kTtlMs / 3);
    return response.worker_id();
  }

  std::optional<v1::Task> Lease(const std::string& worker,
                                int64_t wait_ms = 0) {
    grpc::ClientContext ctx;
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker);
    request.set_wait_ms(wait_ms);
    v1::LeaseTaskResponse response;
    grpc::Status s =
        workers_->LeaseTask(WithDeadline(&ctx), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!response.has_task()) return std::nullopt;
    holders_[response.task().task_id()] = worker;
    return response.task();
  }

  grpc::Status Heartbeat(const v1::Task& task, int64_t epoch,
                         v1::HeartbeatResponse* response = nullptr) {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest request;
    request.set_worker_id(holders_[task.task_id()]);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(epoch);
    v1::HeartbeatResponse ignored;
    return workers_->Heartbeat(WithDeadline(&ctx), request,
                               response ? response : &ignored);
  }

  // Uploads `data` in chunks of `chunk_bytes`; `crc` overrides the checksum.
  grpc::Status Upload(const std::string& task_id, int64_t epoch,
                      v1::ArtifactKind kind, const std::string& data,
                      size_t chunk_bytes = 1000,
                      std::optional<uint32_t> crc = std::nullopt) {
    server::testing::UploadOptions options;
    options.worker_id = holders_[task_id];
    options.chunk_bytes = chunk_bytes;
    options.crc32c = crc;
    v1::UploadArtifactResponse response;
    grpc::Status s = server::testing::UploadArtifact(
        *workers_, task_id, epoch, kind, data, options, &response);
    if (s.ok()) {
      EXPECT_EQ(response.bytes_received(), static_cast<int64_t>(data.size()));
    }
    return s;
  }

  static v1::FeatureStatsBlock Stats(int chain_index) {
    v1::FeatureStatsBlock stats;
    for (int i = 0; i < kDSae; ++i) {
      stats.add_frequency(0.001f * i);
      stats.add_mean_activation(0.5f + chain_index);
      stats.add_max_activation(2.0f * i);
      if (chain_index > 0) stats.add_decoder_cos_prev(i / float(kDSae));
      stats.add_encoder_norm(1.0f);
    }
    return stats;
  }

  // SAE weights of the spec's shape (d_in 64, d_sae kDSae), distinct per
  // task; large enough to span several chunks and a blob file.
  static std::string Weights(const v1::Task& task) {
    constexpr int kDIn = 64;
    format::SafetensorsWriter writer;
    writer.SetMetadata("task", task.task_id());
    const std::vector<float> values(kDIn * kDSae,
                                    0.01f * (task.train().chain_index() + 1));
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

  grpc::Status CompleteTask(const v1::Task& task, int64_t epoch,
                            int64_t tokens = 1000,
                            const std::vector<int64_t>& histogram = {}) {
    grpc::ClientContext ctx;
    v1::CompleteTaskRequest request;
    request.set_worker_id(holders_[task.task_id()]);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(epoch);
    request.mutable_metrics()->set_tokens_trained(tokens);
    request.mutable_metrics()->set_fvu(0.1 * (task.train().chain_index() + 1));
    request.mutable_metrics()->set_d_in(64);
    for (int64_t count : histogram) {
      request.mutable_metrics()->add_density_histogram(count);
    }
    v1::CompleteTaskResponse response;
    return workers_->CompleteTask(WithDeadline(&ctx), request, &response);
  }

  // Uploads both artifacts and completes; asserts success.
  void RunToCompletion(const v1::Task& task) {
    const int64_t epoch = task.lease_epoch();
    ASSERT_TRUE(Upload(task.task_id(), epoch, v1::ARTIFACT_KIND_SAE_WEIGHTS,
                       Weights(task))
                    .ok());
    ASSERT_TRUE(Upload(task.task_id(), epoch, v1::ARTIFACT_KIND_FEATURE_STATS,
                       Stats(task.train().chain_index()).SerializeAsString())
                    .ok());
    grpc::Status s = CompleteTask(task, epoch);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  grpc::Status FeatureHistory(const std::string& job, int layer, int feature,
                              v1::FeatureHistory* out) {
    grpc::ClientContext ctx;
    v1::GetFeatureHistoryRequest request;
    request.set_job_id(job);
    request.set_layer(layer);
    request.set_feature_id(feature);
    return queries_->GetFeatureHistory(WithDeadline(&ctx), request, out);
  }

  grpc::Status Metrics(const std::string& job, int layer,
                       v1::GetCheckpointMetricsResponse* out) {
    grpc::ClientContext ctx;
    v1::GetCheckpointMetricsRequest request;
    request.set_job_id(job);
    request.set_layer(layer);
    return queries_->GetCheckpointMetrics(WithDeadline(&ctx), request, out);
  }

  // grpc.health.v1.Health/Check by hand (no generated health stubs here):
  // request field 1 = service, response field 1 = status (1 SERVING,
  // 2 NOT_SERVING).
  int HealthStatus(const std::string& service) {
    grpc::GenericStub stub(channel_);
    std::string request = absl::StrCat(
        std::string(1, '\x0a'), std::string(1, char(service.size())), service);
    grpc::Slice slice(request);
    grpc::ByteBuffer in(&slice, 1);
    grpc::ClientContext ctx;
    WithDeadline(&ctx);
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
    if (!status.ok()) return -1;
    std::vector<grpc::Slice> slices;
    out.Dump(&slices);
    std::string bytes;
    for (auto& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  }

  TempDir data_;
  FakeClock clock_;
  std::unique_ptr<Coordinator> coordinator_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::QueryService::Stub> queries_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
  // The worker each task was last leased to (by Lease).
  std::map<std::string, std::string> holders_;
};

TEST_F(CoordinatorTest, HealthServesEveryService) {
  EXPECT_EQ(HealthStatus(""), 1);
  EXPECT_EQ(HealthStatus("saetrack.v1.JobService"), 1);
  EXPECT_EQ(HealthStatus("saetrack.v1.QueryService"), 1);
  EXPECT_EQ(HealthStatus("saetrack.v1.WorkerService"), 1);
}

TEST_F(CoordinatorTest, InvalidJobsAreRefusedAndNothingIsStored) {
  struct Case {
    std::function<void(v1::JobSpec*)> mutate;
    grpc::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](v1::JobSpec* s) {
         s->mutable_model()->mutable_checkpoints(1)->set_path("/x");
       },
       grpc::StatusCode::NOT_FOUND,
       "spec.model.checkpoints[1].path: '/x' does not exist"},
      {[](v1::JobSpec* s) { s->mutable_hooks(0)->set_layer(7); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "spec.hooks[0].layer: 7 out of range [0, 2) for the model at "
       "spec.model.checkpoints[0].path"},
      {[](v1::JobSpec* s) { s->mutable_model()->set_architecture("foo"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "spec.model.architecture: 'foo' is not supported (supported: "
       "gpt_neox, gpt2)"},
      {[](v1::JobSpec* s) { s->mutable_model()->clear_checkpoints(); },
       grpc::StatusCode::INVALID_ARGUMENT, "spec.model.checkpoints"},
      {[](v1::JobSpec* s) { s->mutable_sae()->set_lr_first(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "spec.sae.lr_first"},
      {[](v1::JobSpec* s) { s->mutable_hooks(0)->set_site("nope"); },
       grpc::StatusCode::INVALID_ARGUMENT, "spec.hooks[0].site"},
      // Stored, it would make every ListJobs answer too large to read.
      {[](v1::JobSpec* s) { s->set_name(std::string(2 << 20, 'n')); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "more than the 1048576 a job spec may have"},
  };
  for (const Case& c : cases) {
    v1::JobSpec spec = MakeSpec(data_.path(), {0, 10});
    c.mutate(&spec);
    v1::SubmitJobResponse response;
    grpc::Status s = Submit(spec, "req-bad", &response);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));
  }
  EXPECT_EQ(ListJobs().jobs_size(), 0);
  // Still serving; the request id of a refused job is not burnt.
  v1::SubmitJobResponse response;
  ASSERT_TRUE(
      Submit(MakeSpec(data_.path(), {0, 10}), "req-bad", &response).ok());
  EXPECT_TRUE(response.created());
  EXPECT_EQ(response.job().job_id(), "job-000001");
}

TEST_F(CoordinatorTest, SubmissionIsIdempotentByRequestId) {
  const v1::JobSpec spec = MakeSpec(data_.path(), {0, 10});
  v1::SubmitJobResponse first, again, other;
  ASSERT_TRUE(Submit(spec, "req-1", &first).ok());
  EXPECT_TRUE(first.created());
  EXPECT_EQ(first.job().state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(first.job().progress().tasks_total(), 2);
  EXPECT_EQ(first.job().spec().sae().d_sae(), kDSae);
  EXPECT_EQ(first.job().request_id(), "req-1");
  ASSERT_TRUE(Submit(spec, "req-1", &again).ok());
  EXPECT_FALSE(again.created());
  EXPECT_TRUE(MessageDifferencer::Equals(first.job(), again.job()));

  v1::JobSpec changed = spec;
  changed.set_priority(3);
  grpc::Status s = Submit(changed, "req-1", &other);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(s.error_message(), HasSubstr("req-1"));

  // Without a request id every submission is a new job.
  EXPECT_EQ(SubmitOk(spec), "job-000002");
  EXPECT_EQ(SubmitOk(spec), "job-000003");
  EXPECT_EQ(ListJobs().jobs_size(), 3);
}

// Large specs (within the limit) make a ListJobs page end early, with a
// token for the rest, instead of an answer a client cannot read.
TEST_F(CoordinatorTest, ListJobsPagesStayReadable) {
  for (int i = 0; i < 5; ++i) {
    v1::JobSpec spec = MakeSpec(data_.path(), {0});
    spec.set_name(std::string(900 << 10, static_cast<char>('a' + i)));
    SubmitOk(spec);
  }
  const v1::ListJobsResponse first = ListJobs(100);
  ASSERT_EQ(first.jobs_size(), 3);
  EXPECT_LT(first.ByteSizeLong(), size_t{3} << 20);
  ASSERT_FALSE(first.next_page_token().empty());
  const v1::ListJobsResponse rest = ListJobs(100, first.next_page_token());
  ASSERT_EQ(rest.jobs_size(), 2);
  EXPECT_EQ(rest.jobs(0).job_id(), "job-000004");
  EXPECT_EQ(rest.jobs(1).job_id(), "job-000005");
  EXPECT_TRUE(rest.next_page_token().empty());
}

TEST_F(CoordinatorTest, GetAndListJobs) {
  for (int i = 0; i < 5; ++i) SubmitOk(MakeSpec(data_.path(), {0}));
  grpc::ClientContext ctx;
  v1::GetJobRequest request;
  request.set_job_id("job-999999");
  v1::Job job;
  grpc::Status s = jobs_->GetJob(WithDeadline(&ctx), request, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("job-999999"));

  std::vector<std::string> ids;
  std::string token;
  do {
    v1::ListJobsResponse page = ListJobs(2, token);
    EXPECT_LE(page.jobs_size(), 2);
    for (const v1::Job& j : page.jobs()) ids.push_back(j.job_id());
    token = page.next_page_token();
  } while (!token.empty());
  EXPECT_THAT(ids, ElementsAre("job-000001", "job-000002", "job-000003",
                               "job-000004", "job-000005"));

  grpc::ClientContext bad_ctx;
  v1::ListJobsRequest bad;
  bad.set_page_token("%%%");
  v1::ListJobsResponse response;
  EXPECT_EQ(
      jobs_->ListJobs(WithDeadline(&bad_ctx), bad, &response).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CoordinatorTest, LeaseUploadCompleteAndQuery) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0, 10}, {1}));
  const std::string worker = Register();
  std::optional<v1::Task> t0 = Lease(worker);
  ASSERT_TRUE(t0.has_value());
  EXPECT_EQ(t0->job_id(), job);
  EXPECT_EQ(t0->lease_epoch(), 1);
  EXPECT_EQ(t0->lease_ttl_ms(), kTtlMs);
  EXPECT_EQ(t0->train().chain_index(), 0);
  EXPECT_EQ(t0->train().hook().layer(), 1);
  EXPECT_EQ(t0->train().hook().site(), "resid_pre");
  EXPECT_EQ(t0->train().spec().sae().lr_first(), 4e-4);
  EXPECT_FALSE(t0->train().has_init_from());
  EXPECT_EQ(GetJob(job).state(), v1::JOB_STATE_RUNNING);

  // Chain order: the second checkpoint waits for the first.
  EXPECT_FALSE(Lease(worker).has_value());

  v1::HeartbeatResponse hb;
  ASSERT_TRUE(Heartbeat(*t0, 1, &hb).ok());
  EXPECT_FALSE(hb.cancel());
  EXPECT_EQ(hb.lease_ttl_ms(), kTtlMs);
  EXPECT_EQ(Heartbeat(*t0, 2).error_code(), grpc::StatusCode::ABORTED);

  // Bad checksum, stale epoch, oversize: refused.
  const std::string weights = Weights(*t0);
  grpc::Status s = Upload(t0->task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS,
                          weights, 1000, format::Crc32c(weights) ^ 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  EXPECT_EQ(Upload(t0->task_id(), 7, v1::ARTIFACT_KIND_SAE_WEIGHTS, weights)
                .error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(Upload(t0->task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS,
                   std::string((1 << 20) + 1, 'x'), 256 << 10)
                .error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  // Nothing uploaded successfully yet: both artifacts are missing.
  s = CompleteTask(*t0, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("ARTIFACT_KIND_SAE_WEIGHTS"));
  EXPECT_THAT(s.error_message(), HasSubstr("ARTIFACT_KIND_FEATURE_STATS"));

  ASSERT_TRUE(
      Upload(t0->task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS, weights).ok());
  // Wrong number of features is refused.
  v1::FeatureStatsBlock short_stats = Stats(0);
  short_stats.mutable_frequency()->RemoveLast();
  ASSERT_TRUE(Upload(t0->task_id(), 1, v1::ARTIFACT_KIND_FEATURE_STATS,
                     short_stats.SerializeAsString())
                  .ok());
  s = CompleteTask(*t0, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("FEATURE_STATS.frequency"));

  ASSERT_TRUE(Upload(t0->task_id(), 1, v1::ARTIFACT_KIND_FEATURE_STATS,
                     Stats(0).SerializeAsString())
                  .ok());
  // A density histogram that does not count every feature once is refused.
  s = CompleteTask(*t0, 1, 4096, {1, 2});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("metrics.density_histogram: counts sum to 3"));
  // A stale epoch stores nothing.
  EXPECT_EQ(CompleteTask(*t0, 2).error_code(), grpc::StatusCode::ABORTED);
  v1::GetCheckpointMetricsResponse metrics;
  ASSERT_TRUE(Metrics(job, 1, &metrics).ok());
  EXPECT_EQ(metrics.checkpoints_size(), 0);

  ASSERT_TRUE(CompleteTask(*t0, 1, 4096).ok());
  // Exactly once.
  EXPECT_EQ(CompleteTask(*t0, 1).error_code(), grpc::StatusCode::ABORTED);

  std::optional<v1::Task> t1 = Lease(worker);
  ASSERT_TRUE(t1.has_value());
  EXPECT_EQ(t1->train().chain_index(), 1);
  EXPECT_EQ(t1->train().checkpoint_index(), 1);
  EXPECT_EQ(t1->train().init_from().job_id(), job);
  EXPECT_EQ(t1->train().init_from().layer(), 1);
  EXPECT_EQ(t1->train().init_from().step(), 0);

  // Chunks at contiguous offsets, total size and CRC-32C checked.
  absl::StatusOr<std::string> downloaded =
      server::testing::DownloadSaeArtifact(*workers_, t1->train().init_from());
  ASSERT_TRUE(downloaded.ok()) << downloaded.status();
  EXPECT_EQ(*downloaded, weights);
  v1::SaeRef missing = t1->train().init_from();
  missing.set_step(10);
  EXPECT_EQ(
      server::testing::DownloadSaeArtifact(*workers_, missing).status().code(),
      absl::StatusCode::kNotFound);

  RunToCompletion(*t1);
  v1::Job done = GetJob(job);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.progress().tasks_done(), 2);
  EXPECT_EQ(done.progress().tokens_trained(), 4096 + 1000);

  v1::FeatureHistory history;
  ASSERT_TRUE(FeatureHistory(job, 1, 5, &history).ok());
  ASSERT_EQ(history.points_size(), 2);
  EXPECT_EQ(history.points(0).step(), 0);
  EXPECT_EQ(history.points(0).chain_index(), 0);
  EXPECT_FALSE(history.points(0).has_decoder_cos_prev());
  EXPECT_FLOAT_EQ(history.points(0).frequency(), 0.005f);
  EXPECT_FLOAT_EQ(history.points(0).max_activation(), 10.0f);
  EXPECT_EQ(history.points(1).step(), 10);
  EXPECT_FLOAT_EQ(history.points(1).mean_activation(), 1.5f);
  EXPECT_FLOAT_EQ(history.points(1).decoder_cos_prev(), 5.0f / kDSae);

  metrics.Clear();
  ASSERT_TRUE(Metrics(job, 1, &metrics).ok());
  ASSERT_EQ(metrics.checkpoints_size(), 2);
  EXPECT_EQ(metrics.checkpoints(0).layer(), 1);
  EXPECT_EQ(metrics.checkpoints(0).step(), 0);
  EXPECT_EQ(metrics.checkpoints(0).tokens_trained(), 4096);
  EXPECT_EQ(metrics.checkpoints(0).d_sae(), kDSae);
  EXPECT_FALSE(metrics.checkpoints(0).has_median_decoder_cos_prev());
  EXPECT_EQ(metrics.checkpoints(1).chain_index(), 1);
  EXPECT_EQ(metrics.checkpoints(1).step(), 10);
  EXPECT_DOUBLE_EQ(metrics.checkpoints(1).fvu(), 0.2);
  // Median of i / 128 for i in [0, 128): (63 + 64) / 2 / 128.
  EXPECT_NEAR(metrics.checkpoints(1).median_decoder_cos_prev(), 63.5 / 128,
              1e-6);

  // Query errors name what is unknown.
  s = FeatureHistory("job-424242", 1, 0, &history);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("job 'job-424242'"));
  s = FeatureHistory(job, 0, 0, &history);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("layer 0 is not hooked"));
  s = FeatureHistory(job, 1, kDSae, &history);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(),
              HasSubstr("feature_id 128 out of range [0, 128)"));
  s = Metrics(job, 3, &metrics);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(CoordinatorTest, ExpiredLeaseIsRequeuedThenFailsTheJob) {
  coordinator_->Shutdown();
  coordinator_.reset();
  Start(/*max_attempts=*/2);
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  const std::string worker = Register();
  std::optional<v1::Task> first = Lease(worker);
  ASSERT_TRUE(first.has_value());

  clock_.Advance(absl::Milliseconds(kTtlMs + 1));
  std::optional<v1::Task> second = Lease(worker);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->task_id(), first->task_id());
  EXPECT_EQ(second->lease_epoch(), 2);
  // The first holder's results are refused.
  EXPECT_EQ(Heartbeat(*first, 1).error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(Upload(first->task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS, "w")
                .error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(CompleteTask(*first, 1).error_code(), grpc::StatusCode::ABORTED);

  clock_.Advance(absl::Milliseconds(kTtlMs + 1));
  EXPECT_FALSE(Lease(worker).has_value());
  v1::Job failed = GetJob(job);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("lease expired"));
}

// Staged uploads are bounded: beyond the staging limit an upload is refused
// (RESOURCE_EXHAUSTED, the worker sends it later), and uploads of leases
// that ended are freed instead of held forever.
TEST_F(CoordinatorTest, StagedUploadsAreBoundedAndFreedWhenTheirLeaseEnds) {
  coordinator_->Shutdown();
  coordinator_.reset();
  Start(/*max_attempts=*/3, /*max_staged_bytes=*/2 << 20);
  SubmitOk(MakeSpec(data_.path(), {0}, {0, 1}));
  SubmitOk(MakeSpec(data_.path(), {0}, {0, 1}));
  const std::string worker = Register();
  std::vector<v1::Task> tasks;
  for (int i = 0; i < 3; ++i) {
    std::optional<v1::Task> t = Lease(worker);
    ASSERT_TRUE(t.has_value()) << i;
    tasks.push_back(*t);
  }
  const std::string big((1 << 20) - 4096, 'w');
  ASSERT_TRUE(Upload(tasks[0].task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS, big,
                     256 << 10)
                  .ok());
  ASSERT_TRUE(Upload(tasks[1].task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS, big,
                     256 << 10)
                  .ok());
  grpc::Status s = Upload(tasks[2].task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS,
                          big, 256 << 10);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(),
              HasSubstr("would pass the coordinator's staging limit of "
                        "2097152 bytes; send it again later"));
  // Replacing an upload of the same lease and kind does not count twice.
  EXPECT_TRUE(Upload(tasks[1].task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS, big,
                     256 << 10)
                  .ok());
  // The first two leases expire (the third is heartbeated): their uploads
  // are freed and the third one's fits.
  clock_.Advance(absl::Milliseconds(kTtlMs / 2));
  ASSERT_TRUE(Heartbeat(tasks[2], 1).ok());
  clock_.Advance(absl::Milliseconds(kTtlMs / 2 + 1));
  EXPECT_TRUE(Upload(tasks[2].task_id(), 1, v1::ARTIFACT_KIND_SAE_WEIGHTS, big,
                     256 << 10)
                  .ok());
  EXPECT_TRUE(Upload(tasks[2].task_id(), 1, v1::ARTIFACT_KIND_FEATURE_STATS,
                     big, 256 << 10)
                  .ok());
}

TEST_F(CoordinatorTest, FailTaskRetriesThenFailsTheJob) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  const std::string worker = Register();
  for (int attempt = 1; attempt <= 3; ++attempt) {
    std::optional<v1::Task> task = Lease(worker);
    ASSERT_TRUE(task.has_value()) << attempt;
    EXPECT_EQ(task->lease_epoch(), attempt);
    grpc::ClientContext ctx;
    v1::FailTaskRequest request;
    request.set_worker_id(worker);
    request.set_task_id(task->task_id());
    request.set_lease_epoch(task->lease_epoch());
    request.set_error("CUDA out of memory");
    request.set_retryable(true);
    v1::FailTaskResponse response;
    ASSERT_TRUE(
        workers_->FailTask(WithDeadline(&ctx), request, &response).ok());
  }
  EXPECT_FALSE(Lease(worker).has_value());
  v1::Job failed = GetJob(job);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.error(), HasSubstr("CUDA out of memory"));
}

TEST_F(CoordinatorTest, RestartRecoversEverything) {
  const std::string done_job =
      SubmitOk(MakeSpec(data_.path(), {0, 10}, {0, 1}));
  const std::string running_job = SubmitOk(MakeSpec(data_.path(), {0, 10}));
  const std::string worker = Register();
  for (int i = 0; i < 4; ++i) {
    std::optional<v1::Task> task = Lease(worker);
    ASSERT_TRUE(task.has_value());
    ASSERT_EQ(task->job_id(), done_job);
    RunToCompletion(*task);
  }
  std::optional<v1::Task> in_flight = Lease(worker);
  ASSERT_TRUE(in_flight.has_value());
  ASSERT_EQ(in_flight->job_id(), running_job);

  auto snapshot = [&] {
    std::vector<std::string> out;
    out.push_back(ListJobs().SerializeAsString());
    for (int layer : {0, 1}) {
      v1::GetCheckpointMetricsResponse m;
      EXPECT_TRUE(Metrics(done_job, layer, &m).ok());
      EXPECT_EQ(m.checkpoints_size(), 2);
      out.push_back(m.SerializeAsString());
      for (int feature : {0, 77, kDSae - 1}) {
        v1::FeatureHistory h;
        EXPECT_TRUE(FeatureHistory(done_job, layer, feature, &h).ok());
        EXPECT_EQ(h.points_size(), 2);
        out.push_back(h.SerializeAsString());
      }
    }
    return out;
  };
  const std::vector<std::string> before = snapshot();
  Restart();
  EXPECT_EQ(snapshot(), before);
  EXPECT_EQ(GetJob(done_job).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(GetJob(running_job).state(), v1::JOB_STATE_RUNNING);

  // The in-flight task kept its epoch and got a fresh lease: its worker can
  // finish it after the restart.
  clock_.Advance(absl::Milliseconds(kTtlMs / 2));
  ASSERT_TRUE(Heartbeat(*in_flight, in_flight->lease_epoch()).ok());
  RunToCompletion(*in_flight);
  std::optional<v1::Task> next = Lease(worker);
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->train().chain_index(), 1);
  EXPECT_EQ(SubmitOk(MakeSpec(data_.path(), {0})), "job-000003");
}

TEST_F(CoordinatorTest, LongPollReturnsWhenATaskBecomesRunnable) {
  const std::string worker = Register();
  std::optional<v1::Task> got;
  std::thread poller([&] { got = Lease(worker, /*wait_ms=*/10000); });
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  poller.join();  // Woken by the submission, not by the 10 s timeout.
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->job_id(), job);
}

TEST(CoordinatorStartTest, FailsOnBadOptions) {
  CoordinatorOptions options;
  EXPECT_EQ(Coordinator::Start(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  TempDir dir;
  options.data_dir = dir.path();
  options.metrics_listen_address = "";
  options.listen_address = "256.0.0.1:1";
  options.data_roots = {dir.path()};
  // Beyond loopback without TLS and tokens: refused before binding.
  EXPECT_EQ(Coordinator::Start(options).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Allowed insecurely, the address itself cannot be bound.
  options.insecure = true;
  EXPECT_EQ(Coordinator::Start(options).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(CoordinatorTest, ServerReflectionListsTheServices) {
  // grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo by hand:
  // request field 7 (list_services) = "".
  grpc::GenericStub stub(channel_);
  grpc::ClientContext ctx;
  WithDeadline(&ctx);
  grpc::CompletionQueue cq;
  void* tag;
  bool ok;
  auto call = stub.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::Slice request(std::string("\x3a\x00", 2));
  grpc::ByteBuffer in(&request, 1);
  call->Write(in, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::ByteBuffer out;
  call->Read(&out, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  call->WritesDone(reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(out.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  EXPECT_THAT(bytes, HasSubstr("saetrack.v1.JobService"));
  EXPECT_THAT(bytes, HasSubstr("saetrack.v1.QueryService"));
  EXPECT_THAT(bytes, HasSubstr("saetrack.v1.WorkerService"));
}

TEST(CoordinatorStartTest, MetricsEndpointCountsRpcsLeasesAndStates) {
  TempDir dir;
  CoordinatorOptions options;
  options.data_dir = dir.path() + "/data";
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address = "127.0.0.1:0";
  auto c = Coordinator::Start(options);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT((*c)->port(), 0);
  EXPECT_GT((*c)->metrics_port(), 0);
  EXPECT_NE((*c)->port(), (*c)->metrics_port());

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*c)->port()),
                                     grpc::InsecureChannelCredentials());
  auto jobs = v1::JobService::NewStub(channel);
  auto workers = v1::WorkerService::NewStub(channel);
  v1::SubmitJobRequest submit;
  *submit.mutable_spec() = MakeSpec(dir.path(), {0, 10});
  v1::SubmitJobResponse submitted;
  grpc::ClientContext ctx1;
  ASSERT_TRUE(jobs->SubmitJob(WithDeadline(&ctx1), submit, &submitted).ok());
  grpc::ClientContext ctx2;
  v1::GetJobRequest get;
  get.set_job_id("job-999999");
  v1::Job job;
  EXPECT_FALSE(jobs->GetJob(WithDeadline(&ctx2), get, &job).ok());
  std::string worker_id;
  v1::LeaseTaskResponse leased;
  ASSERT_NO_FATAL_FAILURE(RegisterAndLease(*workers, &worker_id, &leased));

  const std::string text = HttpGet((*c)->metrics_port(), "/metrics");
  EXPECT_THAT(
      text,
      HasSubstr("saetrack_rpcs_total{code=\"OK\",method=\"SubmitJob\"} 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_rpcs_total{code=\"NOT_FOUND\","
                              "method=\"GetJob\"} 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_rpc_duration_seconds_count{method="
                              "\"LeaseTask\"} 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_jobs{state=\"running\"} 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_tasks{state=\"running\"} 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_tasks{state=\"queued\"} 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_leases_granted_total 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_workers_registered 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_lease_expiries_total 0"));
  EXPECT_THAT(text, HasSubstr("saetrack_task_retries_total 0"));
  EXPECT_THAT(text, ::testing::ContainsRegex(
                        "saetrack_storage_bytes_written_total [1-9]"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("job-000001")));
  (*c)->Shutdown();
  (*c)->Shutdown();  // Idempotent.
}

// --- Backups (AdminService) and the coordinator's own gauges -----------------

TEST_F(CoordinatorTest, BackupOpensAsACoordinatorWithTheSameAnswers) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0, 10}, {0, 1}));
  const std::string worker = Register();
  for (int i = 0; i < 4; ++i) {
    std::optional<v1::Task> task = Lease(worker);
    ASSERT_TRUE(task.has_value());
    RunToCompletion(*task);
  }
  auto snapshot = [&job](v1::QueryService::Stub* queries) {
    std::vector<std::string> out;
    for (int layer : {0, 1}) {
      grpc::ClientContext ctx;
      v1::GetCheckpointMetricsRequest request;
      request.set_job_id(job);
      request.set_layer(layer);
      v1::GetCheckpointMetricsResponse m;
      EXPECT_TRUE(
          queries->GetCheckpointMetrics(WithDeadline(&ctx), request, &m).ok());
      EXPECT_EQ(m.checkpoints_size(), 2);
      out.push_back(m.SerializeAsString());
      for (int feature : {0, 77, kDSae - 1}) {
        grpc::ClientContext hctx;
        v1::GetFeatureHistoryRequest hrequest;
        hrequest.set_job_id(job);
        hrequest.set_layer(layer);
        hrequest.set_feature_id(feature);
        v1::FeatureHistory h;
        EXPECT_TRUE(
            queries->GetFeatureHistory(WithDeadline(&hctx), hrequest, &h).ok());
        EXPECT_EQ(h.points_size(), 2);
        out.push_back(h.SerializeAsString());
      }
    }
    return out;
  };

  auto admin = v1::AdminService::NewStub(channel_);
  auto backup = [&admin](const std::string& name, v1::BackupResponse* out,
                         const std::string& to_dir = "") {
    grpc::ClientContext ctx;
    v1::BackupRequest request;
    request.set_name(name);
    request.set_to_dir(to_dir);
    return admin->Backup(WithDeadline(&ctx), request, out);
  };
  // The fixture's --backup_root.
  const std::string copy_data_dir = data_.path() + "/copy";
  v1::BackupResponse response;
  grpc::Status s = backup("db", &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.dir(), copy_data_dir + "/db");
  EXPECT_GT(response.bytes(), 4 * 5000);  // At least the four SAEs' weights.

  s = backup("db", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(s.error_message(), HasSubstr("name: backup 'db' already exists"));
  s = backup("../db", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("name: '../db'"));
  s = backup("", &response, copy_data_dir + "/other");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("to_dir: no longer accepted"));
  EXPECT_FALSE(std::filesystem::exists(copy_data_dir + "/other"));

  CoordinatorOptions options;
  options.data_dir = copy_data_dir;
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address = "";
  options.shutdown_grace_ms = 1000;
  auto restored = Coordinator::Start(options);
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto restored_queries = v1::QueryService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*restored)->port()),
                          grpc::InsecureChannelCredentials()));
  EXPECT_EQ(snapshot(restored_queries.get()), snapshot(queries_.get()));
  (*restored)->Shutdown();
}

// The value of the single series of `name` with label `label`=`value` (any
// when `label` is empty); -1 when absent.
double SeriesValue(prometheus::Registry& registry, const std::string& name,
                   const std::string& label = "",
                   const std::string& value = "") {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& m : family.metric) {
      bool match = label.empty();
      for (const prometheus::ClientMetric::Label& l : m.label) {
        if (l.name == label && l.value == value) match = true;
      }
      if (!match) continue;
      return family.type == prometheus::MetricType::Counter ? m.counter.value
                                                            : m.gauge.value;
    }
  }
  return -1;
}

TEST(CoordinatorMetricsTest, TokensCountHeartbeatIncreasesAndCompletions) {
  server::CoordinatorMetrics metrics;
  prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(SeriesValue(r, "saetrack_tokens_trained_total"), 0);
  metrics.TaskProgress("t1", 1, 100);
  metrics.TaskProgress("t1", 1, 300);
  metrics.TaskProgress("t1", 1, 200);  // Out of order: no decrease.
  EXPECT_EQ(SeriesValue(r, "saetrack_tokens_trained_total"), 300);
  metrics.TaskCompleted("t1", 1, 1000);  // The 700 not yet reported.
  EXPECT_EQ(SeriesValue(r, "saetrack_tokens_trained_total"), 1000);
  metrics.TaskProgress("t2", 1, 50);
  metrics.TaskEnded("t2");              // Lease lost.
  metrics.TaskProgress("t2", 2, 20);    // Retrained from scratch.
  metrics.TaskProgress("t2", 1, 5000);  // A stale lease's late report.
  EXPECT_EQ(SeriesValue(r, "saetrack_tokens_trained_total"), 1070);
  metrics.TaskCompleted("t3", 1, 10);  // Never reported by heartbeats.
  EXPECT_EQ(SeriesValue(r, "saetrack_tokens_trained_total"), 1080);
}

TEST(CoordinatorMetricsTest, ActiveWorkersAndStorageAreComputedAtScrape) {
  server::CoordinatorMetrics metrics;
  FakeClock clock;
  uint64_t bytes = 1234;
  metrics.SetScrapeSources(&clock, absl::Seconds(30),
                           [&bytes]() -> absl::StatusOr<uint64_t> {
                             if (bytes == 0) return absl::InternalError("x");
                             return bytes;
                           });
  metrics.WorkerSeen("w1");
  clock.Advance(absl::Seconds(20));
  metrics.WorkerSeen("w2");
  metrics.WorkerSeen("w2");
  prometheus::Registry& r = *metrics.registry();
  metrics.collectable()->Collect();
  EXPECT_EQ(SeriesValue(r, "saetrack_workers_active"), 2);
  EXPECT_EQ(SeriesValue(r, "saetrack_storage_bytes"), 1234);
  clock.Advance(absl::Seconds(15));  // w1 silent for 35 s > 30 s.
  bytes = 0;                         // A failing source keeps the last value.
  metrics.collectable()->Collect();
  EXPECT_EQ(SeriesValue(r, "saetrack_workers_active"), 1);
  EXPECT_EQ(SeriesValue(r, "saetrack_storage_bytes"), 1234);
  clock.Advance(absl::Seconds(60));
  metrics.Refresh();
  EXPECT_EQ(SeriesValue(r, "saetrack_workers_active"), 0);

  metrics.StorageError(storage::StoreOp::kWrite);
  metrics.StorageError(storage::StoreOp::kWrite);
  metrics.StorageError(storage::StoreOp::kRead);
  EXPECT_EQ(SeriesValue(r, "saetrack_storage_errors_total", "op", "write"), 2);
  EXPECT_EQ(SeriesValue(r, "saetrack_storage_errors_total", "op", "read"), 1);
}

TEST(CoordinatorStartTest, MetricsEndpointShowsWorkersTokensAndStorage) {
  TempDir dir;
  FakeClock clock;
  CoordinatorOptions options;
  options.data_dir = dir.path() + "/data";
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address = "127.0.0.1:0";
  options.lease_ttl_ms = kTtlMs;
  options.clock = &clock;
  options.lease_check_interval_ms = 3600 * 1000;
  auto c = Coordinator::Start(options);
  ASSERT_TRUE(c.ok()) << c.status();
  std::string text = HttpGet((*c)->metrics_port(), "/metrics");
  EXPECT_THAT(text, HasSubstr("saetrack_workers_active 0"));
  EXPECT_THAT(text, HasSubstr("saetrack_tokens_trained_total 0"));
  EXPECT_THAT(text, HasSubstr("saetrack_storage_errors_total{op=\"read\"} 0"));
  EXPECT_THAT(text, HasSubstr("saetrack_storage_errors_total{op=\"write\"} 0"));
  EXPECT_THAT(text, ::testing::ContainsRegex("saetrack_storage_bytes [0-9]"));

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*c)->port()),
                                     grpc::InsecureChannelCredentials());
  auto jobs = v1::JobService::NewStub(channel);
  auto workers = v1::WorkerService::NewStub(channel);
  v1::SubmitJobRequest submit;
  *submit.mutable_spec() = MakeSpec(dir.path(), {0, 10});
  v1::SubmitJobResponse submitted;
  grpc::ClientContext ctx1;
  ASSERT_TRUE(jobs->SubmitJob(WithDeadline(&ctx1), submit, &submitted).ok());
  std::string worker_id;
  v1::LeaseTaskResponse leased;
  ASSERT_NO_FATAL_FAILURE(RegisterAndLease(*workers, &worker_id, &leased));
  grpc::ClientContext ctx4;
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(worker_id);
  heartbeat.set_task_id(leased.task().task_id());
  heartbeat.set_lease_epoch(leased.task().lease_epoch());
  heartbeat.set_tokens_done(4096);
  heartbeat.set_loss(0.5);
  v1::HeartbeatResponse beat;
  ASSERT_TRUE(workers->Heartbeat(WithDeadline(&ctx4), heartbeat, &beat).ok());

  text = HttpGet((*c)->metrics_port(), "/metrics");
  EXPECT_THAT(text, HasSubstr("saetrack_workers_active 1"));
  EXPECT_THAT(text, HasSubstr("saetrack_tokens_trained_total 4096"));
  EXPECT_THAT(text, HasSubstr("saetrack_storage_errors_total{op=\"write\"} 0"));
  // The worker falls silent for more than 3 heartbeat intervals.
  clock.Advance(absl::Milliseconds(kTtlMs + 1));
  text = HttpGet((*c)->metrics_port(), "/metrics");
  EXPECT_THAT(text, HasSubstr("saetrack_workers_active 0"));
  (*c)->Shutdown();
}

grpc::Status CancelJob(v1::JobService::Stub* jobs, const std::string& job_id,
                       v1::CancelJobResponse* response) {
  grpc::ClientContext ctx;
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  return jobs->CancelJob(WithDeadline(&ctx), request, response);
}

// Reads WatchJob's stream to its end.
struct WatchResult {
  std::vector<v1::JobUpdate> updates;
  grpc::Status status;
};
WatchResult Watch(v1::JobService::Stub* jobs, const std::string& job_id) {
  grpc::ClientContext ctx;
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  WatchResult result;
  auto reader = jobs->WatchJob(WithDeadline(&ctx), request);
  v1::JobUpdate update;
  while (reader->Read(&update)) result.updates.push_back(update);
  result.status = reader->Finish();
  return result;
}

TEST_F(CoordinatorTest, CancelJobStopsTheWorkerAndRefusesItsResults) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0, 1}));
  const std::string worker = Register();
  std::optional<v1::Task> task = Lease(worker);
  ASSERT_TRUE(task.has_value());

  v1::CancelJobResponse cancelled;
  grpc::Status s = CancelJob(jobs_.get(), job, &cancelled);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(cancelled.job().state(), v1::JOB_STATE_CANCELLED);
  // The running worker learns it from its next heartbeat.
  v1::HeartbeatResponse beat;
  ASSERT_TRUE(Heartbeat(*task, task->lease_epoch(), &beat).ok());
  EXPECT_TRUE(beat.cancel());
  // Its late result is refused and nothing is stored.
  EXPECT_EQ(CompleteTask(*task, task->lease_epoch()).error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(GetJob(job).progress().tasks_done(), 0);
  EXPECT_EQ(GetJob(job).progress().tokens_trained(), 0);
  EXPECT_FALSE(Lease(worker).has_value());

  // Idempotent, and it survives a restart.
  v1::CancelJobResponse again;
  ASSERT_TRUE(CancelJob(jobs_.get(), job, &again).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(again.job(), cancelled.job()));
  Restart();
  EXPECT_EQ(GetJob(job).state(), v1::JOB_STATE_CANCELLED);
  ASSERT_TRUE(CancelJob(jobs_.get(), job, &again).ok());
  EXPECT_EQ(again.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(Lease(Register()).has_value());
}

TEST_F(CoordinatorTest, CancelJobErrorCodes) {
  v1::CancelJobResponse response;
  grpc::Status s = CancelJob(jobs_.get(), "job-000077", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("job-000077"));
  s = CancelJob(jobs_.get(), "", &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("job_id"));

  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  std::optional<v1::Task> task = Lease(Register());
  ASSERT_TRUE(task.has_value());
  RunToCompletion(*task);
  ASSERT_EQ(GetJob(job).state(), v1::JOB_STATE_SUCCEEDED);
  s = CancelJob(jobs_.get(), job, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("SUCCEEDED"));
}

TEST_F(CoordinatorTest, WatchJobStreamsProgressAndEndsOnSuccess) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  WatchResult result;
  std::thread watcher([&] { result = Watch(jobs_.get(), job); });
  std::optional<v1::Task> task = Lease(Register());
  ASSERT_TRUE(task.has_value());
  {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest request;
    request.set_worker_id(holders_[task->task_id()]);
    request.set_task_id(task->task_id());
    request.set_lease_epoch(task->lease_epoch());
    request.set_tokens_done(500);
    request.set_loss(0.25);
    v1::HeartbeatResponse response;
    ASSERT_TRUE(
        workers_->Heartbeat(WithDeadline(&ctx), request, &response).ok());
  }
  absl::SleepFor(absl::Milliseconds(100));
  RunToCompletion(*task);
  watcher.join();

  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_GE(result.updates.size(), 2u);
  EXPECT_EQ(result.updates.back().job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(result.updates.back().job().progress().tasks_done(), 1);
  bool saw_progress = false;
  for (const v1::JobUpdate& update : result.updates) {
    if (update.job().state() == v1::JOB_STATE_RUNNING &&
        update.tokens_done() == 500 && update.has_loss() &&
        update.loss() == 0.25) {
      saw_progress = true;
    }
  }
  EXPECT_TRUE(saw_progress);
}

TEST_F(CoordinatorTest, WatchJobEndsOnCancelAndNotFound) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  WatchResult result;
  std::thread watcher([&] { result = Watch(jobs_.get(), job); });
  absl::SleepFor(absl::Milliseconds(100));
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(CancelJob(jobs_.get(), job, &cancelled).ok());
  watcher.join();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_FALSE(result.updates.empty());
  EXPECT_EQ(result.updates.front().job().state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(result.updates.back().job().state(), v1::JOB_STATE_CANCELLED);

  // A job that already ended: one update, then OK.
  result = Watch(jobs_.get(), job);
  ASSERT_TRUE(result.status.ok());
  ASSERT_EQ(result.updates.size(), 1u);
  EXPECT_EQ(result.updates[0].job().state(), v1::JOB_STATE_CANCELLED);

  result = Watch(jobs_.get(), "job-000055");
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(result.status.error_message(), HasSubstr("job-000055"));
}

TEST_F(CoordinatorTest, WatchJobDoesNotBlockShutdown) {
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  WatchResult result;
  std::thread watcher([&] { result = Watch(jobs_.get(), job); });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  coordinator_->Shutdown();
  watcher.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_FALSE(result.status.ok());
  ASSERT_FALSE(result.updates.empty());
  EXPECT_EQ(result.updates[0].job().state(), v1::JOB_STATE_QUEUED);
}

}  // namespace
}  // namespace saetrack

namespace saetrack {
namespace {

// Threads of this process (server and clients together).
int ThreadCount() {
  int count = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/self/task")) {
    (void)entry;
    ++count;
  }
  return count;
}

// One WatchJob stream read with gRPC's callback API (no thread of its own).
class WatchReader : public grpc::ClientReadReactor<v1::JobUpdate> {
 public:
  WatchReader(v1::JobService::Stub* jobs, const std::string& job_id,
              absl::Mutex* mu, int* first_updates, int* done)
      : mu_(mu), first_updates_(first_updates), done_(done) {
    request_.set_job_id(job_id);
    ctx_.set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(120));
    jobs->async()->WatchJob(&ctx_, &request_, this);
    StartRead(&update_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    absl::MutexLock lock(mu_);
    if (updates_++ == 0) ++*first_updates_;
    last_ = update_;
    StartRead(&update_);
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(mu_);
    status_ = status;
    ++*done_;
  }
  void Cancel() { ctx_.TryCancel(); }
  // REQUIRES: *mu_ held.
  int updates() const { return updates_; }
  const v1::JobUpdate& last() const { return last_; }
  const grpc::Status& status() const { return status_; }

 private:
  absl::Mutex* const mu_;
  int* const first_updates_;
  int* const done_;
  grpc::ClientContext ctx_;
  v1::WatchJobRequest request_;
  v1::JobUpdate update_;
  int updates_ = 0;
  v1::JobUpdate last_;
  grpc::Status status_;
};

TEST_F(CoordinatorTest, ThousandWatchersCostFewThreadsAndUpdatesCoalesce) {
  constexpr int kWatchers = 1000;
  constexpr int kHeartbeats = 200;
  const std::string job = SubmitOk(MakeSpec(data_.path(), {0}));
  const std::string worker = Register();
  std::optional<v1::Task> task = Lease(worker);
  ASSERT_TRUE(task.has_value());
  // Let gRPC start its pollers and executors before counting.
  ASSERT_TRUE(Heartbeat(*task, task->lease_epoch()).ok());
  const int threads_before = ThreadCount();

  absl::Mutex mu;
  int first_updates = 0;
  int done = 0;
  std::vector<std::unique_ptr<WatchReader>> readers;
  // Whatever happens below, no stream outlives its reader: cancel what is
  // still open and wait for every OnDone before the readers go.
  struct Drain {
    std::vector<std::unique_ptr<WatchReader>>* readers;
    absl::Mutex* mu;
    int* done;
    ~Drain() {
      for (auto& reader : *readers) reader->Cancel();
      absl::MutexLock lock(mu);
      const int want = static_cast<int>(readers->size());
      const auto all_done = [this_done = done, want] {
        return *this_done == want;
      };
      mu->AwaitWithTimeout(absl::Condition(&all_done), absl::Seconds(60));
    }
  } drain{&readers, &mu, &done};
  for (int i = 0; i < kWatchers; ++i) {
    readers.push_back(std::make_unique<WatchReader>(jobs_.get(), job, &mu,
                                                    &first_updates, &done));
  }
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(
        absl::Condition(
            +[](int* n) { return *n == kWatchers; }, &first_updates),
        absl::Seconds(60)))
        << first_updates << " of " << kWatchers << " streams started";
  }
  const int threads_with_watchers = ThreadCount();
  std::printf("threads: %d before, %d with %d WatchJob streams open\n",
              threads_before, threads_with_watchers, kWatchers);
  // A thread per stream would add 1,000; the callback API adds none per
  // stream (gRPC may start a few executor threads).
  EXPECT_LT(threads_with_watchers - threads_before, 64);

  // Many heartbeats in a burst: each watcher sees a few coalesced updates,
  // the last of which carries the last reported progress.
  for (int i = 1; i <= kHeartbeats; ++i) {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest request;
    request.set_task_id(task->task_id());
    request.set_lease_epoch(task->lease_epoch());
    request.set_worker_id(worker);
    request.set_tokens_done(i);
    v1::HeartbeatResponse response;
    ASSERT_TRUE(
        workers_->Heartbeat(WithDeadline(&ctx), request, &response).ok());
  }
  {
    absl::MutexLock lock(&mu);
    const auto all_current = [&] {
      for (const auto& reader : readers) {
        if (reader->last().tokens_done() != kHeartbeats) return false;
      }
      return true;
    };
    ASSERT_TRUE(
        mu.AwaitWithTimeout(absl::Condition(&all_current), absl::Seconds(60)));
    int most = 0;
    for (const auto& reader : readers) most = std::max(most, reader->updates());
    std::printf("%d heartbeats: at most %d updates per watcher\n", kHeartbeats,
                most);
    EXPECT_LT(most, kHeartbeats / 4);
  }

  RunToCompletion(*task);
  absl::MutexLock lock(&mu);
  ASSERT_TRUE(
      mu.AwaitWithTimeout(absl::Condition(
                              +[](int* n) { return *n == kWatchers; }, &done),
                          absl::Seconds(60)));
  for (const auto& reader : readers) {
    ASSERT_TRUE(reader->status().ok()) << reader->status().error_message();
    EXPECT_EQ(reader->last().job().state(), v1::JOB_STATE_SUCCEEDED);
  }
}

}  // namespace
}  // namespace saetrack
