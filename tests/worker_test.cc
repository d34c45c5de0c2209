// The worker's RPC loop against a real in-process coordinator (RocksDB in a
// temp dir, gRPC on a free loopback port), with a fake training engine so
// that the test exercises leasing, downloads, chunked uploads, completion and
// failure handling without LibTorch.
#include "worker/worker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "format/safetensors.h"
#include "server/coordinator.h"

namespace saetrack::worker {
namespace {

using ::testing::HasSubstr;

constexpr int kDIn = 4;
constexpr int kDSae = 8;

// Returns a deterministic, distinct result per call; records what it was
// asked. Thread-safe.
class FakeEngine final : public engine::SaeTrainingEngine {
 public:
  struct Call {
    engine::TrainInput input;
    std::string output_bytes;
  };

  // Makes call number `n` (0-based) fail with `status`.
  void FailCall(int n, absl::Status status) {
    absl::MutexLock lock(&mu_);
    failures_[n] = std::move(status);
  }

  std::vector<Call> calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

  std::vector<engine::AnalysisInput> analyses() const {
    absl::MutexLock lock(&mu_);
    return analyses_;
  }

  // Every feature's top positions are (10 * feature + j) mod 64, on an
  // analysis set of 64 positions (the jobs' 64 analysis tokens: the
  // coordinator refuses positions beyond the spec's analysis set).
  absl::StatusOr<engine::AnalysisOutput> Analyse(
      const engine::AnalysisInput& input) override {
    absl::MutexLock lock(&mu_);
    analyses_.push_back(input);
    engine::AnalysisOutput out;
    out.analysis_positions = 64;
    out.d_sae = kDSae;
    out.top_k = input.top_k;
    for (int i = 0; i < kDSae; ++i) {
      out.frequency.push_back(0.02f);
      out.mean_activation.push_back(1.0f);
      out.max_activation.push_back(3.0f);
      out.progress_activation.push_back(0.1f * i);
      out.progress_feature.push_back(0.05f * i);
      // NaN for feature 0: stored as absent.
      out.progress_token_controlled.push_back(i == 0 ? std::nanf("")
                                                     : 0.02f * i);
      for (int j = 0; j < input.top_k; ++j) {
        out.top_positions.push_back((10 * i + j) % 64);
        out.top_values.push_back(3.0f - j);
        out.top_tokens.push_back(7);
      }
      // Feature i promotes tokens 100 * i + j, suppresses 100 * i + 50 + j.
      for (int j = 0; j < input.logit_effects_k; ++j) {
        out.promoted_tokens.push_back(100 * i + j);
        out.promoted_values.push_back(5.0f - j);
        out.suppressed_tokens.push_back(100 * i + 50 + j);
        out.suppressed_values.push_back(-5.0f + j);
      }
    }
    out.logit_effects_k = input.logit_effects_k;
    return out;
  }

