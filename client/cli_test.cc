#include "client/cli.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "worker/format/crc32c.h"
#include "worker/format/json.h"
#include "worker/format/saelens.h"
#include "worker/format/safetensors.h"

namespace saetrack::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result RunSaetrack(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  int code = RunCli(args, out, err, /*err_is_terminal=*/false);
  return {code, out.str(), err.str()};
}

TEST(CliTest, HelpListsEveryCommand) {
  Result r = RunSaetrack({"--help"});
  EXPECT_EQ(r.code, kExitOk);
  for (const char* command :
       {"submit", "status", "list", "watch", "cancel", "metrics", "feature",
        "export", "--step", "--out", "--coordinator", "--json"}) {
    EXPECT_THAT(r.out, HasSubstr(command));
  }
}

TEST(CliTest, UsageErrorsExitTwoWithOneLine) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"status"},
           {"metrics", "job-1"},
           {"feature", "job-1", "--layer", "1"},
           {"feature", "job-1", "--layer", "x", "--id", "1"},
           {"export", "job-1", "--out", "/tmp/x"},
           {"export", "job-1", "--layer", "1"},
           {"export", "--layer", "1", "--out", "/tmp/x"},
           {"export", "job-1", "--layer", "1", "--out", "/tmp/x", "--step",
            "x"},
           {"status", "job-1", "--bogus"},
           {"watch"},
           {"cancel"},
           {"cancel", "job-1", "job-2"},
           {"status", "job-1", "--coordinator"}}) {
    Result r = RunSaetrack(args);
    EXPECT_EQ(r.code, kExitUsage) << r.err;
    EXPECT_THAT(r.err, StartsWith("saetrack: "));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST(CliTest, UnreadableJobFileFailsBeforeContactingCoordinator) {
  Result r = RunSaetrack(
      {"submit", "/nonexistent/job.json", "--coordinator", "127.0.0.1:1"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/job.json"));
}

TEST(CliTest, UnreachableCoordinatorIsUnavailable) {
  // Port 1 on loopback refuses connections.
  Result r = RunSaetrack({"status", "job-000001", "--coordinator=127.0.0.1:1"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, StartsWith("saetrack: UNAVAILABLE: "));
}

TEST(CliTest, MetricsTableShowsLmEvaluationAndNotes) {
  v1::GetCheckpointMetricsResponse metrics;
  v1::CheckpointMetrics* first = metrics.add_checkpoints();
  first->set_chain_index(0);
  first->set_tokens_trained(1'000'000);
  first->mutable_lm()->set_loss_recovered(0.8766);
  first->mutable_lm()->set_kl_divergence(0.0123);
  v1::CheckpointMetrics* later = metrics.add_checkpoints();
  later->set_chain_index(1);
  later->set_step(8);
  later->set_stopped_early(true);
  later->set_resumed_from_tokens(20'000);
  later->set_median_decoder_cos_prev(0.99);

  const std::string table = FormatCheckpointMetrics(metrics);
  std::vector<std::string> lines;
  for (size_t start = 0, end; start < table.size(); start = end + 1) {
    end = table.find('\n', start);
    lines.push_back(table.substr(start, end - start));
  }
  // A header and one line per checkpoint, as scripts count them.
  ASSERT_EQ(lines.size(), 3u) << table;
  EXPECT_THAT(lines[0], HasSubstr("loss rec"));
  EXPECT_THAT(lines[0], HasSubstr("KL"));
  EXPECT_THAT(lines[1], HasSubstr("87.7%"));
  EXPECT_THAT(lines[1], HasSubstr("0.0123"));
  EXPECT_THAT(lines[1], ::testing::Not(HasSubstr("stopped early")));
  // Without an LM evaluation both columns read "-".
  EXPECT_THAT(lines[2], HasSubstr("       -        -"));
  EXPECT_THAT(lines[2], HasSubstr("stopped early, resumed at 20.0k"));
}

// A coordinator in memory: one job, its metrics and stored SAEs. Records
// the calls made.
struct FakeCoordinator {
  v1::Job job;
  v1::GetCheckpointMetricsResponse metrics;
  // Stored SAE bytes by (layer, step).
  std::map<std::pair<int, int64_t>, std::string> saes;
  absl::Status download_error;
  // What WatchJob streams, and how the stream ends; kUnimplemented makes
  // the CLI poll GetJob instead.
  std::vector<v1::JobUpdate> updates;
  absl::Status watch_status;
  absl::Status cancel_status;
  // SubmitJob returns `job` when set, else kUnimplemented.
  bool accept_submit = false;
  std::vector<std::string> calls;
};

class FakeClient final : public SaetrackClient {
 public:
  explicit FakeClient(std::shared_ptr<FakeCoordinator> coordinator)
      : c_(std::move(coordinator)) {}

  absl::StatusOr<v1::SubmitJobResponse> SubmitJob(
      const v1::JobSpec& /*spec*/, const std::string& /*request_id*/) override {
    c_->calls.push_back("SubmitJob");
    if (!c_->accept_submit) return absl::UnimplementedError("SubmitJob");
    v1::SubmitJobResponse response;
    *response.mutable_job() = c_->job;
    response.set_created(true);
    return response;
  }
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) override {
    c_->calls.push_back(absl::StrCat("GetJob ", job_id));
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    return c_->job;
  }
  absl::StatusOr<v1::ListJobsResponse> ListJobs(
      int /*page_size*/, const std::string& /*page_token*/) override {
    c_->calls.push_back("ListJobs");
    return absl::UnimplementedError("ListJobs");
  }
  absl::StatusOr<v1::GetCheckpointMetricsResponse> GetCheckpointMetrics(
      const std::string& job_id, int layer) override {
    c_->calls.push_back(
        absl::StrCat("GetCheckpointMetrics ", job_id, " ", layer));
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    v1::GetCheckpointMetricsResponse response;
    for (const auto& m : c_->metrics.checkpoints()) {
      if (m.layer() == layer) *response.add_checkpoints() = m;
    }
    if (response.checkpoints().empty()) {
      return absl::NotFoundError(absl::StrCat("layer ", layer, ": not hooked"));
    }
    return response;
  }
  absl::StatusOr<v1::FeatureHistory> GetFeatureHistory(
      const std::string& /*job_id*/, int /*layer*/,
      int /*feature_id*/) override {
    c_->calls.push_back("GetFeatureHistory");
    return absl::UnimplementedError("GetFeatureHistory");
  }
  absl::StatusOr<v1::CancelJobResponse> CancelJob(
      const std::string& job_id) override {
    c_->calls.push_back(absl::StrCat("CancelJob ", job_id));
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    if (!c_->cancel_status.ok()) return c_->cancel_status;
    c_->job.set_state(v1::JOB_STATE_CANCELLED);
    v1::CancelJobResponse response;
    *response.mutable_job() = c_->job;
    return response;
  }
  absl::Status WatchJob(
      const std::string& job_id, absl::Duration /*timeout*/,
      const std::function<bool(const v1::JobUpdate&)>& on_update) override {
    c_->calls.push_back(absl::StrCat("WatchJob ", job_id));
    if (c_->watch_status.code() == absl::StatusCode::kUnimplemented) {
      return c_->watch_status;
    }
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    for (const v1::JobUpdate& update : c_->updates) {
      if (!on_update(update)) return absl::OkStatus();
    }
    return c_->watch_status;
  }
  absl::StatusOr<std::string> DownloadSae(const std::string& job_id, int layer,
                                          int64_t step) override {
    c_->calls.push_back(
        absl::StrCat("DownloadSae ", job_id, " ", layer, " ", step));
    if (!c_->download_error.ok()) return c_->download_error;
    auto it = c_->saes.find({layer, step});
    if (job_id != c_->job.job_id() || it == c_->saes.end()) {
      return absl::NotFoundError("no such SAE");
    }
    return it->second;
  }

 private:
  static absl::Status NoJob(const std::string& job_id) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, ": not found"));
  }

  std::shared_ptr<FakeCoordinator> c_;
};

// An SAE's safetensors bytes as the worker writes them.
std::string SaeBytes(int d_in, int d_sae, float fill) {
  format::SafetensorsWriter writer;
  const std::vector<float> values(static_cast<size_t>(d_in) * d_sae, fill);
  EXPECT_TRUE(writer.AddF32("W_enc", {d_in, d_sae}, values.data()).ok());
  EXPECT_TRUE(writer.AddF32("b_enc", {d_sae}, values.data()).ok());
  EXPECT_TRUE(writer.AddF32("W_dec", {d_sae, d_in}, values.data()).ok());
  EXPECT_TRUE(writer.AddF32("b_dec", {d_in}, values.data()).ok());
  return writer.Serialize();
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/cli_test_XXXXXX";
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "";
    EXPECT_FALSE(path_.empty());
  }
  ~TempDir() { std::system(absl::StrCat("rm -rf '", path_, "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr int kDIn = 4;
constexpr int kDSae = 8;

class CliExportTest : public ::testing::Test {
 protected:
  CliExportTest() : coordinator_(std::make_shared<FakeCoordinator>()) {
    v1::Job& job = coordinator_->job;
    job.set_job_id("job-000007");
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    v1::JobSpec& spec = *job.mutable_spec();
    spec.set_name("tiny");
    for (int64_t step : {0, 16, 64}) {
      v1::Checkpoint* checkpoint = spec.mutable_model()->add_checkpoints();
      checkpoint->set_step(step);
      checkpoint->set_path(absl::StrCat("/models/tiny/step-", step));
    }
    v1::HookPoint* hook = spec.add_hooks();
    hook->set_layer(0);
    hook->set_site("mlp_out");
    hook = spec.add_hooks();
    hook->set_layer(1);
    hook->set_site("resid_pre");
    spec.mutable_sae()->set_architecture("relu_l1");
    for (int layer : {0, 1}) {
      // Trained backwards: chain index 0 is the last checkpoint.
      int chain_index = 0;
      for (int64_t step : {64, 16, 0}) {
        v1::CheckpointMetrics* m = coordinator_->metrics.add_checkpoints();
        m->set_layer(layer);
        m->set_step(step);
        m->set_chain_index(chain_index++);
        m->set_d_in(kDIn);
        m->set_d_sae(kDSae);
        coordinator_->saes[{layer, step}] =
            SaeBytes(kDIn, kDSae, static_cast<float>(step));
      }
    }
  }

  Result Export(std::vector<std::string> args) {
    args.insert(args.begin(), "export");
    std::ostringstream out, err;
    int code = RunCli(args, out, err, /*err_is_terminal=*/false,
                      [this](const ClientOptions& options) {
                        EXPECT_EQ(options.coordinator, "127.0.0.1:7070");
                        return std::make_unique<FakeClient>(coordinator_);
                      });
    return {code, out.str(), err.str()};
  }

  std::shared_ptr<FakeCoordinator> coordinator_;
  TempDir temp_;
};

TEST_F(CliExportTest, MissingLayerOrOutIsAUsageErrorWithoutAnyCall) {
  Result r = Export({"job-000007", "--out", temp_.path() + "/sae"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_EQ(r.err, "saetrack: export needs --layer (see saetrack --help)\n");
  r = Export({"job-000007", "--layer", "1", "--step", "16"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_EQ(r.err, "saetrack: export needs --out (see saetrack --help)\n");
  r = Export({"job-000007", "--layer", "1", "--out", temp_.path() + "/sae",
              "--step", "1.5"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("--step: '1.5' is not an integer"));
  r = Export({"--layer", "1", "--out", temp_.path() + "/sae"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("export takes one job id"));
  EXPECT_THAT(coordinator_->calls, IsEmpty());
}

TEST_F(CliExportTest, UnknownStepIsNotFoundListingTheStoredSteps) {
  const std::string dir = temp_.path() + "/sae";
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "32", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "saetrack: NOT_FOUND: job job-000007 layer 1 has no SAE at step 32 "
            "(steps with an SAE: 64, 16, 0)\n");
  for (const std::string& call : coordinator_->calls) {
    EXPECT_THAT(call, ::testing::Not(StartsWith("DownloadSae")));
  }
  EXPECT_FALSE(format::ReadSaelensDir(dir).ok());
}

TEST_F(CliExportTest, UnknownJobAndLayerFailWithTheServersError) {
  Result r = Export({"job-000009", "--layer", "1", "--out", temp_.path()});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err, "saetrack: NOT_FOUND: job job-000009: not found\n");
  r = Export({"job-000007", "--layer", "5", "--out", temp_.path()});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err, "saetrack: NOT_FOUND: layer 5: not hooked\n");
}

TEST_F(CliExportTest, WritesASaelensDirectoryThatReadsBack) {
  const std::string dir = temp_.path() + "/out/sae";
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "16", "--out", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, absl::StrCat("exported job job-000007 layer 1 step 16 "
                                "(relu_l1, d_in 4, d_sae 8) to ",
                                dir, "\n"));
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(
      coordinator_->calls,
      ElementsAre("GetJob job-000007", "GetCheckpointMetrics job-000007 1",
                  "DownloadSae job-000007 1 16"));

  absl::StatusOr<format::SaelensSae> sae = format::ReadSaelensDir(dir);
  ASSERT_TRUE(sae.ok()) << sae.status();
  const format::SaelensConfig& cfg = sae->config;
  EXPECT_EQ(cfg.architecture, "relu_l1");
  EXPECT_EQ(cfg.d_in, kDIn);
  EXPECT_EQ(cfg.d_sae, kDSae);
  EXPECT_EQ(cfg.k, 0);
  EXPECT_EQ(cfg.model_name, "/models/tiny/step-16");
  EXPECT_EQ(cfg.hook_name, "blocks.1.hook_resid_pre");
  EXPECT_EQ(cfg.hook_layer, 1);
  EXPECT_EQ(cfg.checkpoint_step, 16);
  EXPECT_EQ(cfg.job_id, "job-000007");
  EXPECT_EQ(sae->safetensors, (coordinator_->saes[{1, 16}]));
}

TEST_F(CliExportTest, WithoutStepExportsTheLastSaeOfTheChain) {
  const std::string dir = temp_.path() + "/sae";
  Result r = Export({"job-000007", "--layer", "1", "--out", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  // The chain ran backwards: its last SAE is the one of step 0.
  EXPECT_THAT(r.out, HasSubstr("step 0 "));
  absl::StatusOr<format::SaelensSae> sae = format::ReadSaelensDir(dir);
  ASSERT_TRUE(sae.ok()) << sae.status();
  EXPECT_EQ(sae->config.checkpoint_step, 0);
  EXPECT_EQ(sae->safetensors, (coordinator_->saes[{1, 0}]));
}

TEST_F(CliExportTest, TopkAndOtherSitesAndJsonOutput) {
  v1::SaeConfig& sae_config = *coordinator_->job.mutable_spec()->mutable_sae();
  sae_config.set_architecture("topk");
  sae_config.set_k(3);
  const std::string dir = temp_.path() + "/sae";
  Result r = Export(
      {"job-000007", "--layer=0", "--step=64", "--out=" + dir, "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  absl::StatusOr<format::JsonValue> json = format::ParseJson(r.out, "stdout");
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << r.out;
  auto string_field = [&](const char* name) {
    const format::JsonValue* v = json->Find(name);
    return v != nullptr && v->is_string() ? v->string_value() : "<absent>";
  };
  auto int_field = [&](const char* name) {
    const format::JsonValue* v = json->Find(name);
    return v != nullptr ? v->AsInt64().value_or(-1) : -1;
  };
  EXPECT_EQ(string_field("job_id"), "job-000007");
  EXPECT_EQ(int_field("layer"), 0);
  EXPECT_EQ(int_field("step"), 64);
  EXPECT_EQ(int_field("chain_index"), 0);
  EXPECT_EQ(string_field("architecture"), "topk");
  EXPECT_EQ(int_field("d_in"), kDIn);
  EXPECT_EQ(int_field("d_sae"), kDSae);
  EXPECT_EQ(int_field("k"), 3);
  EXPECT_EQ(string_field("hook_name"), "blocks.0.hook_mlp_out");
  EXPECT_EQ(string_field("model_name"), "/models/tiny/step-64");
  EXPECT_EQ(string_field("dir"), dir);
  EXPECT_EQ(string_field("cfg_path"), dir + "/cfg.json");
  EXPECT_EQ(string_field("weights_path"), dir + "/sae_weights.safetensors");

  absl::StatusOr<format::SaelensSae> sae = format::ReadSaelensDir(dir);
  ASSERT_TRUE(sae.ok()) << sae.status();
  EXPECT_EQ(sae->config.architecture, "topk");
  EXPECT_EQ(sae->config.k, 3);
  EXPECT_EQ(sae->config.hook_name, "blocks.0.hook_mlp_out");
  EXPECT_EQ(sae->config.hook_layer, 0);

  // Without --json: one line naming k.
  r = Export({"job-000007", "--layer", "0", "--step", "64", "--out", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("(topk k 3, d_in 4, d_sae 8)"));
}

TEST_F(CliExportTest, DefaultsForAnUnnormalisedSpec) {
  v1::JobSpec& spec = *coordinator_->job.mutable_spec();
  spec.mutable_sae()->clear_architecture();
  spec.mutable_hooks(1)->clear_site();
  const std::string dir = temp_.path() + "/sae";
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "0", "--out", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  absl::StatusOr<format::SaelensSae> sae = format::ReadSaelensDir(dir);
  ASSERT_TRUE(sae.ok()) << sae.status();
  EXPECT_EQ(sae->config.architecture, "relu_l1");
  EXPECT_EQ(sae->config.hook_name, "blocks.1.hook_resid_pre");
}

TEST_F(CliExportTest, FailedDownloadWritesNothing) {
  coordinator_->download_error =
      absl::DataLossError("SAE download: chunk at offset 7, expected offset 4");
  const std::string dir = temp_.path() + "/sae";
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "0", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err,
            "saetrack: DATA_LOSS: SAE download: chunk at offset 7, expected "
            "offset 4\n");
  EXPECT_FALSE(format::ReadSaelensDir(dir).ok());
}

TEST_F(CliExportTest, WeightsThatDoNotMatchTheMetricsAreRefused) {
  coordinator_->saes[{1, 0}] = SaeBytes(kDIn, kDSae + 1, 1.0f);
  const std::string dir = temp_.path() + "/sae";
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "0", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, StartsWith("saetrack: INVALID_ARGUMENT: "));
  EXPECT_THAT(r.err, HasSubstr("W_enc"));
  EXPECT_FALSE(format::ReadSaelensDir(dir).ok());
}

// SaetrackClient::DownloadSae against an in-process WorkerService that
class CliWatchTest : public ::testing::Test {
 protected:
  CliWatchTest() : coordinator_(std::make_shared<FakeCoordinator>()) {
    coordinator_->job.set_job_id("job-000007");
    coordinator_->job.mutable_progress()->set_tasks_total(11);
  }

  // Appends an update of the job in `state`, `done` of its 11 tasks.
  v1::JobUpdate& AddUpdate(v1::JobState state, int done) {
    v1::JobUpdate& update = coordinator_->updates.emplace_back();
    *update.mutable_job() = coordinator_->job;
    update.mutable_job()->set_state(state);
    update.mutable_job()->mutable_progress()->set_tasks_done(done);
    return update;
  }

  Result Run(const std::vector<std::string>& args, bool terminal = false) {
    std::ostringstream out, err;
    int code = RunCli(args, out, err, terminal,
                      [this](const ClientOptions& /*options*/) {
                        return std::make_unique<FakeClient>(coordinator_);
                      });
    return {code, out.str(), err.str()};
  }

  std::shared_ptr<FakeCoordinator> coordinator_;
};

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST_F(CliWatchTest, PrintsAProgressLinePerUpdateAndSucceeds) {
  AddUpdate(v1::JOB_STATE_QUEUED, 0);
  v1::JobUpdate& running = AddUpdate(v1::JOB_STATE_RUNNING, 3);
  running.set_tokens_done(1'234'567);
  running.set_tokens_per_second(2'300);
  running.set_loss(0.0123);
  running.set_eta_seconds(80);
  AddUpdate(v1::JOB_STATE_SUCCEEDED, 11).set_tokens_done(5'000'000);

  Result r = Run({"watch", "job-000007"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "job-000007 succeeded\n");
  EXPECT_THAT(
      Lines(r.err),
      ElementsAre("checkpoints 0/11  tokens 0  state QUEUED",
                  "checkpoints 3/11  tokens 1.2M  2.3k tok/s  loss 0.0123  "
                  "ETA 1m20s  state RUNNING",
                  "checkpoints 11/11  tokens 5.0M  state SUCCEEDED"));
  EXPECT_THAT(coordinator_->calls, ElementsAre("WatchJob job-000007"));
}

TEST_F(CliWatchTest, OnATerminalRewritesOneLine) {
  AddUpdate(v1::JOB_STATE_RUNNING, 3);
  AddUpdate(v1::JOB_STATE_SUCCEEDED, 11);
  Result r = Run({"watch", "job-000007"}, /*terminal=*/true);
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\r'), 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("\r\033[Kcheckpoints 11/11"));
}

TEST_F(CliWatchTest, FailedAndCancelledJobsExitOneWithTheError) {
  AddUpdate(v1::JOB_STATE_RUNNING, 3);
  v1::JobUpdate& failed = AddUpdate(v1::JOB_STATE_FAILED, 3);
  failed.mutable_job()->set_error("task x failed: CUDA out of memory");
  Result r = Run({"watch", "job-000007"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "job-000007 failed\n");
  EXPECT_THAT(r.err, HasSubstr("saetrack: job job-000007 failed: task x "
                               "failed: CUDA out of memory\n"));

  coordinator_->updates.clear();
  AddUpdate(v1::JOB_STATE_CANCELLED, 3)
      .mutable_job()
      ->set_error("cancelled by request");
  r = Run({"watch", "job-000007"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("state CANCELLED"));
  EXPECT_THAT(r.err,
              HasSubstr("saetrack: job job-000007 cancelled: cancelled by "
                        "request\n"));
}

TEST_F(CliWatchTest, JsonPrintsOneJobUpdatePerLine) {
  AddUpdate(v1::JOB_STATE_QUEUED, 0);
  AddUpdate(v1::JOB_STATE_RUNNING, 3).set_loss(0.5);
  AddUpdate(v1::JOB_STATE_SUCCEEDED, 11);
  Result r = Run({"watch", "job-000007", "--json"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_EQ(r.err, "");
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  for (const std::string& line : lines) {
    absl::StatusOr<format::JsonValue> json = format::ParseJson(line);
    ASSERT_TRUE(json.ok()) << line;
    EXPECT_THAT(line, HasSubstr("\"job_id\":\"job-000007\""));
  }
  EXPECT_THAT(lines[1], HasSubstr("\"loss\":0.5"));
  EXPECT_THAT(lines[2], HasSubstr("JOB_STATE_SUCCEEDED"));
}

TEST_F(CliWatchTest, StreamErrorsAndUnknownJobsFail) {
  Result r = Run({"watch", "job-000042"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, StartsWith("saetrack: NOT_FOUND: job job-000042"));

  AddUpdate(v1::JOB_STATE_RUNNING, 3);
  coordinator_->watch_status = absl::PermissionDeniedError("nope");
  r = Run({"watch", "job-000007"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("saetrack: PERMISSION_DENIED: nope"));
}

TEST_F(CliWatchTest, TimeoutEndsTheWait) {
  AddUpdate(v1::JOB_STATE_RUNNING, 3);
  // The stream keeps ending without a terminal state: the CLI reconnects
  // until --timeout_s.
  coordinator_->watch_status = absl::UnavailableError("restarting");
  Result r = Run({"watch", "job-000007", "--timeout_s", "0.5"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("saetrack: DEADLINE_EXCEEDED: job job-000007 "
                               "still running after --timeout_s=0.5"));
}

TEST_F(CliWatchTest, PollsGetJobWhenTheCoordinatorLacksWatchJob) {
  coordinator_->watch_status = absl::UnimplementedError("WatchJob");
  coordinator_->job.set_state(v1::JOB_STATE_SUCCEEDED);
  Result r = Run({"watch", "job-000007"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("WatchJob job-000007", "GetJob job-000007"));
  EXPECT_THAT(r.err, HasSubstr("state SUCCEEDED"));
}

TEST_F(CliWatchTest, SubmitWaitFollowsTheJobThroughWatchJob) {
  TempDir dir;
  const std::string path = dir.path() + "/job.json";
  {
    std::ofstream file(path);
    file << R"({"name": "tiny"})";
  }
  coordinator_->accept_submit = true;
  AddUpdate(v1::JOB_STATE_RUNNING, 3);
  AddUpdate(v1::JOB_STATE_SUCCEEDED, 11);
  Result r = Run({"submit", path, "--wait", "--timeout_s", "30"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "job-000007 succeeded\n");
  EXPECT_THAT(r.err, HasSubstr("job-000007 running: 3/11 SAEs trained"));
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("SubmitJob", "WatchJob job-000007"));

  coordinator_->updates.back().mutable_job()->set_state(
      v1::JOB_STATE_CANCELLED);
  r = Run({"submit", path, "--wait"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("saetrack: job job-000007 cancelled"));
}

TEST_F(CliWatchTest, CancelPrintsTheResultingState) {
  coordinator_->job.set_state(v1::JOB_STATE_RUNNING);
  Result r = Run({"cancel", "job-000007"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "job-000007 cancelled\n");
  EXPECT_THAT(coordinator_->calls, ElementsAre("CancelJob job-000007"));

  r = Run({"cancel", "job-000007", "--json"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_TRUE(format::ParseJson(r.out).ok()) << r.out;
  EXPECT_THAT(r.out, HasSubstr("JOB_STATE_CANCELLED"));

  coordinator_->cancel_status = absl::FailedPreconditionError(
      "job 'job-000007' already ended in state JOB_STATE_SUCCEEDED");
  r = Run({"cancel", "job-000007"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, StartsWith("saetrack: FAILED_PRECONDITION: job "));

  r = Run({"cancel", "job-000099"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, StartsWith("saetrack: NOT_FOUND: "));
}

// streams chosen chunks.
class FakeWorkerService final : public v1::WorkerService::Service {
 public:
  grpc::Status DownloadSae(
      grpc::ServerContext* /*context*/, const v1::DownloadSaeRequest* request,
      grpc::ServerWriter<v1::DownloadChunk>* writer) override {
    last_request = *request;
    for (const v1::DownloadChunk& chunk : chunks) {
      if (!writer->Write(chunk)) break;
    }
    return status;
  }

  std::vector<v1::DownloadChunk> chunks;
  grpc::Status status;
  v1::DownloadSaeRequest last_request;
};

class DownloadSaeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    ClientOptions options;
    options.coordinator = absl::StrCat("127.0.0.1:", port);
    options.call_timeout = absl::Seconds(10);
    client_ = SaetrackClient::Create(options);
  }

  void TearDown() override { server_->Shutdown(); }

  // Streams `bytes` in chunks of `chunk_bytes`, as the coordinator does.
  void Serve(const std::string& bytes, size_t chunk_bytes) {
    size_t offset = 0;
    do {
      v1::DownloadChunk chunk;
      chunk.set_offset(static_cast<int64_t>(offset));
      chunk.set_data(bytes.substr(offset, chunk_bytes));
      offset += chunk.data().size();
      if (offset == bytes.size()) {
        chunk.set_last(true);
        chunk.set_total_size(static_cast<int64_t>(bytes.size()));
        chunk.set_crc32c(format::Crc32c(bytes));
      }
      service_.chunks.push_back(chunk);
    } while (offset < bytes.size());
  }

  FakeWorkerService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<SaetrackClient> client_;
};

TEST_F(DownloadSaeTest, ReassemblesTheChunks) {
  const std::string bytes = SaeBytes(kDIn, kDSae, 0.5f);
  Serve(bytes, 50);
  ASSERT_GT(service_.chunks.size(), 3u);
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, bytes);
  EXPECT_EQ(service_.last_request.sae().job_id(), "job-000003");
  EXPECT_EQ(service_.last_request.sae().layer(), 2);
  EXPECT_EQ(service_.last_request.sae().step(), 64);
}

TEST_F(DownloadSaeTest, EmptySaeIsOneLastChunk) {
  Serve("", 50);
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "");
}

TEST_F(DownloadSaeTest, AGapBetweenChunksIsDataLossNamingTheOffset) {
  Serve("0123456789abcdef", 4);
  service_.chunks.erase(service_.chunks.begin() + 1);
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(),
              HasSubstr("chunk at offset 8, expected offset 4"));
  EXPECT_THAT(got.status().message(),
              HasSubstr("job job-000003 layer 2 step 64"));
}

TEST_F(DownloadSaeTest, AChunkAfterTheLastIsDataLoss) {
  Serve("0123456789abcdef", 4);
  v1::DownloadChunk extra;
  extra.set_offset(16);
  extra.set_data("x");
  service_.chunks.push_back(extra);
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(), HasSubstr("chunk at offset 16 after"));
}

TEST_F(DownloadSaeTest, AWrongChecksumIsDataLoss) {
  Serve("0123456789abcdef", 4);
  service_.chunks.back().set_crc32c(service_.chunks.back().crc32c() ^ 1);
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(), HasSubstr("CRC-32C mismatch"));
  EXPECT_THAT(got.status().message(), HasSubstr("offset 12"));
}

TEST_F(DownloadSaeTest, AWrongTotalSizeIsDataLoss) {
  Serve("0123456789abcdef", 4);
  service_.chunks.back().set_total_size(17);
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(),
              HasSubstr("total_size 17, but 16 bytes arrived"));
}

TEST_F(DownloadSaeTest, AStreamWithoutItsLastChunkIsDataLoss) {
  Serve("0123456789abcdef", 4);
  service_.chunks.pop_back();
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(),
              HasSubstr("ended at offset 12 without a last chunk"));
}

TEST_F(DownloadSaeTest, TheServersErrorComesBack) {
  service_.status = grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "SAE job-000003 layer 2 step 64: not found");
  absl::StatusOr<std::string> got = client_->DownloadSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("step 64: not found"));
}

}  // namespace
}  // namespace saetrack::client
