// End to end, over real processes: saetrack-tinylm writes a short series of
// real GPT-NeoX training checkpoints; a real saetrack-coordinator (RocksDB in
// a temp dir) and saetrack-worker (LibTorch) talk gRPC over loopback; the job
// goes in and the answers come out through the saetrack CLI, as a user would
// drive them. Then the coordinator restarts on the same directory and must
// give the same answers.
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using ::saetrack::testing::ChildProcess;
using ::saetrack::testing::CommandResult;
using ::testing::HasSubstr;

constexpr int kLayer = 1;
const std::vector<int> kSteps = {0, 16, 64, 256};
constexpr int kDSae = 32 * 4;

template <typename T>
T FromJson(const std::string& json) {
  T message;
  auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

class EndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("e2e"));
    ASSERT_FALSE(dir_->empty());

    // A tiny GPT-NeoX, really trained: checkpoints a few hundred steps apart.
    std::string steps;
    for (int s : kSteps) absl::StrAppend(&steps, steps.empty() ? "" : ",", s);
    auto lm = testing::RunCommand(
        {SAETRACK_TINYLM_BIN, "--corpus", SAETRACK_CORPUS, "--out",
         *dir_ + "/lm", "--steps", steps, "--d_model", "32", "--layers", "2",
         "--heads", "4", "--ctx", "32", "--batch", "16", "--seed", "1",
         // ctest runs two tests at once on CI's
         // two cores: more threads only contend.
         "--threads", "1"},
        *dir_ + "/tinylm", absl::Minutes(5));
    ASSERT_TRUE(lm.ok()) << lm.status();
    ASSERT_EQ(lm->exit_code, 0) << lm->err;

    StartCoordinator();
    auto worker = ChildProcess::Start(
        {SAETRACK_WORKER_BIN, "--coordinator", Address(), "--threads", "1",
         "--metrics_listen", "127.0.0.1:0", "--lease_wait", "1s"},
        *dir_ + "/worker");
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = worker->release();
    const std::string kPortTag = "metrics on port ";
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          return worker_->Stderr().find(kPortTag) != std::string::npos ||
                 worker_->Wait(absl::ZeroDuration()).ok();
        },
        absl::Seconds(30)));
    const std::string log = worker_->Stderr();
    const size_t tag = log.find(kPortTag);
    ASSERT_NE(tag, std::string::npos) << log;
    ASSERT_TRUE(absl::SimpleAtoi(
        log.substr(tag + kPortTag.size(),
                   log.find_first_not_of("0123456789", tag + kPortTag.size()) -
                       tag - kPortTag.size()),
        &worker_metrics_port_));

    // Submit and wait as a user would, but stop early if the worker dies.
    WriteJob("job.json", GoodJob());
    auto submit =
        ChildProcess::Start({SAETRACK_CLI_BIN, "submit", *dir_ + "/job.json",
                             "--wait", "--json", "--coordinator", Address()},
                            *dir_ + "/submit");
    ASSERT_TRUE(submit.ok()) << submit.status();
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          return (*submit)->Wait(absl::ZeroDuration()).ok() ||
                 worker_->Wait(absl::ZeroDuration()).ok();
        },
        absl::Minutes(10)));
    absl::StatusOr<int> code = (*submit)->Wait(absl::Seconds(5));
    ASSERT_TRUE(code.ok()) << "worker exited:\n" << worker_->Stderr();
    ASSERT_EQ(*code, 0) << (*submit)->Stderr() << "\nworker log:\n"
                        << worker_->Stderr();
    v1::Job job = FromJson<v1::Job>((*submit)->Stdout());
    ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
    job_id_ = new std::string(job.job_id());
  }

  static void TearDownTestSuite() {
    delete worker_;
    delete coordinator_;
  }

  static void StartCoordinator() {
    const std::string port_file = *dir_ + "/ports";
    std::remove(port_file.c_str());
    auto coordinator = ChildProcess::Start(
        {SAETRACK_COORDINATOR_BIN, "--data_dir", *dir_ + "/data", "--listen",
         "127.0.0.1:0", "--metrics_listen", "127.0.0.1:0", "--port_file",
         port_file},
        *dir_ + "/coordinator");
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = coordinator->release();
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          return testing::ReadFileOrEmpty(port_file).find("metrics=") !=
                 std::string::npos;
        },
        absl::Seconds(30)))
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

  static std::string GoodJob() {
    std::string checkpoints;
    for (int s : kSteps) {
      absl::StrAppend(&checkpoints, checkpoints.empty() ? "" : ", ",
                      "{\"step\": ", s, ", \"path\": \"lm/checkpoints/step-", s,
                      "\"}");
    }
    return absl::StrCat(R"({
  "name": "e2e",
  "model": {"architecture": "gpt_neox", "checkpoints": [)",
                        checkpoints, R"(]},
  "data": {"tokens_path": "lm/tokens.u16", "context_length": 32,
           "tokenizer_path": "lm/tokenizer.json"},
  "hooks": [{"layer": )",
                        kLayer, R"(}],
  "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3, "lr_first": 1e-3,
          "lr_later": 3e-4, "warmup_steps_first": 20, "warmup_steps_later": 5,
          "batch_size": 512, "seed": 7},
  "schedule": {"tokens_first": 200000, "tokens_later": 40000,
               "eval_tokens": 8192}
})");
  }

  static void WriteJob(const std::string& name, const std::string& text) {
    std::ofstream(*dir_ + "/" + name) << text;
  }

  static CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), SAETRACK_CLI_BIN);
    args.push_back("--coordinator");
    args.push_back(Address());
    static int calls = 0;
    auto result = testing::RunCommand(
        args, absl::StrCat(*dir_, "/cli-", calls++), absl::Minutes(10));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  static v1::GetCheckpointMetricsResponse Metrics() {
    CommandResult r =
        Cli({"metrics", *job_id_, "--layer", std::to_string(kLayer), "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return FromJson<v1::GetCheckpointMetricsResponse>(r.out);
  }

  static v1::FeatureHistory Feature(int id) {
    CommandResult r =
        Cli({"feature", *job_id_, "--layer", std::to_string(kLayer), "--id",
             std::to_string(id), "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return FromJson<v1::FeatureHistory>(r.out);
  }

  // The stored SAE bytes, straight from WorkerService.DownloadSae (chunks
  // reassembled; the CLI's own client checks offsets and the CRC-32C).
  static std::string DownloadSae(int layer, int64_t step) {
    auto stub = v1::WorkerService::NewStub(
        grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::DownloadSaeRequest request;
    request.mutable_sae()->set_job_id(*job_id_);
    request.mutable_sae()->set_layer(layer);
    request.mutable_sae()->set_step(step);
    auto reader = stub->DownloadSae(&context, request);
    std::string bytes;
    v1::DownloadChunk chunk;
    while (reader->Read(&chunk)) {
      EXPECT_EQ(chunk.offset(), static_cast<int64_t>(bytes.size()));
      bytes += chunk.data();
    }
    grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    return bytes;
  }

  static std::string* dir_;
  static std::string* job_id_;
  static ChildProcess* coordinator_;
  static ChildProcess* worker_;
  static int port_;
  static int metrics_port_;
  static int worker_metrics_port_;
};

std::string* EndToEndTest::dir_ = nullptr;
std::string* EndToEndTest::job_id_ = nullptr;
ChildProcess* EndToEndTest::coordinator_ = nullptr;
ChildProcess* EndToEndTest::worker_ = nullptr;
int EndToEndTest::port_ = 0;
int EndToEndTest::metrics_port_ = 0;
int EndToEndTest::worker_metrics_port_ = 0;

TEST_F(EndToEndTest, EveryCheckpointHasMetrics) {
  v1::GetCheckpointMetricsResponse metrics = Metrics();
  ASSERT_EQ(metrics.checkpoints_size(), static_cast<int>(kSteps.size()));
  for (int i = 0; i < metrics.checkpoints_size(); ++i) {
    const v1::CheckpointMetrics& m = metrics.checkpoints(i);
    EXPECT_EQ(m.chain_index(), i);
    EXPECT_EQ(m.step(), kSteps[i]);
    EXPECT_EQ(m.layer(), kLayer);
    EXPECT_EQ(m.d_in(), 32);
    EXPECT_EQ(m.d_sae(), kDSae);
    EXPECT_GE(m.tokens_trained(), i == 0 ? 200000 : 40000);
    EXPECT_TRUE(std::isfinite(m.fvu()));
    EXPECT_GT(m.l0(), 0);
    EXPECT_LE(m.l0(), kDSae);
    EXPECT_GE(m.dead_fraction(), 0);
    EXPECT_LE(m.dead_fraction(), 1);
  }
  // The first SAE learned something real from scratch.
  EXPECT_LT(metrics.checkpoints(0).fvu(), 0.5);
  EXPECT_LT(metrics.checkpoints(0).fvu(), metrics.checkpoints(0).init_fvu());
}

TEST_F(EndToEndTest, LaterSaesImproveOnTheirInitialisation) {
  v1::GetCheckpointMetricsResponse metrics = Metrics();
  ASSERT_EQ(metrics.checkpoints_size(), static_cast<int>(kSteps.size()));
  for (int i = 1; i < metrics.checkpoints_size(); ++i) {
    const v1::CheckpointMetrics& m = metrics.checkpoints(i);
    EXPECT_TRUE(std::isfinite(m.fvu())) << "chain " << i;
    EXPECT_TRUE(std::isfinite(m.init_fvu())) << "chain " << i;
    EXPECT_LT(m.fvu(), m.init_fvu()) << "chain " << i;
  }
}

// Logit effects: the default 10 promoted and 10 suppressed tokens per
// feature and checkpoint, sorted, decoded with the job's tokenizer; the CLI
// prints them for the first and the final checkpoint.
TEST_F(EndToEndTest, FeatureHistoryCarriesSortedDecodedLogitEffects) {
  for (int id : {0, kDSae - 1}) {
    const v1::FeatureHistory history = Feature(id);
    ASSERT_EQ(history.points_size(), static_cast<int>(kSteps.size()));
    for (const v1::FeaturePoint& p : history.points()) {
      ASSERT_TRUE(p.has_logit_effects()) << "step " << p.step();
      const v1::LogitEffects& e = p.logit_effects();
      ASSERT_EQ(e.promoted_size(), 10) << "step " << p.step();
      ASSERT_EQ(e.suppressed_size(), 10) << "step " << p.step();
      int decoded = 0;
      for (int j = 0; j < 10; ++j) {
        EXPECT_TRUE(std::isfinite(e.promoted(j).value()));
        EXPECT_GE(e.promoted(j).token_id(), 0);
        EXPECT_GE(e.suppressed(j).token_id(), 0);
        if (j > 0) {
          EXPECT_LE(e.promoted(j).value(), e.promoted(j - 1).value());
          EXPECT_GE(e.suppressed(j).value(), e.suppressed(j - 1).value());
        }
        decoded += !e.promoted(j).token().empty();
        decoded += !e.suppressed(j).token().empty();
      }
      // A promoted and a suppressed token differ: the direction is nonzero.
      EXPECT_GT(e.promoted(0).value(), e.suppressed(0).value());
      // The tiny LM's vocab is its tokenizer's: every id decodes.
      EXPECT_EQ(decoded, 20) << "step " << p.step();
    }
  }
  CommandResult r = Cli({"feature", *job_id_, "--layer", std::to_string(kLayer),
                         "--feature", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out,
              HasSubstr(absl::StrCat("\nlogit effects at step ", kSteps.front(),
                                     " (first checkpoint):\n"
                                     "  promoted:   ")));
  EXPECT_THAT(r.out,
              HasSubstr(absl::StrCat("\nlogit effects at step ", kSteps.back(),
                                     " (final checkpoint):\n")));
  EXPECT_THAT(r.out, HasSubstr("  suppressed: "));
}

TEST_F(EndToEndTest, DecoderCosinesAreInRangeAndTheChainIsContinuous) {
  v1::GetCheckpointMetricsResponse metrics = Metrics();
  ASSERT_EQ(metrics.checkpoints_size(), static_cast<int>(kSteps.size()));
  EXPECT_FALSE(metrics.checkpoints(0).has_median_decoder_cos_prev());
  for (int i = 1; i < metrics.checkpoints_size(); ++i) {
    ASSERT_TRUE(metrics.checkpoints(i).has_median_decoder_cos_prev());
    EXPECT_GT(metrics.checkpoints(i).median_decoder_cos_prev(), 0.5)
        << "chain " << i;
  }
  std::vector<double> cosines;
  for (int id : {0, 1, kDSae / 2, kDSae - 1}) {
    v1::FeatureHistory history = Feature(id);
    EXPECT_EQ(history.feature_id(), id);
    ASSERT_EQ(history.points_size(), static_cast<int>(kSteps.size()));
    EXPECT_FALSE(history.points(0).has_decoder_cos_prev());
    for (int i = 0; i < history.points_size(); ++i) {
      const v1::FeaturePoint& p = history.points(i);
      EXPECT_EQ(p.step(), kSteps[i]);
      EXPECT_GE(p.frequency(), 0);
      EXPECT_LE(p.frequency(), 1);
      if (i > 0) {
        ASSERT_TRUE(p.has_decoder_cos_prev());
        EXPECT_GE(p.decoder_cos_prev(), -1.0 - 1e-6);
        EXPECT_LE(p.decoder_cos_prev(), 1.0 + 1e-6);
        cosines.push_back(p.decoder_cos_prev());
      }
    }
  }
  std::sort(cosines.begin(), cosines.end());
  EXPECT_GT(cosines[cosines.size() / 2], 0.5);
}

TEST_F(EndToEndTest, HumanReadableOutput) {
  CommandResult status = Cli({"status", *job_id_});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr(*job_id_ + " succeeded: 4/4 SAEs trained"));
  CommandResult metrics =
      Cli({"metrics", *job_id_, "--layer", std::to_string(kLayer)});
  EXPECT_EQ(metrics.exit_code, 0) << metrics.err;
  EXPECT_THAT(metrics.out, HasSubstr("init FVU"));
  // A header and one row per checkpoint.
  EXPECT_EQ(std::count(metrics.out.begin(), metrics.out.end(), '\n'),
            1 + static_cast<int>(kSteps.size()));
}

TEST_F(EndToEndTest, UnknownFeatureJobAndLayerAreNotFound) {
  CommandResult r = Cli({"feature", *job_id_, "--layer", std::to_string(kLayer),
                         "--id", std::to_string(kDSae)});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(r.err, HasSubstr("feature"));
  r = Cli({"metrics", "job-999999", "--layer", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(r.err, HasSubstr("job-999999"));
  r = Cli({"metrics", *job_id_, "--layer", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(r.err, HasSubstr("layer"));
}

// The analysis pass ran on every checkpoint after the chain, and the
// coordinator's summary is served: drift quantiles and phases, one summary
// per feature, analysed points with contexts read back from the token file.
TEST_F(EndToEndTest, FeatureDynamicsAreStoredAndServed) {
  CommandResult r =
      Cli({"drift", *job_id_, "--layer", std::to_string(kLayer), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const v1::DriftSummary drift = FromJson<v1::DriftSummary>(r.out);
  ASSERT_EQ(drift.checkpoints_size(), static_cast<int>(kSteps.size()));
  for (size_t t = 0; t < kSteps.size(); ++t) {
    EXPECT_EQ(drift.checkpoints(t).step(), kSteps[t]);
  }
  // Every live feature is its own final direction.
  EXPECT_NEAR(drift.checkpoints(kSteps.size() - 1).cos_to_final().q10(), 1.0,
              1e-5);
  EXPECT_LT(drift.checkpoints(0).cos_to_final().q50(), 1.0);
  EXPECT_TRUE(drift.has_phases());  // Four checkpoints: one fit.
  int counted = 0;
  for (const v1::KindSummary& kind : drift.kinds()) counted += kind.count();
  EXPECT_EQ(counted, kDSae);
  EXPECT_EQ(drift.top_k(), 25);

  r = Cli({"features", *job_id_, "--layer", std::to_string(kLayer), "--order",
           "frequency", "--limit", "10", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto features = FromJson<v1::ListFeaturesResponse>(r.out);
  EXPECT_EQ(features.total(), kDSae);
  ASSERT_EQ(features.features_size(), 10);
  EXPECT_FALSE(features.next_page_token().empty());
  for (int i = 1; i < features.features_size(); ++i) {
    EXPECT_GE(features.features(i - 1).final_frequency(),
              features.features(i).final_frequency());
  }
  // The next page starts where this one ended; a token beyond the last
  // feature (even near INT64_MAX, where offset + page size would overflow)
  // is refused naming the field.
  r = Cli({"features", *job_id_, "--layer", std::to_string(kLayer), "--order",
           "frequency", "--limit", "10", "--page-token",
           features.next_page_token(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto second = FromJson<v1::ListFeaturesResponse>(r.out);
  ASSERT_EQ(second.features_size(), 10);
  EXPECT_LE(second.features(0).final_frequency(),
            features.features(9).final_frequency());
  for (const char* token : {"9223372036854775800", "129"}) {
    r = Cli({"features", *job_id_, "--layer", std::to_string(kLayer),
             "--page-token", token});
    EXPECT_NE(r.exit_code, 0) << token;
    EXPECT_THAT(r.err, HasSubstr("page_token")) << token;
    EXPECT_THAT(r.err, HasSubstr("beyond the last of the 128 features"))
        << token;
  }
  const v1::FeatureSummary& top = features.features(0);
  EXPECT_GT(top.final_frequency(), 0);
  EXPECT_NE(top.kind(), v1::FEATURE_KIND_DEAD);

  r = Cli({"feature", *job_id_, "--layer", std::to_string(kLayer), "--feature",
           std::to_string(top.feature_id()), "--contexts", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const v1::FeatureHistory history = FromJson<v1::FeatureHistory>(r.out);
  ASSERT_TRUE(history.has_summary());
  EXPECT_EQ(history.summary().kind(), top.kind());
  ASSERT_EQ(history.points_size(), static_cast<int>(kSteps.size()));
  const v1::FeaturePoint& last = history.points(kSteps.size() - 1);
  EXPECT_TRUE(last.analysed());
  EXPECT_NEAR(last.decoder_cos_final(), 1.0, 1e-5);
  EXPECT_NEAR(last.frequency(), top.final_frequency(), 1e-9);
  ASSERT_TRUE(last.has_progress_activation());
  ASSERT_EQ(last.contexts_size(), 25);
  for (const v1::FeatureContext& c : last.contexts()) {
    ASSERT_GT(c.window_size(), c.focus());
    // The window read from the token file holds the token the worker saw.
    EXPECT_EQ(c.window(c.focus()), c.token());
    EXPECT_GT(c.activation(), 0);
  }
  // Only analysed features have a formation step, at one of the checkpoints.
  if (history.summary().has_formation_step()) {
    EXPECT_NE(std::find(kSteps.begin(), kSteps.end(),
                        history.summary().formation_step()),
              kSteps.end());
  }

  // Not found names what is missing.
  r = Cli({"drift", *job_id_, "--layer", "0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("layer 0 is not hooked"));
  r = Cli({"features", "job-999999", "--layer", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("job-999999"));
}

// Every bad job is refused with a message naming the field; nothing is stored
// and the coordinator keeps serving.
TEST_F(EndToEndTest, BadJobsAreRefusedAndNothingIsStored) {
  WriteJob("bad-json.json", "{\"name\": \"x\",, }");
  CommandResult r = Cli({"submit", *dir_ + "/bad-json.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("byte 13"));

  std::string missing = GoodJob();
  const std::string second = "lm/checkpoints/step-" + std::to_string(kSteps[1]);
  missing.replace(missing.find(second), second.size(), "lm/checkpoints/nope");
  WriteJob("missing.json", missing);
  r = Cli({"submit", *dir_ + "/missing.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("model.checkpoints[1].path"));
  EXPECT_THAT(r.err, HasSubstr("nope"));

  std::string bad_layer = GoodJob();
  const std::string hook = absl::StrCat("\"layer\": ", kLayer);
  bad_layer.replace(bad_layer.find(hook), hook.size(), "\"layer\": 7");
  WriteJob("bad-layer.json", bad_layer);
  r = Cli({"submit", *dir_ + "/bad-layer.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("hooks[0].layer"));

  CommandResult list = Cli({"list", "--json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  v1::ListJobsResponse jobs = FromJson<v1::ListJobsResponse>(list.out);
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).job_id(), *job_id_);
}

TEST_F(EndToEndTest, MetricsEndpointServesPrometheusText) {
  absl::StatusOr<std::string> body =
      testing::HttpGet(metrics_port_, "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_THAT(*body, HasSubstr("saetrack_jobs{state=\"succeeded\"} 1"));
  EXPECT_THAT(*body, HasSubstr("saetrack_rpcs_total"));

  body = testing::HttpGet(worker_metrics_port_, "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  // One training and one analysis task per checkpoint.
  EXPECT_THAT(*body, HasSubstr(absl::StrCat(
                         "saetrack_worker_tasks_total{outcome=\"succeeded\"} ",
                         2 * kSteps.size())));
  EXPECT_THAT(*body, HasSubstr("saetrack_worker_tokens_trained_total"));
}

// `saetrack export` writes a stored SAE as SAELens reads it: a cfg.json
// describing the chain entry and the stored weights, unchanged.
TEST_F(EndToEndTest, ExportWritesTheSaeInSaelensLayout) {
  constexpr int kStep = 64;
  v1::GetCheckpointMetricsResponse metrics = Metrics();
  const v1::CheckpointMetrics* entry = nullptr;
  for (const auto& m : metrics.checkpoints()) {
    if (m.step() == kStep) entry = &m;
  }
  ASSERT_NE(entry, nullptr);
  CommandResult status = Cli({"status", *job_id_, "--json"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  const v1::Job job = FromJson<v1::Job>(status.out);
  std::string model_path;
  for (const auto& c : job.spec().model().checkpoints()) {
    if (c.step() == kStep) model_path = c.path();
  }
  ASSERT_THAT(model_path, HasSubstr("step-64"));

  const std::string out = *dir_ + "/export/step-64";
  CommandResult r = Cli({"export", *job_id_, "--layer", std::to_string(kLayer),
                         "--step", std::to_string(kStep), "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            absl::StrCat("exported job ", *job_id_, " layer ", kLayer, " step ",
                         kStep, " (relu_l1, d_in ", entry->d_in(), ", d_sae ",
                         entry->d_sae(), ") to ", out, "\n"));

  // cfg.json: SAELens's fields, then saetrack's in "metadata".
  auto cfg = FromJson<google::protobuf::Struct>(
                 testing::ReadFileOrEmpty(out + "/cfg.json"))
                 .fields();
  EXPECT_EQ(cfg["architecture"].string_value(), "standard");
  EXPECT_EQ(cfg["d_in"].number_value(), entry->d_in());
  EXPECT_EQ(cfg["d_sae"].number_value(), entry->d_sae());
  EXPECT_EQ(cfg["dtype"].string_value(), "float32");
  EXPECT_EQ(cfg["hook_name"].string_value(),
            absl::StrCat("blocks.", kLayer, ".hook_resid_pre"));
  EXPECT_EQ(cfg["hook_layer"].number_value(), kLayer);
  EXPECT_EQ(cfg["model_name"].string_value(), model_path);
  auto metadata = cfg["metadata"].struct_value().fields();
  EXPECT_EQ(metadata["saetrack_architecture"].string_value(), "relu_l1");
  EXPECT_EQ(metadata["checkpoint_step"].number_value(), kStep);
  EXPECT_EQ(metadata["job_id"].string_value(), *job_id_);

  // The weights are the stored SAE's bytes, with SAELens's tensor shapes.
  const std::string weights =
      testing::ReadFileOrEmpty(out + "/sae_weights.safetensors");
  ASSERT_GT(weights.size(), 8u);
  EXPECT_EQ(weights, DownloadSae(kLayer, kStep));
  uint64_t header_size = 0;
  std::memcpy(&header_size, weights.data(), 8);  // little-endian host
  ASSERT_LE(header_size, weights.size() - 8);
  auto tensors = FromJson<google::protobuf::Struct>(
                     weights.substr(8, static_cast<size_t>(header_size)))
                     .fields();
  // Member `key` of tensor `name`'s header entry (null when absent).
  auto member = [&](const std::string& name, const std::string& key) {
    const auto& fields = tensors[name].struct_value().fields();
    auto it = fields.find(key);
    return it == fields.end() ? google::protobuf::Value() : it->second;
  };
  auto shape = [&](const std::string& name) {
    std::vector<int> dims;
    const google::protobuf::Value shape = member(name, "shape");
    for (const auto& d : shape.list_value().values()) {
      dims.push_back(static_cast<int>(d.number_value()));
    }
    return dims;
  };
  const int d_in = entry->d_in(), d_sae = entry->d_sae();
  EXPECT_THAT(shape("W_enc"), ::testing::ElementsAre(d_in, d_sae));
  EXPECT_THAT(shape("b_enc"), ::testing::ElementsAre(d_sae));
  EXPECT_THAT(shape("W_dec"), ::testing::ElementsAre(d_sae, d_in));
  EXPECT_THAT(shape("b_dec"), ::testing::ElementsAre(d_in));
  for (const char* name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
    EXPECT_EQ(member(name, "dtype").string_value(), "F32") << name;
  }

  // Without --step: the last SAE of the chain; --json names the files.
  const std::string final_out = *dir_ + "/export/final";
  r = Cli({"export", *job_id_, "--layer", std::to_string(kLayer), "--out",
           final_out, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto summary = FromJson<google::protobuf::Struct>(r.out).fields();
  EXPECT_EQ(summary["step"].number_value(), kSteps.back());
  EXPECT_EQ(summary["chain_index"].number_value(),
            static_cast<double>(kSteps.size() - 1));
  EXPECT_EQ(summary["cfg_path"].string_value(), final_out + "/cfg.json");
  EXPECT_EQ(summary["weights_path"].string_value(),
            final_out + "/sae_weights.safetensors");
  EXPECT_EQ(testing::ReadFileOrEmpty(final_out + "/sae_weights.safetensors"),
            DownloadSae(kLayer, kSteps.back()));

  // A step without an SAE names the step and the steps there are.
  r = Cli({"export", *job_id_, "--layer", std::to_string(kLayer), "--step",
           "32", "--out", *dir_ + "/export/none"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(r.err, HasSubstr("step 32"));
  EXPECT_THAT(r.err, HasSubstr("0, 16, 64, 256"));
  EXPECT_EQ(testing::ReadFileOrEmpty(*dir_ + "/export/none/cfg.json"), "");
}

// Runs last (alphabetically and by declaration): restarts the coordinator.
// Hostile checkpoints, tried over the real processes: a FIFO for weights is
// refused at submission (it would hang the worker's open()), a checkpoint
// with a NaN weight fails its job naming the tensor, nothing of it is
// stored, and the worker lives on.
TEST_F(EndToEndTest, YHostileCheckpointsFailCleanlyAndTheWorkerLives) {
  const std::string good =
      *dir_ + "/lm/checkpoints/step-" + std::to_string(kSteps[0]);
  const auto job_on = [&](const std::string& checkpoint) {
    return absl::StrCat(R"({
  "model": {"architecture": "gpt_neox",
            "checkpoints": [{"step": 0, "path": ")",
                        checkpoint, R"("}]},
  "data": {"tokens_path": "lm/tokens.u16", "context_length": 32},
  "hooks": [{"layer": 1}],
  "sae": {"expansion_factor": 4, "batch_size": 512},
  "schedule": {"tokens_first": 20000, "eval_tokens": 4096,
               "reference_checkpoints": 0},
  "analysis": {"analysis_tokens": 4096}
})");
  };
  const std::string fifo_dir = *dir_ + "/fifo-ckpt";
  std::filesystem::create_directories(fifo_dir);
  std::filesystem::copy_file(good + "/config.json", fifo_dir + "/config.json");
  ASSERT_EQ(::mkfifo((fifo_dir + "/model.safetensors").c_str(), 0600), 0);
  WriteJob("fifo.json", job_on(fifo_dir));
  CommandResult r = Cli({"submit", *dir_ + "/fifo.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("spec.model.checkpoints[0].path: '" + fifo_dir +
                               "/model.safetensors' is not a regular file"));

  // One NaN in the first tensor of the data section.
  const std::string nan_dir = *dir_ + "/nan-ckpt";
  std::filesystem::create_directories(nan_dir);
  std::filesystem::copy_file(good + "/config.json", nan_dir + "/config.json");
  std::string weights = testing::ReadFileOrEmpty(good + "/model.safetensors");
  ASSERT_GT(weights.size(), 16u);
  uint64_t header = 0;
  std::memcpy(&header, weights.data(), 8);
  std::memset(&weights[8 + header], 0xFF, 4);
  std::ofstream(nan_dir + "/model.safetensors", std::ios::binary) << weights;
  WriteJob("nan.json", job_on(nan_dir));
  r = Cli({"submit", *dir_ + "/nan.json", "--wait"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("failed"));
  EXPECT_THAT(r.err, HasSubstr("holds 1 NaN or infinite value(s), the first "
                               "at element 0"));
  EXPECT_THAT(r.err, HasSubstr("nan-ckpt"));
  const std::string nan_job = "job-000002";
  CommandResult metrics = Cli({"metrics", nan_job, "--layer", "1", "--json"});
  ASSERT_EQ(metrics.exit_code, 0) << metrics.err;
  EXPECT_EQ(FromJson<v1::GetCheckpointMetricsResponse>(metrics.out)
                .checkpoints_size(),
            0)
      << metrics.out;
  // The worker is still up and serving its metrics.
  EXPECT_FALSE(worker_->Wait(absl::ZeroDuration()).ok()) << worker_->Stderr();
}

TEST_F(EndToEndTest, ZRestartOnTheSameDirectoryKeepsEveryAnswer) {
  const std::string metrics_before =
      Cli({"metrics", *job_id_, "--layer", "1", "--json"}).out;
  const std::string feature_before =
      Cli({"feature", *job_id_, "--layer", "1", "--id", "3", "--json"}).out;
  const std::string status_before = Cli({"status", *job_id_, "--json"}).out;
  ASSERT_FALSE(metrics_before.empty());

  // The idle worker stops on SIGTERM and exits 0 (not killed by the signal).
  worker_->Signal(SIGTERM);
  absl::StatusOr<int> worker_code = worker_->Wait(absl::Seconds(30));
  ASSERT_TRUE(worker_code.ok()) << worker_code.status();
  EXPECT_EQ(*worker_code, 0) << worker_->Stderr();

  coordinator_->Signal(SIGTERM);
  absl::StatusOr<int> code = coordinator_->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << coordinator_->Stderr();
  delete coordinator_;
  coordinator_ = nullptr;
  StartCoordinator();

  EXPECT_EQ(Cli({"metrics", *job_id_, "--layer", "1", "--json"}).out,
            metrics_before);
  EXPECT_EQ(
      Cli({"feature", *job_id_, "--layer", "1", "--id", "3", "--json"}).out,
      feature_before);
  EXPECT_EQ(Cli({"status", *job_id_, "--json"}).out, status_before);
}

}  // namespace
}  // namespace saetrack