  absl::StatusOr<engine::TrainOutput> Train(
      const engine::TrainInput& input,
      const engine::ProgressFn& progress) override {
    absl::MutexLock lock(&mu_);
    const int n = static_cast<int>(calls_.size());
    engine::TrainOutput out;
    // SAE weights of the job's shape (the coordinator checks it), distinct
    // per call and larger than one upload chunk (the metadata pads them),
    // so the upload really is chunked.
    format::SafetensorsWriter writer;
    writer.SetMetadata("pad", std::string(5000, static_cast<char>('a' + n)));
    const std::vector<float> values(kDIn * kDSae, 0.1f * (n + 1));
    const std::pair<const char*, std::vector<int64_t>> tensors[] = {
        {"W_enc", {kDIn, kDSae}},
        {"b_enc", {kDSae}},
        {"W_dec", {kDSae, kDIn}},
        {"b_dec", {kDIn}}};
    for (const auto& [name, shape] : tensors) {
      if (absl::Status s = writer.AddF32(name, shape, values.data()); !s.ok()) {
        return s;
      }
    }
    out.sae_safetensors = writer.Serialize();
    calls_.push_back({input, out.sae_safetensors});
    // A real engine saves its training state into state_dir while it runs.
    if (!input.state_dir.empty()) {
      std::filesystem::create_directories(input.state_dir);
      std::ofstream(input.state_dir + "/state.pt") << "state";
    }
    if (auto it = failures_.find(n); it != failures_.end()) return it->second;
    if (!progress(input.train_tokens, 0.5)) return absl::CancelledError("stop");
    out.d_in = kDIn;
    out.d_sae = kDSae;
    out.tokens_trained = input.train_tokens;
    out.fvu = 0.1 + 0.01 * n;
    out.init_fvu = 0.9;
    out.l0 = 3;
    out.density_histogram.assign(engine::kDensityBins, 0);
    out.density_histogram[0] = 1;
    out.density_histogram[engine::kDensityBins - 1] = kDSae - 1;
    if (input.lm_eval_tokens > 0) {
      out.lm = engine::LmEvaluation{3.0,     3.5,  6.0,
                                    5.0 / 6, 0.25, input.lm_eval_tokens};
    }
    out.stopped_early = input.adaptive_window_tokens > 0;
    out.converged = out.stopped_early;
    out.activation_scale = 0.25;
    out.distinct_tokens = 1000;
    out.epochs = static_cast<double>(input.train_tokens) / 1000;
    out.held_out_loss = 0.02;
    out.median_decoder_cos_init = input.init_sae_safetensors ? 0.95 : 0.97;
    if (input.reference_check) {
      engine::ReferenceCheck& r = out.reference.emplace();
      r.seed = input.reference_seed;
      r.tokens_trained = input.reference_train_tokens;
      r.held_out_loss = 0.01;  // the chain is 2x worse: under-trained
      r.fvu = 0.05;
      r.l0 = 4;
      r.median_decoder_cos_init = 0.97;
      r.matched = kDSae;
      r.match_method = "hungarian";
      r.match_median_cosine = 0.36;
      r.random_median_cosine = 0.35;
    }
    out.resumed_from_tokens = input.state_dir.empty() ? 0 : 10;
    for (int i = 0; i < kDSae; ++i) {
      out.features.frequency.push_back(0.01f * i);
      out.features.mean_activation.push_back(0.5f);
      out.features.max_activation.push_back(2.0f + n);
      out.features.encoder_norm.push_back(1.0f);
      if (input.init_sae_safetensors.has_value()) {
        out.features.decoder_cos_prev.push_back(0.9f);
      }
    }
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<engine::AnalysisInput> analyses_ ABSL_GUARDED_BY(mu_);
  std::map<int, absl::Status> failures_ ABSL_GUARDED_BY(mu_);
};

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/saetrack-worker-test-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    for (int step : {0, 10, 20}) {
      const std::string ckpt = absl::StrCat(dir_, "/ckpt/step-", step);
      std::filesystem::create_directories(ckpt);
      std::ofstream(ckpt + "/config.json") << R"({
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
        "hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "vocab_size": 256,
        "max_position_embeddings": 64, "rotary_pct": 0.25,
        "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
        "use_parallel_residual": true, "hidden_act": "gelu",
        "tie_word_embeddings": false})";
      std::ofstream(ckpt + "/model.safetensors", std::ios::binary)
          << format::SafetensorsWriter().Serialize();
    }
    std::ofstream tokens(dir_ + "/tokens.u16", std::ios::binary);
    tokens << std::string(2 * 4096, '\1');
    tokens.close();

    CoordinatorOptions options;
    options.data_dir = dir_ + "/data";
    options.listen_address = "127.0.0.1:0";
    options.metrics_listen_address = "";
    auto coordinator = Coordinator::Start(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    address_ = absl::StrCat("127.0.0.1:", coordinator_->port());
    client::ClientOptions client_options;
    client_options.coordinator = address_;
    client_ = client::SaetrackClient::Create(client_options);
  }

  void TearDown() override {
    coordinator_->Shutdown();
    std::filesystem::remove_all(dir_);
  }

  std::string SubmitJob(
      const std::function<void(v1::JobSpec*)>& customize = nullptr) {
    v1::JobSpec spec;
    spec.mutable_model()->set_architecture("gpt_neox");
    for (int step : {0, 10, 20}) {
      auto* c = spec.mutable_model()->add_checkpoints();
      c->set_step(step);
      c->set_path(absl::StrCat(dir_, "/ckpt/step-", step));
    }
    spec.mutable_data()->set_tokens_path(dir_ + "/tokens.u16");
    spec.mutable_data()->set_context_length(16);
    spec.add_hooks()->set_layer(1);
    spec.mutable_sae()->set_expansion_factor(2);
    spec.mutable_sae()->set_lr_first(1e-3);
    spec.mutable_sae()->set_lr_later(1e-4);
    spec.mutable_schedule()->set_tokens_first(1000);
    spec.mutable_schedule()->set_tokens_later(50);
    // The analysis pass has a test of its own.
    spec.mutable_analysis()->set_analysis_tokens(0);
    if (customize) customize(&spec);
    auto submitted = client_->SubmitJob(spec, "");
    EXPECT_TRUE(submitted.ok()) << submitted.status();
    return submitted.ok() ? submitted->job().job_id() : "";
  }

  // Runs a worker over `engine` until it has handled `tasks` tasks.
  void RunWorker(std::unique_ptr<engine::SaeTrainingEngine> engine, int tasks,
                 const std::string& state_dir = "") {
    WorkerOptions options;
    options.state_dir = state_dir;
    options.checkpoint_every_tokens = 300;
    options.coordinator = address_;
    options.max_tasks = tasks;
    options.chunk_bytes = 1024;
    options.lease_wait = absl::Milliseconds(200);
    auto worker = Worker::Create(options, std::move(engine));
    ASSERT_TRUE(worker.ok()) << worker.status();
    EXPECT_TRUE((*worker)->Run().ok());
  }

  // Polls the job until it reaches `state` (within 10 s).
  bool WaitForJob(const std::string& job_id, v1::JobState state) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      auto job = client_->GetJob(job_id);
      if (job.ok() && job->state() == state) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  std::string dir_;
  std::string address_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<client::SaetrackClient> client_;
};

// Wraps a FakeEngine owned by the test.
class Borrowed final : public engine::SaeTrainingEngine {
 public:
  explicit Borrowed(FakeEngine* engine) : engine_(engine) {}
  absl::StatusOr<engine::TrainOutput> Train(
      const engine::TrainInput& input,
      const engine::ProgressFn& progress) override {
    return engine_->Train(input, progress);
  }
  absl::StatusOr<engine::AnalysisOutput> Analyse(
      const engine::AnalysisInput& input) override {
    return engine_->Analyse(input);
  }

 private:
  FakeEngine* engine_;
};

TEST_F(WorkerTest, TrainsTheChainInOrderAndStoresEveryResult) {
  const std::string job_id = SubmitJob();
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 3);

  std::vector<FakeEngine::Call> calls = engine.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_THAT(calls[0].input.model_dir, HasSubstr("step-0"));
  EXPECT_THAT(calls[1].input.model_dir, HasSubstr("step-10"));
  EXPECT_THAT(calls[2].input.model_dir, HasSubstr("step-20"));
  EXPECT_DOUBLE_EQ(calls[0].input.lr, 1e-3);
  EXPECT_DOUBLE_EQ(calls[1].input.lr, 1e-4);
  EXPECT_EQ(calls[0].input.train_tokens, 1000);
  EXPECT_EQ(calls[1].input.train_tokens, 50);
  EXPECT_EQ(calls[0].input.layer, 1);
  // Recurrent initialisation: each later SAE starts from the bytes the
  // previous task uploaded (kept by this worker, which the coordinator gives
  // the chain's next task).
  EXPECT_FALSE(calls[0].input.init_sae_safetensors.has_value());
  ASSERT_TRUE(calls[1].input.init_sae_safetensors.has_value());
  EXPECT_EQ(*calls[1].input.init_sae_safetensors, calls[0].output_bytes);
  ASSERT_TRUE(calls[2].input.init_sae_safetensors.has_value());
  EXPECT_EQ(*calls[2].input.init_sae_safetensors, calls[1].output_bytes);

  auto job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job->progress().tasks_done(), 3);

  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->checkpoints_size(), 3);
  EXPECT_EQ(metrics->checkpoints(2).step(), 20);
  EXPECT_EQ(metrics->checkpoints(2).chain_index(), 2);
  EXPECT_NEAR(metrics->checkpoints(2).fvu(), 0.12, 1e-9);
  EXPECT_EQ(metrics->checkpoints(2).d_sae(), kDSae);
  EXPECT_FALSE(metrics->checkpoints(0).has_median_decoder_cos_prev());
  EXPECT_NEAR(metrics->checkpoints(1).median_decoder_cos_prev(), 0.9, 1e-6);

  auto history = client_->GetFeatureHistory(job_id, 1, 5);
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->points_size(), 3);
  EXPECT_NEAR(history->points(0).frequency(), 0.05, 1e-6);
  EXPECT_NEAR(history->points(2).max_activation(), 4.0, 1e-6);
  EXPECT_FALSE(history->points(0).has_decoder_cos_prev());
  EXPECT_NEAR(history->points(1).decoder_cos_prev(), 0.9, 1e-6);
}

// A result is stored however long it takes to get to the coordinator, and
// through a coordinator restart that loses the staged uploads: nothing is
// trained twice, nothing is lost.
TEST_F(WorkerTest, ALeaseLivesUntilItsResultIsCommitted) {
  // A short lease: 600 ms, heartbeats every 200 ms.
  const int port = coordinator_->port();
  const auto start_coordinator = [&] {
    CoordinatorOptions options;
    options.data_dir = dir_ + "/data";
    options.listen_address = absl::StrCat("127.0.0.1:", port);
    options.metrics_listen_address = "";
    options.lease_ttl_ms = 600;
    auto coordinator = Coordinator::Start(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
  };
  coordinator_->Shutdown();
  coordinator_.reset();
  start_coordinator();
  const std::string job_id = SubmitJob();

  FakeEngine engine;
  int completes = 0;
  WorkerOptions options;
  options.coordinator = address_;
  options.max_tasks = 3;
  options.chunk_bytes = 1024;
  options.lease_wait = absl::Milliseconds(200);
  options.retry_backoff = absl::Milliseconds(100);
  options.before_complete_for_testing = [&] {
    ++completes;
    if (completes == 1) {
      // Three lease TTLs between the uploads and CompleteTask (a slow link):
      // the heartbeat keeps the lease.
      absl::SleepFor(absl::Milliseconds(1800));
    } else if (completes == 2) {
      // The coordinator restarts with the second SAE's uploads staged: they
      // are on disk, and CompleteTask stores them at the first try.
      coordinator_->Shutdown();
      coordinator_.reset();
      start_coordinator();
    } else if (completes == 3) {
      // It restarts and its staging directory is lost with the third SAE's
      // uploads in it: CompleteTask fails, the worker sends them again.
      coordinator_->Shutdown();
      coordinator_.reset();
      std::filesystem::remove_all(dir_ + "/data/staging");
      start_coordinator();
    }
  };
  auto worker = Worker::Create(options, std::make_unique<Borrowed>(&engine));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE((*worker)->Run().ok());

  // Each SAE trained once; only the third one's completion was tried twice.
  EXPECT_EQ(engine.calls().size(), 3u);
  EXPECT_EQ(completes, 4);
  ASSERT_TRUE(WaitForJob(job_id, v1::JOB_STATE_SUCCEEDED));
  auto job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->progress().tasks_done(), 3);
  // Each attempt is one lease: no task was leased again.
  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->checkpoints_size(), 3);
  EXPECT_EQ(metrics->checkpoints(1).step(), 10);
  EXPECT_EQ(client_->DownloadSae(job_id, 1, 10).value_or(""),
            engine.calls()[1].output_bytes);
}

// A heartbeat that crosses CompleteTask is refused (the stored result ended
// the lease); that is the completion's race, not a lost lease, and the
// worker says nothing about it.
TEST_F(WorkerTest, AHeartbeatCrossingTheCompletionIsNotALostLease) {
  // A 600 ms lease, beats every 200 ms.
  CoordinatorOptions coordinator_options;
  coordinator_options.data_dir = dir_ + "/data";
  coordinator_options.listen_address =
      absl::StrCat("127.0.0.1:", coordinator_->port());
  coordinator_options.metrics_listen_address = "";
  coordinator_options.lease_ttl_ms = 600;
  coordinator_->Shutdown();
  coordinator_.reset();
  auto coordinator = Coordinator::Start(coordinator_options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  coordinator_ = *std::move(coordinator);
  const std::string job_id = SubmitJob();

  FakeEngine engine;
  WorkerOptions options;
  options.coordinator = address_;
  options.max_tasks = 3;
  options.lease_wait = absl::Milliseconds(200);
  // Beats go on for three intervals after each result is stored.
  options.after_complete_for_testing = [] {
    absl::SleepFor(absl::Milliseconds(700));
  };
  auto worker = Worker::Create(options, std::make_unique<Borrowed>(&engine));
  ASSERT_TRUE(worker.ok()) << worker.status();
  ::testing::internal::CaptureStderr();
  const absl::Status run = (*worker)->Run();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(run.ok()) << run;

  EXPECT_EQ(engine.calls().size(), 3u);
  EXPECT_THAT(log, ::testing::Not(HasSubstr("lease lost"))) << log;
  EXPECT_THAT(log, ::testing::Not(HasSubstr("abandoned"))) << log;
  EXPECT_THAT(log, ::testing::Not(HasSubstr("not stored"))) << log;
  ASSERT_TRUE(WaitForJob(job_id, v1::JOB_STATE_SUCCEEDED));
}

// Trains until its progress callback says stop.
class BlockingEngine final : public engine::SaeTrainingEngine {
 public:
  absl::StatusOr<engine::TrainOutput> Train(
      const engine::TrainInput&, const engine::ProgressFn& progress) override {
    started_.Notify();
    while (progress(1, 0.5)) absl::SleepFor(absl::Milliseconds(10));
    return absl::CancelledError("stopped");
  }
  absl::Notification started_;
};

TEST_F(WorkerTest, StoppedWorkerHandsItsTaskBack) {
  const std::string job_id = SubmitJob();
  WorkerOptions options;
  options.coordinator = address_;
  options.lease_wait = absl::Milliseconds(200);
  auto engine = std::make_unique<BlockingEngine>();
  BlockingEngine* blocking = engine.get();
  auto worker = Worker::Create(options, std::move(engine));
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::thread run([&] { EXPECT_TRUE((*worker)->Run().ok()); });
  ASSERT_TRUE(
      blocking->started_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  (*worker)->Stop();
  run.join();
  // The lease (30 s by default) has not expired, yet another worker gets the
  // task at once and finishes the job.
  const absl::Time start = absl::Now();
  FakeEngine fake;
  RunWorker(std::make_unique<Borrowed>(&fake), 3);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  ASSERT_EQ(fake.calls().size(), 3u);
  absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);
}

// when_idle (where main returns freed memory to the OS) runs once when the
// worker runs out of tasks, not before its first task and not at every
// empty lease after.
TEST_F(WorkerTest, GoingIdleAfterTasksCallsWhenIdleOnce) {
  std::atomic<int> idle_calls{0};
  WorkerOptions options;
  options.coordinator = address_;
  options.lease_wait = absl::Milliseconds(100);
  options.when_idle = [&idle_calls] { ++idle_calls; };
  FakeEngine fake;
  auto worker = Worker::Create(options, std::make_unique<Borrowed>(&fake));
  ASSERT_TRUE(worker.ok()) << worker.status();
  std::thread run([&] { EXPECT_TRUE((*worker)->Run().ok()); });
  absl::SleepFor(absl::Milliseconds(500));  // empty leases, nothing run
  EXPECT_EQ(idle_calls.load(), 0);

  const std::string job_id = SubmitJob();
  EXPECT_TRUE(WaitForJob(job_id, v1::JOB_STATE_SUCCEEDED));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (idle_calls.load() == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  absl::SleepFor(absl::Milliseconds(500));  // more empty leases
  (*worker)->Stop();
  run.join();
  EXPECT_EQ(fake.calls().size(), 3u);
  EXPECT_EQ(idle_calls.load(), 1);
}

TEST_F(WorkerTest, PassesTrainingOptionsAndStoresTheirResults) {
  const std::string job_id = SubmitJob([](v1::JobSpec* spec) {
    spec->mutable_sae()->set_architecture("topk");
    spec->mutable_sae()->set_k(3);
    spec->mutable_sae()->set_dead_window_tokens(400);
    spec->mutable_schedule()->set_adaptive_window_tokens(20);
    spec->mutable_schedule()->set_adaptive_tolerance(0.01);
    spec->mutable_schedule()->set_lm_eval_tokens(64);
  });
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 3);

  std::vector<FakeEngine::Call> calls = engine.calls();
  ASSERT_EQ(calls.size(), 3u);
  const engine::TrainInput& first = calls[0].input;
  EXPECT_EQ(first.sae_architecture, "topk");
  EXPECT_EQ(first.k, 3);
  EXPECT_EQ(first.aux_k, 6);  // The validator's default, 2 * k.
  EXPECT_DOUBLE_EQ(first.aux_coefficient, 1.0 / 32);
  EXPECT_EQ(first.dead_window_tokens, 400);
  EXPECT_FALSE(first.ghost_grads);  // topk uses AuxK instead.
  EXPECT_EQ(first.lm_eval_tokens, 64);
  // The adaptive budget applies to later SAEs only.
  EXPECT_EQ(first.adaptive_window_tokens, 0);
  EXPECT_EQ(calls[1].input.adaptive_window_tokens, 20);
  EXPECT_DOUBLE_EQ(calls[1].input.adaptive_tolerance, 0.01);
  EXPECT_EQ(first.state_dir, "");  // No --state_dir.

  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->checkpoints_size(), 3);
  const v1::CheckpointMetrics& m0 = metrics->checkpoints(0);
  EXPECT_EQ(m0.sae_architecture(), "topk");
  EXPECT_EQ(m0.k(), 3);
  EXPECT_FALSE(m0.stopped_early());
  EXPECT_TRUE(metrics->checkpoints(1).stopped_early());
  ASSERT_EQ(m0.density_histogram_size(), engine::kDensityBins);
  EXPECT_EQ(m0.density_histogram(0), 1);
  EXPECT_EQ(m0.density_histogram(engine::kDensityBins - 1), kDSae - 1);
  ASSERT_TRUE(m0.has_lm());
  EXPECT_DOUBLE_EQ(m0.lm().ce_clean(), 3.0);
  EXPECT_DOUBLE_EQ(m0.lm().ce_spliced(), 3.5);
  EXPECT_DOUBLE_EQ(m0.lm().ce_zero_ablated(), 6.0);
  EXPECT_DOUBLE_EQ(m0.lm().loss_recovered(), 5.0 / 6);
  EXPECT_DOUBLE_EQ(m0.lm().kl_divergence(), 0.25);
  EXPECT_EQ(m0.lm().tokens(), 64);
  EXPECT_EQ(m0.resumed_from_tokens(), 0);
}

// The trust checks run at the reference checkpoints (the first and the last
// of a 3-checkpoint chain for reference_checkpoints 2) with seed + 1 and the
// first SAE's recipe; their results are stored with the metrics and judged by
// QueryService.GetQualityChecks.
TEST_F(WorkerTest, ReferenceChecksRunAtReferenceCheckpointsAndAreJudged) {
  const std::string job_id = SubmitJob([](v1::JobSpec* spec) {
    spec->mutable_schedule()->set_reference_checkpoints(2);
    spec->mutable_sae()->set_seed(41);
  });
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 3);
  std::vector<FakeEngine::Call> calls = engine.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_TRUE(calls[0].input.reference_check);
  EXPECT_FALSE(calls[1].input.reference_check);
  EXPECT_TRUE(calls[2].input.reference_check);
  EXPECT_EQ(calls[2].input.reference_seed, 42u);
  EXPECT_EQ(calls[2].input.reference_train_tokens, calls[0].input.train_tokens);
  EXPECT_DOUBLE_EQ(calls[2].input.reference_lr, calls[0].input.lr);
  EXPECT_EQ(calls[2].input.reference_warmup_steps, calls[0].input.warmup_steps);

  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->checkpoints_size(), 3);
  const v1::CheckpointMetrics& m0 = metrics->checkpoints(0);
  EXPECT_DOUBLE_EQ(m0.activation_scale(), 0.25);
  EXPECT_EQ(m0.distinct_tokens(), 1000);
  EXPECT_DOUBLE_EQ(m0.held_out_loss(), 0.02);
  EXPECT_DOUBLE_EQ(m0.median_decoder_cos_init(), 0.97);
  ASSERT_TRUE(m0.has_reference());
  EXPECT_EQ(m0.reference().seed(), 42u);
  EXPECT_DOUBLE_EQ(m0.reference().match_median_cosine(), 0.36);
  EXPECT_FALSE(metrics->checkpoints(1).has_reference());

  absl::StatusOr<v1::GetQualityChecksResponse> quality =
      client_->GetQualityChecks(job_id, 1);
  ASSERT_TRUE(quality.ok()) << quality.status();
  ASSERT_EQ(quality->checkpoints_size(), 2);
  // Seed stability and distance from initialisation at the first, distance
  // and chain vs independent at the last; all fail on these numbers.
  ASSERT_EQ(quality->verdicts_size(), 4);
  EXPECT_EQ(quality->verdicts(0).check(), "seed stability");
  EXPECT_THAT(quality->verdicts(0).verdict(),
              HasSubstr("features are determined by the seed"));
  EXPECT_EQ(quality->verdicts(3).check(), "chain vs independent");
  EXPECT_THAT(quality->verdicts(3).verdict(), HasSubstr("under-trained"));
  for (const v1::QualityVerdict& v : quality->verdicts()) {
    EXPECT_FALSE(v.passed()) << v.verdict();
  }
  EXPECT_EQ(client_->GetQualityChecks(job_id, 7).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(WorkerTest, GhostGradsLaterReachEveryLaterSae) {
  SubmitJob([](v1::JobSpec* spec) {
    spec->mutable_sae()->set_ghost_grads_later(true);
  });
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 3);
  std::vector<FakeEngine::Call> calls = engine.calls();
  ASSERT_EQ(calls.size(), 3u);
  for (const FakeEngine::Call& call : calls) {
    EXPECT_TRUE(call.input.ghost_grads);
  }
}

TEST_F(WorkerTest, ReluL1DefaultsGhostGradsForTheFirstSaeAndLmEvaluation) {
  const std::string job_id = SubmitJob([](v1::JobSpec* spec) {
    spec->mutable_schedule()->set_lm_eval_tokens(0);  // Skip it.
  });
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 2);
  std::vector<FakeEngine::Call> calls = engine.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_TRUE(calls[0].input.ghost_grads);
  EXPECT_FALSE(calls[1].input.ghost_grads);  // the paper's later SAEs
  EXPECT_EQ(calls[0].input.lm_eval_tokens, 0);
  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_GE(metrics->checkpoints_size(), 1);
  EXPECT_FALSE(metrics->checkpoints(0).has_lm());
  EXPECT_EQ(metrics->checkpoints(0).sae_architecture(), "relu_l1");
  EXPECT_EQ(metrics->checkpoints(0).k(), 0);
}

TEST_F(WorkerTest, TrainingStateLivesUntilTheResultIsStored) {
  const std::string job_id = SubmitJob();
  const std::string state_dir = dir_ + "/state";
  FakeEngine engine;
  // The first task fails (retryable) and leaves its state for the retry.
  engine.FailCall(0, absl::UnavailableError("device lost"));
  RunWorker(std::make_unique<Borrowed>(&engine), 1, state_dir);
  std::vector<FakeEngine::Call> calls = engine.calls();
  ASSERT_EQ(calls.size(), 1u);
  const std::string task_dir = state_dir + "/" + job_id + "-L1-s0";
  EXPECT_EQ(calls[0].input.state_dir, task_dir);
  EXPECT_EQ(calls[0].input.checkpoint_every_tokens, 300);
  EXPECT_TRUE(std::filesystem::exists(task_dir + "/state.pt"));

  // The retry runs in the same directory, resumes and, once its result is
  // stored, deletes it.
  RunWorker(std::make_unique<Borrowed>(&engine), 2, state_dir);
  calls = engine.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[1].input.state_dir, task_dir);
  EXPECT_EQ(calls[2].input.state_dir, state_dir + "/" + job_id + "-L1-s10");
  EXPECT_FALSE(std::filesystem::exists(task_dir));
  EXPECT_FALSE(std::filesystem::exists(calls[2].input.state_dir));
  EXPECT_TRUE(std::filesystem::is_directory(state_dir));
  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->checkpoints_size(), 2);
  EXPECT_EQ(metrics->checkpoints(0).resumed_from_tokens(), 10);
}

TEST_F(WorkerTest, RejectsBadStateOptions) {
  WorkerOptions options;
  options.coordinator = address_;
  options.checkpoint_every_tokens = -1;
  auto worker = Worker::Create(options, std::make_unique<FakeEngine>());
  EXPECT_EQ(worker.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(worker.status().message(), HasSubstr("checkpoint_every_tokens"));

  std::ofstream(dir_ + "/a-file") << "x";
  options.checkpoint_every_tokens = 0;
  options.state_dir = dir_ + "/a-file";
  worker = Worker::Create(options, std::make_unique<FakeEngine>());
  EXPECT_EQ(worker.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(worker.status().message(), HasSubstr("state_dir: cannot create"));
}

TEST_F(WorkerTest, RetryableFailureIsRetried) {
  const std::string job_id = SubmitJob();
  FakeEngine engine;
  engine.FailCall(1, absl::ResourceExhaustedError("out of memory"));
  // Three tasks plus one retry.
  RunWorker(std::make_unique<Borrowed>(&engine), 4);
  ASSERT_EQ(engine.calls().size(), 4u);
  EXPECT_THAT(engine.calls()[2].input.model_dir, HasSubstr("step-10"));
  auto job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(WorkerTest, PermanentFailureFailsTheJobWithTheReason) {
  const std::string job_id = SubmitJob();
  FakeEngine engine;
  engine.FailCall(0, absl::DataLossError("model.safetensors: truncated"));
  RunWorker(std::make_unique<Borrowed>(&engine), 1);
  auto job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(job->error(), HasSubstr("truncated"));
  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->checkpoints_size(), 0);
}

// With the coordinator's data roots (sent in every task), a token file
// swapped for a symlink leading out of them after the job was accepted fails
// the task for good before the engine opens anything.
TEST_F(WorkerTest, ASymlinkSwappedInAfterSubmissionFailsTheTask) {
  const int port = coordinator_->port();
  coordinator_->Shutdown();
  coordinator_.reset();
  CoordinatorOptions options;
  options.data_dir = dir_ + "/data";
  options.listen_address = absl::StrCat("127.0.0.1:", port);
  options.metrics_listen_address = "";
  options.data_roots = {dir_};
  auto coordinator = Coordinator::Start(options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  coordinator_ = *std::move(coordinator);
  const std::string job_id = SubmitJob();
  const std::string outside =
      absl::StrCat(::testing::TempDir(), "/worker-test-secret-", getpid());
  std::ofstream(outside, std::ios::binary) << std::string(2 * 4096, 'S');
  const std::string tokens = dir_ + "/tokens.u16";
  ASSERT_EQ(::unlink(tokens.c_str()), 0);
  ASSERT_EQ(::symlink(outside.c_str(), tokens.c_str()), 0);
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 1);
  std::remove(outside.c_str());
  EXPECT_TRUE(engine.calls().empty());
  auto job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(job->error(), HasSubstr("outside the data roots"));
  auto metrics = client_->GetCheckpointMetrics(job_id, 1);
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->checkpoints_size(), 0);
}

TEST_F(WorkerTest, AnalysesEveryCheckpointAgainstTheFinalReference) {
  const std::string job_id = SubmitJob([](v1::JobSpec* spec) {
    spec->mutable_analysis()->set_analysis_tokens(64);
    spec->mutable_analysis()->set_top_k(3);
  });
  FakeEngine engine;
  RunWorker(std::make_unique<Borrowed>(&engine), 6);  // 3 train + 3 analyse.

  const std::vector<engine::AnalysisInput> analyses = engine.analyses();
  ASSERT_EQ(analyses.size(), 3u);
  // The final checkpoint first, choosing the reference positions itself.
  EXPECT_THAT(analyses[0].model_dir, HasSubstr("step-20"));
  EXPECT_TRUE(analyses[0].reference_positions.empty());
  EXPECT_EQ(analyses[0].analysis_tokens, 64);
  EXPECT_EQ(analyses[0].top_k, 3);
  EXPECT_EQ(analyses[0].logit_effects_k, 10);  // the validator's default
  // Its SAE is the one this worker trained last, kept in memory.
  EXPECT_EQ(analyses[0].sae_safetensors, engine.calls()[2].output_bytes);
  for (int a = 1; a < 3; ++a) {
    ASSERT_EQ(analyses[a].reference_positions.size(), 3u * kDSae);
    EXPECT_EQ(analyses[a].reference_positions[3 * 5 + 1], 10 * 5 + 1);
  }
  // The other checkpoints' SAEs were downloaded.
  std::set<std::string> saes = {analyses[1].sae_safetensors,
                                analyses[2].sae_safetensors};
  EXPECT_EQ(saes, (std::set<std::string>{engine.calls()[0].output_bytes,
                                         engine.calls()[1].output_bytes}));

  // The analysis results were stored on the points...
  v1::GetFeatureHistoryRequest request;
  request.set_job_id(job_id);
  request.set_layer(1);
  request.set_feature_id(4);
  request.set_include_contexts(true);
  auto history = client_->GetFeatureHistory(request);
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->points_size(), 3);
  for (const v1::FeaturePoint& point : history->points()) {
    EXPECT_TRUE(point.analysed());
    EXPECT_FLOAT_EQ(point.progress_activation(), 0.4f);
    EXPECT_FLOAT_EQ(point.progress_token_controlled(), 0.08f);
    ASSERT_EQ(point.contexts_size(), 3);
    EXPECT_EQ(point.contexts(2).position(), 42);
    EXPECT_EQ(point.contexts(2).token(), 7);
    ASSERT_EQ(point.logit_effects().promoted_size(), 10);
    ASSERT_EQ(point.logit_effects().suppressed_size(), 10);
    EXPECT_EQ(point.logit_effects().promoted(0).token_id(), 400);
    EXPECT_FLOAT_EQ(point.logit_effects().promoted(9).value(), -4.0f);
    EXPECT_EQ(point.logit_effects().suppressed(2).token_id(), 452);
    EXPECT_FLOAT_EQ(point.logit_effects().suppressed(0).value(), -5.0f);
  }
  request.set_feature_id(0);
  history = client_->GetFeatureHistory(request);
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->points_size(), 3);
  EXPECT_FALSE(history->points(0).has_progress_token_controlled());
  // The fake engine's SAEs are safetensors of the job's shape (the
  // coordinator refuses anything else at CompleteTask), so the summary is
  // computed from them and the job succeeds.
  ASSERT_TRUE(WaitForJob(job_id, v1::JOB_STATE_SUCCEEDED));
  auto job = client_->GetJob(job_id);
  ASSERT_TRUE(job.ok());
  // Three passes and the layer's summary.
  EXPECT_EQ(job->progress().analysis_tasks_done(), 4);
  EXPECT_EQ(job->error(), "");
}

}  // namespace
}  // namespace saetrack::worker
