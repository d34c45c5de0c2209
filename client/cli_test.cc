#include "client/cli.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/internal/cli_commands.h"
#include "client/output.h"
#include "format/crc32c.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/saelens.h"
#include "format/safetensors.h"
#include "proto/access_tokens.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"

namespace saetrack::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
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
       {"submit",         "status",     "list",          "watch",
        "cancel",         "metrics",    "feature",       "features",
        "drift",          "export",     "--step",        "--out",
        "--coordinator",  "--json",     "--feature",     "--contexts",
        "--decoder",      "--kind",     "--formed-from", "--formed-to",
        "--min-freq",     "--max-freq", "--order",       "--limit",
        "--page-token",   "--logits",   "▁▂▃▄▅▆▇█",      "close",
        "add-checkpoint", "refresh",    "--path",        "provisional"}) {
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
           {"status", "job-1", "--coordinator"},
           {"features", "job-1", "--layer", "1", "--kind", "word"},
           {"features", "job-1", "--layer", "1", "--order", "size"},
           {"features", "job-1", "--layer", "1", "--limit", "-5"},
           {"features", "job-1", "--layer", "1", "--min-freq", "2"},
           {"features", "--layer", "1"},
           {"drift", "job-1"},
           {"drift", "job-1", "job-2", "--layer", "1"}}) {
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
  // An SAE whose held-out loss was still falling says so.
  EXPECT_THAT(lines[1], HasSubstr("not converged"));
  EXPECT_THAT(lines[0], HasSubstr("cos init"));
  EXPECT_THAT(lines[0], HasSubstr("epochs"));
}

TEST(CliTest, QualityChecksShowBothSaesAndTheVerdicts) {
  v1::GetQualityChecksResponse checks;
  EXPECT_THAT(internal::FormatQualityChecks(checks),
              HasSubstr("no trust checks"));
  v1::CheckpointMetrics* m = checks.add_checkpoints();
  m->set_step(512);
  m->set_chain_index(4);
  m->set_held_out_loss(0.031);
  m->set_converged(true);
  v1::ReferenceCheck* r = m->mutable_reference();
  r->set_seed(2);
  r->set_held_out_loss(0.030);
  r->set_match_median_cosine(0.812);
  r->set_random_median_cosine(0.353);
  r->set_match_fraction_above_0_9(0.4);
  v1::QualityVerdict* v = checks.add_verdicts();
  v->set_check("chain vs independent");
  v->set_step(512);
  v->set_passed(true);
  v->set_verdict("the chain keeps up");
  const std::string text = internal::FormatQualityChecks(checks);
  EXPECT_THAT(text, HasSubstr("seed 2"));
  EXPECT_THAT(text, HasSubstr("0.812 (0.353), 40% >= 0.9"));
  EXPECT_THAT(text, HasSubstr("ok    chain vs independent at step 512: "
                              "the chain keeps up"));
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
  // What the query calls answer, and the last requests they got.
  v1::FeatureHistory history;
  v1::GetFeatureHistoryRequest history_request;
  v1::ListFeaturesResponse features;
  v1::ListFeaturesRequest features_request;
  v1::DriftSummary drift;
  v1::GetQualityChecksResponse quality;
  absl::Status query_status;
  // What ExportSae answers; unset: kUnimplemented, as an older coordinator.
  std::optional<absl::StatusOr<ExportedSae>> exported;
  // ListJobs lists `job` when set, else answers kUnimplemented.
  bool list_job = false;
  // Follow mode: what AddCheckpoint answers in `created`, and the error
  // AddCheckpoint, CloseJob and RefreshAnalysis return when set.
  bool checkpoint_created = true;
  absl::Status follow_status;
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
    if (!c_->list_job) return absl::UnimplementedError("ListJobs");
    v1::ListJobsResponse response;
    *response.add_jobs() = c_->job;
    return response;
  }
  absl::StatusOr<v1::AddCheckpointResponse> AddCheckpoint(
      const std::string& job_id, int64_t step,
      const std::string& path) override {
    c_->calls.push_back(
        absl::StrCat("AddCheckpoint ", job_id, " ", step, " ", path));
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    if (!c_->follow_status.ok()) return c_->follow_status;
    v1::AddCheckpointResponse response;
    *response.mutable_job() = c_->job;
    response.set_created(c_->checkpoint_created);
    return response;
  }
  absl::StatusOr<v1::CloseJobResponse> CloseJob(
      const std::string& job_id) override {
    c_->calls.push_back(absl::StrCat("CloseJob ", job_id));
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    if (!c_->follow_status.ok()) return c_->follow_status;
    v1::FollowStatus& follow = *c_->job.mutable_follow();
    follow.set_state(v1::FOLLOW_STATE_CLOSED);
    follow.set_close_reason("closed by request");
    v1::CloseJobResponse response;
    *response.mutable_job() = c_->job;
    return response;
  }
  absl::StatusOr<v1::RefreshAnalysisResponse> RefreshAnalysis(
      const std::string& job_id) override {
    c_->calls.push_back(absl::StrCat("RefreshAnalysis ", job_id));
    if (job_id != c_->job.job_id()) return NoJob(job_id);
    if (!c_->follow_status.ok()) return c_->follow_status;
    v1::RefreshAnalysisResponse response;
    *response.mutable_job() = c_->job;
    return response;
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
      const v1::GetFeatureHistoryRequest& request) override {
    c_->calls.push_back(absl::StrCat("GetFeatureHistory ", request.job_id(),
                                     " ", request.layer(), " ",
                                     request.feature_id()));
    c_->history_request = request;
    if (!c_->query_status.ok()) return c_->query_status;
    return c_->history;
  }
  absl::StatusOr<v1::ListFeaturesResponse> ListFeatures(
      const v1::ListFeaturesRequest& request) override {
    c_->calls.push_back(
        absl::StrCat("ListFeatures ", request.job_id(), " ", request.layer()));
    c_->features_request = request;
    if (!c_->query_status.ok()) return c_->query_status;
    return c_->features;
  }
  absl::StatusOr<v1::DriftSummary> GetDriftSummary(const std::string& job_id,
                                                   int layer) override {
    c_->calls.push_back(absl::StrCat("GetDriftSummary ", job_id, " ", layer));
    if (!c_->query_status.ok()) return c_->query_status;
    return c_->drift;
  }
  absl::StatusOr<v1::GetQualityChecksResponse> GetQualityChecks(
      const std::string& job_id, int layer) override {
    c_->calls.push_back(absl::StrCat("GetQualityChecks ", job_id, " ", layer));
    if (!c_->query_status.ok()) return c_->query_status;
    return c_->quality;
  }
  absl::StatusOr<ExportedSae> ExportSae(const std::string& job_id, int layer,
                                        std::optional<int64_t> step) override {
    c_->calls.push_back(
        absl::StrCat("ExportSae ", job_id, " ", layer, " ",
                     step.has_value() ? absl::StrCat(*step) : "final"));
    if (!c_->exported.has_value()) return absl::UnimplementedError("ExportSae");
    return *c_->exported;
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
  // The coordinator lacks ExportSae: the CLI downloads the weights and
  // writes the cfg.json itself.
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("GetCheckpointMetrics job-000007 1",
                          "ExportSae job-000007 1 16", "GetJob job-000007",
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

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(SparklineTest, ScalesBetweenTheSmallestAndLargestValue) {
  EXPECT_EQ(Sparkline({0, 1, 2, 3, 4, 5, 6, 7}), "▁▂▃▄▅▆▇█");
  // Rounded to the nearest bar: 0.25 of the range is 1.75 bars up.
  EXPECT_EQ(Sparkline({1.0, 1.25, 2.0}), "▁▃█");
  EXPECT_EQ(Sparkline({-0.5, 0.5}), "▁█");
  // Absent and non-finite values are blanks; equal values the middle bar.
  EXPECT_EQ(Sparkline({0.5, std::nullopt, 1.0}), "▁ █");
  EXPECT_EQ(Sparkline({0.2, 0.2, std::nan("")}), "▄▄ ");
  EXPECT_EQ(Sparkline({std::nullopt}), " ");
  EXPECT_EQ(Sparkline({}), "");
}

// The query commands (feature, features, drift) against the fake.
class CliQueryTest : public ::testing::Test {
 protected:
  CliQueryTest() : coordinator_(std::make_shared<FakeCoordinator>()) {
    coordinator_->job.set_job_id("job-000007");
  }

  Result Run(const std::vector<std::string>& args) {
    std::ostringstream out, err;
    int code = RunCli(args, out, err, /*err_is_terminal=*/false,
                      [this](const ClientOptions& /*options*/) {
                        return std::make_unique<FakeClient>(coordinator_);
                      });
    return {code, out.str(), err.str()};
  }

  // Feature 5 of layer 1 over steps 0, 16 and 64, analysed and summarised.
  void SetAnalysedHistory() {
    v1::FeatureHistory& h = coordinator_->history;
    h.set_job_id("job-000007");
    h.set_layer(1);
    h.set_feature_id(5);
    struct Row {
      int64_t step;
      double frequency, mean, max;
      std::optional<double> cos_prev, cos_final, p_act, p_feat;
      double encoder_norm;
    };
    for (const Row& row : std::vector<Row>{
             {0, 0.01, 1.5, 4.25, std::nullopt, 0.5, -0.1, 0.05, 1.0},
             {16, 0.02, 2, 5, 0.9, 0.75, std::nullopt, 0.2, 1.25},
             {64, 0.03, 2.5, 6, 0.95, 1.0, 0.3, 0.4, 1.5}}) {
      v1::FeaturePoint* p = h.add_points();
      p->set_step(row.step);
      p->set_chain_index(h.points_size() - 1);
      p->set_frequency(row.frequency);
      p->set_mean_activation(row.mean);
      p->set_max_activation(row.max);
      if (row.cos_prev) p->set_decoder_cos_prev(*row.cos_prev);
      if (row.cos_final) p->set_decoder_cos_final(*row.cos_final);
      if (row.p_act) p->set_progress_activation(*row.p_act);
      if (row.p_feat) p->set_progress_feature(*row.p_feat);
      p->set_encoder_norm(row.encoder_norm);
      p->set_analysed(true);
    }
    v1::FeatureSummary& s = *h.mutable_summary();
    s.set_feature_id(5);
    s.set_kind(v1::FEATURE_KIND_CONCEPT_LEVEL);
    s.set_top_token(262);
    s.set_top_token_share(0.45);
    s.set_top_token_text(" the");
    s.set_formation_step(16);
    s.set_formation_chain_index(1);
    s.set_formation_step_feature(64);
    s.set_final_frequency(0.03);
    s.set_cos_first_to_final(0.5);
    // A fit as stored before models were compared (no segments, no BIC);
    // FeaturePrintsTheChosenSegments has current ones.
    v1::PhaseFit& phases = *s.mutable_phases();
    phases.set_breakpoint1_step(3);
    phases.set_breakpoint2_step(40);
    phases.set_slope1(0.01);
    phases.set_slope2(0.2);
    phases.set_slope3(0.002);
    phases.set_r_squared(0.987);
    s.set_pca_explained1(0.852);
    s.set_pca_explained2(0.101);
  }

  // Two features of a page with more to come.
  void SetFeaturePage() {
    v1::ListFeaturesResponse& list = coordinator_->features;
    v1::FeatureSummary* f = list.add_features();
    f->set_feature_id(3);
    f->set_kind(v1::FEATURE_KIND_TOKEN_LEVEL);
    f->set_top_token(11);
    f->set_top_token_share(0.96);
    f->set_top_token_text("\n");
    f->set_formation_step(0);
    f->set_final_frequency(0.125);
    f->set_cos_first_to_final(0.9);
    f = list.add_features();
    f->set_feature_id(12);
    f->set_kind(v1::FEATURE_KIND_CONCEPT_LEVEL);
    f->set_top_token(262);
    f->set_top_token_share(0.2);
    f->set_final_frequency(0.0025);
    f->set_cos_first_to_final(0.25);
    list.set_next_page_token("page-2");
    list.set_total(153);
  }

  void SetDrift() {
    v1::DriftSummary& d = coordinator_->drift;
    d.set_job_id("job-000007");
    d.set_layer(1);
    d.set_formation_tau(0.5);
    d.set_token_level_threshold(0.8);
    d.set_top_k(25);
    d.set_analysis_tokens(1'000'000);
    int chain_index = 0;
    for (const auto& [step, median, formed] :
         std::vector<std::tuple<int64_t, double, int>>{
             {0, 0.25, 10}, {16, 0.5, 40}, {64, 0.75, 90}, {256, 1.0, 100}}) {
      v1::CheckpointDrift* c = d.add_checkpoints();
      c->set_step(step);
      c->set_chain_index(chain_index++);
      c->mutable_cos_to_final()->set_q10(median - 0.125);
      c->mutable_cos_to_final()->set_q50(median);
      c->mutable_cos_to_final()->set_q90(std::min(1.0, median + 0.125));
      if (step > 0) c->mutable_cos_to_previous()->set_q50(0.875 + step / 1e4);
      c->mutable_progress_activation()->set_q50(median / 10);
      c->set_formed(formed);
    }
    v1::PhaseFit& p = *d.mutable_phases();
    p.set_breakpoint1_step(15);
    p.set_breakpoint2_step(127.4);
    p.set_slope1(0.05);
    p.set_slope2(0.125);
    p.set_slope3(0.0625);
    p.set_r_squared(0.9991);
    // Three segments win by BIC (a fake: four real checkpoints would let
    // only the line compete).
    p.set_segments(3);
    p.set_bic1(-40);
    p.set_bic2(-52.5);
    p.set_bic3(-60);
    v1::KindSummary* k = d.add_kinds();
    k->set_kind(v1::FEATURE_KIND_TOKEN_LEVEL);
    k->set_count(60);
    k->set_formed(58);
    k->set_mean_formation_step(3.5);
    k->set_median_formation_step(0);
    k = d.add_kinds();
    k->set_kind(v1::FEATURE_KIND_CONCEPT_LEVEL);
    k->set_count(42);
    k->set_formed(40);
    k->set_mean_formation_step(120.25);
    k->set_median_formation_step(64);
    k = d.add_kinds();
    k->set_kind(v1::FEATURE_KIND_DEAD);
    k->set_count(26);
  }

  std::shared_ptr<FakeCoordinator> coordinator_;
};

// Parses proto JSON as `Message`, failing the test if it does not parse.
template <typename Message>
Message ParseProtoJson(const std::string& json) {
  Message message;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status =
      google::protobuf::util::JsonStringToMessage(json, &message, options);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

TEST_F(CliQueryTest, FeaturePrintsTheSummaryATableAndSparklines) {
  SetAnalysedHistory();
  Result r = Run({"feature", "job-000007", "--layer", "1", "--feature", "5"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(
      r.out,
      "feature 5, layer 1, job job-000007\n"
      "kind concept-level, top token 262 \" the\" (45.0% of the top "
      "contexts), final frequency 0.03000\n"
      "formed at step 16 (chain 1), in feature space at step 64; total drift "
      "0.500 (cos first to final 0.500)\n"
      "phases: breakpoints at steps 3 and 40, slopes 0.0100 / 0.2000 / "
      "0.0020, r² 0.987\n"
      "trajectory PCA: 85.2% and 10.1% of the variance\n"
      "chain     step  frequency   mean act    max act  cos prev cos final    "
      "P act   P feat  |w_enc|\n"
      "    0        0    0.01000        1.5       4.25         -     0.500   "
      "-0.100    0.050    1.000\n"
      "    1       16    0.02000          2          5     0.900     0.750   "
      "     -    0.200    1.250\n"
      "    2       64    0.03000        2.5          6     0.950     1.000   "
      " 0.300    0.400    1.500\n"
      "cos final  ▁▅█  0.500 .. 1.000\n"
      "P act      ▁ █  -0.100 .. 0.300\n");
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("GetFeatureHistory job-000007 1 5"));
  EXPECT_FALSE(coordinator_->history_request.include_contexts());
  EXPECT_FALSE(coordinator_->history_request.include_decoder());
}

TEST_F(CliQueryTest, FeaturePrintsTheChosenSegments) {
  SetAnalysedHistory();
  v1::PhaseFit& p = *coordinator_->history.mutable_summary()->mutable_phases();
  p.set_segments(3);
  p.set_bic1(10);
  p.set_bic2(-2.5);
  p.set_bic3(-4);
  const std::vector<std::string> args = {"feature", "job-000007", "--layer",
                                         "1",       "--feature",  "5"};
  Result r = Run(args);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nphases: 3 segments (ΔBIC 14.0 / 1.5 / 0.0 "
                               "for 1 / 2 / 3 segments), breakpoints at steps "
                               "3 and 40, slopes 0.0100 / 0.2000 / 0.0020, r² "
                               "0.987\n"));
  p.set_segments(2);
  p.set_slope3(0.2);
  p.set_bic2(-5);
  r = Run(args);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nphases: 2 segments (ΔBIC 15.0 / 0.0 / 1.0 "
                               "for 1 / 2 / 3 segments), breakpoint at step 3, "
                               "slopes 0.0100 / 0.2000, r² 0.987\n"));
  p.set_segments(1);
  p.clear_bic2();
  p.clear_bic3();
  r = Run(args);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nphases: 1 segment (ΔBIC 0.0 / - / - for 1 "
                               "/ 2 / 3 segments), slope 0.0100, r² 0.987\n"));
}

TEST_F(CliQueryTest, FeatureBeforeTheAnalysisPrintsDashesAndNoSparklines) {
  v1::FeatureHistory& h = coordinator_->history;
  h.set_job_id("job-000007");
  h.set_layer(1);
  h.set_feature_id(2);
  v1::FeaturePoint* p = h.add_points();
  p->set_step(8);
  p->set_frequency(0.5);
  p->set_mean_activation(0.25);
  p->set_max_activation(1);
  p->set_encoder_norm(2);
  // --id is the older spelling of --feature.
  Result r = Run({"feature", "job-000007", "--layer=1", "--id=2"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(
      Lines(r.out),
      ElementsAre("feature 2, layer 1, job job-000007",
                  "chain     step  frequency   mean act    max act  cos prev "
                  "cos final    P act   P feat  |w_enc|",
                  "    0        8    0.50000       0.25          1         - "
                  "        -        -        -    2.000",
                  "(frequency and activations of checkpoints not analysed yet "
                  "are from the held-out evaluation set)"));
  EXPECT_EQ(coordinator_->history_request.feature_id(), 2);
}

TEST_F(CliQueryTest, FeatureContextsAtTheFirstMiddleAndFinalCheckpoint) {
  v1::FeatureHistory& h = coordinator_->history;
  h.set_feature_id(5);
  for (int64_t step : {0, 4, 16, 64, 256}) {
    v1::FeaturePoint* p = h.add_points();
    p->set_step(step);
    p->set_analysed(true);
    // Seven contexts at each checkpoint, decoded only at the final one.
    for (int i = 0; i < 7; ++i) {
      v1::FeatureContext* c = p->add_contexts();
      c->set_position(100 * step + i);
      c->set_activation(7.0f - i);
      c->set_token(40 + i);
      c->add_window(1);
      c->add_window(40 + i);
      c->add_window(2);
      c->set_focus(1);
      if (step == 256) c->set_text(absl::StrCat("a [[b", i, "]]\nc"));
    }
  }
  h.mutable_points(2)->clear_contexts();
  // A context without a window shows its token alone.
  v1::FeatureContext* bare = h.mutable_points(0)->mutable_contexts(0);
  bare->clear_window();
  Result r = Run({"feature", "job-000007", "--layer", "1", "--feature", "5",
                  "--contexts"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_TRUE(coordinator_->history_request.include_contexts());
  const std::string out = r.out;
  const size_t first = out.find("\ntop contexts at step 0 (first checkpoint)");
  ASSERT_NE(first, std::string::npos) << out;
  EXPECT_EQ(out.substr(first),
            "\ntop contexts at step 0 (first checkpoint), 5 of 7:\n"
            "     7.000  pos 0         [[40]]\n"
            "     6.000  pos 1         1 [[41]] 2\n"
            "     5.000  pos 2         1 [[42]] 2\n"
            "     4.000  pos 3         1 [[43]] 2\n"
            "     3.000  pos 4         1 [[44]] 2\n"
            "\ntop contexts at step 16 (middle checkpoint):\n"
            "  -\n"
            "\ntop contexts at step 256 (final checkpoint), 5 of 7:\n"
            "     7.000  pos 25600     a [[b0]]\\nc\n"
            "     6.000  pos 25601     a [[b1]]\\nc\n"
            "     5.000  pos 25602     a [[b2]]\\nc\n"
            "     4.000  pos 25603     a [[b3]]\\nc\n"
            "     3.000  pos 25604     a [[b4]]\\nc\n");
}

TEST_F(CliQueryTest, FeatureDecoderRowsWithTheirNorms) {
  v1::FeatureHistory& h = coordinator_->history;
  v1::FeaturePoint* p = h.add_points();
  p->set_step(0);
  for (float v : {3.0f, 4.0f}) p->add_decoder(v);
  p = h.add_points();
  p->set_step(16);
  for (int i = 0; i < 9; ++i) p->add_decoder(i == 0 ? 1.0f : 0.0f);
  Result r = Run(
      {"feature", "job-000007", "--layer", "1", "--feature", "0", "--decoder"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_TRUE(coordinator_->history_request.include_decoder());
  EXPECT_FALSE(coordinator_->history_request.include_contexts());
  EXPECT_THAT(r.out, HasSubstr("\ndecoder rows:\n"
                               "  step        0  |d| 5.000  [3.0000, 4.0000]\n"
                               "  step       16  |d| 1.000  [1.0000, 0.0000, "
                               "0.0000, 0.0000, 0.0000, 0.0000, 0.0000, "
                               "0.0000, ...]\n"));
}

// Three points with logit effects: 6 promoted and 6 suppressed tokens each,
// decoded text on the promoted ones.
void AddLogitEffects(v1::FeatureHistory* h) {
  for (int s : {0, 16, 256}) {
    v1::FeaturePoint* p = h->add_points();
    p->set_step(s);
    v1::LogitEffects* e = p->mutable_logit_effects();
    for (int j = 0; j < 6; ++j) {
      v1::LogitEffect* up = e->add_promoted();
      up->set_token_id(s + j);
      up->set_value(2.0f - 0.25f * j);
      up->set_token(absl::StrCat("t", j));
      v1::LogitEffect* down = e->add_suppressed();
      down->set_token_id(1000 + j);
      down->set_value(-2.0f + 0.25f * j);
    }
  }
}

TEST_F(CliQueryTest, FeatureLogitEffectsAtTheFirstAndFinalCheckpoint) {
  AddLogitEffects(&coordinator_->history);
  Result r = Run({"feature", "job-000007", "--layer", "1", "--feature", "0"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out,
              HasSubstr("\nlogit effects at step 0 (first checkpoint):\n"
                        "  promoted:   0 \"t0\" 2.000, 1 \"t1\" 1.750, 2 "
                        "\"t2\" 1.500, 3 \"t3\" 1.250, 4 \"t4\" 1.000, ...\n"
                        "  suppressed: 1000 -2.000, 1001 -1.750, 1002 -1.500, "
                        "1003 -1.250, 1004 -1.000, ...\n"
                        "\nlogit effects at step 256 (final checkpoint):\n"
                        "  promoted:   256 \"t0\" 2.000,"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("logit effects at step 16")));
  r = Run(
      {"feature", "job-000007", "--layer", "1", "--feature", "0", "--logits"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nlogit effects at step 16:\n"
                               "  promoted:   16 \"t0\" 2.000,"));
}

TEST_F(CliQueryTest, FeatureJsonRoundTrips) {
  SetAnalysedHistory();
  coordinator_->history.mutable_points(0)->add_decoder(0.25f);
  Result r = Run({"feature", "job-000007", "--layer", "1", "--feature", "5",
                  "--json", "--decoder"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  const auto parsed = ParseProtoJson<v1::FeatureHistory>(r.out);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      parsed, coordinator_->history))
      << r.out;
  // Optional fields keep their absence.
  EXPECT_FALSE(parsed.points(0).has_decoder_cos_prev());
  EXPECT_FALSE(parsed.points(1).has_progress_activation());
}

TEST_F(CliQueryTest, FeatureErrorsComeFromTheServer) {
  coordinator_->query_status = absl::FailedPreconditionError(
      "job job-000007 layer 1: the analysis summary is not computed yet");
  Result r = Run({"feature", "job-000007", "--layer", "1", "--feature", "5"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "saetrack: FAILED_PRECONDITION: job job-000007 layer 1: the "
            "analysis summary is not computed yet\n");
}

TEST_F(CliQueryTest, FeaturesPassesEveryFilterAndNamesTheNextPage) {
  SetFeaturePage();
  Result r = Run({"features", "job-000007", "--layer", "1", "--kind", "concept",
                  "--formed-from", "16", "--formed-to=256", "--min-freq",
                  "0.001", "--max-freq", "0.5", "--order", "drift", "--limit",
                  "2", "--page-token", "page-1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(coordinator_->calls, ElementsAre("ListFeatures job-000007 1"));
  const v1::ListFeaturesRequest& request = coordinator_->features_request;
  EXPECT_EQ(request.kind(), v1::FEATURE_KIND_CONCEPT_LEVEL);
  ASSERT_TRUE(request.has_min_formation_step());
  EXPECT_EQ(request.min_formation_step(), 16);
  ASSERT_TRUE(request.has_max_formation_step());
  EXPECT_EQ(request.max_formation_step(), 256);
  ASSERT_TRUE(request.has_min_frequency());
  EXPECT_DOUBLE_EQ(request.min_frequency(), 0.001);
  ASSERT_TRUE(request.has_max_frequency());
  EXPECT_DOUBLE_EQ(request.max_frequency(), 0.5);
  EXPECT_EQ(request.order_by(), v1::ListFeaturesRequest::FINAL_DRIFT);
  EXPECT_EQ(request.page_size(), 2);
  EXPECT_EQ(request.page_token(), "page-1");
  EXPECT_THAT(
      Lines(r.out),
      ElementsAre(
          "    id  kind           share    formed  frequency  drift  top token",
          "     3  token-level    96.0%         0    0.12500  0.100  11 "
          "\"\\n\"",
          "    12  concept-level  20.0%         -    0.00250  0.750  262",
          "more: --page-token page-2 (153 features match)"));
}

TEST_F(CliQueryTest, FeaturesWithoutFlagsLeavesTheFilterUnset) {
  SetFeaturePage();
  coordinator_->features.clear_next_page_token();
  for (const auto& [order, expected] :
       std::vector<std::pair<std::string, v1::ListFeaturesRequest::Order>>{
           {"", v1::ListFeaturesRequest::ORDER_UNSPECIFIED},
           {"id", v1::ListFeaturesRequest::FEATURE_ID},
           {"formation", v1::ListFeaturesRequest::FORMATION_STEP},
           {"frequency", v1::ListFeaturesRequest::FREQUENCY}}) {
    std::vector<std::string> args = {"features", "job-000007", "--layer", "3"};
    if (!order.empty()) args.push_back("--order=" + order);
    Result r = Run(args);
    ASSERT_EQ(r.code, kExitOk) << r.err;
    const v1::ListFeaturesRequest& request = coordinator_->features_request;
    EXPECT_EQ(request.job_id(), "job-000007");
    EXPECT_EQ(request.layer(), 3);
    EXPECT_EQ(request.kind(), v1::FEATURE_KIND_UNSPECIFIED);
    EXPECT_FALSE(request.has_min_formation_step());
    EXPECT_FALSE(request.has_max_formation_step());
    EXPECT_FALSE(request.has_min_frequency());
    EXPECT_FALSE(request.has_max_frequency());
    EXPECT_EQ(request.order_by(), expected) << order;
    EXPECT_EQ(request.page_size(), 0);
    EXPECT_EQ(request.page_token(), "");
    // The last page: the header and one line per feature, no hint.
    EXPECT_EQ(Lines(r.out).size(), 3u) << r.out;
    EXPECT_THAT(r.out, ::testing::Not(HasSubstr("--page-token")));
  }
  for (const auto& [kind, expected] :
       std::vector<std::pair<std::string, v1::FeatureKind>>{
           {"token", v1::FEATURE_KIND_TOKEN_LEVEL},
           {"dead", v1::FEATURE_KIND_DEAD}}) {
    ASSERT_EQ(
        Run({"features", "job-000007", "--layer", "1", "--kind", kind}).code,
        kExitOk);
    EXPECT_EQ(coordinator_->features_request.kind(), expected);
  }
}

TEST_F(CliQueryTest, BadFeatureFlagsAreUsageErrorsNamingTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--kind", "tokens"},
       "flag --kind: 'tokens' is not one of token, concept, dead"},
      {{"--order", "size"},
       "flag --order: 'size' is not one of id, formation, drift, frequency"},
      {{"--formed-from", "x"}, "flag --formed-from: 'x' is not an integer"},
      {{"--formed-to", "-1"}, "flag --formed-to: -1 is not a step (0 or more)"},
      {{"--min-freq", "1.5"},
       "flag --min-freq: '1.5' is not a frequency in [0, 1]"},
      {{"--max-freq", "often"},
       "flag --max-freq: 'often' is not a frequency in [0, 1]"},
      {{"--limit", "0"}, "flag --limit: 0 is not a page size (1 or more)"},
      {{"--limit", "10001"}, "flag --limit: 10001 is more than 10000"},
      {{"--page-token"}, "flag --page-token needs a value"},
      {{"--formed-from", "64", "--formed-to", "16"},
       "--formed-from 64 is after --formed-to 16"},
      {{"--min-freq", "0.5", "--max-freq", "0.25"},
       "--min-freq 0.5 is above --max-freq 0.25"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = {"features", "job-000007", "--layer", "1"};
    args.insert(args.end(), flags.begin(), flags.end());
    Result r = Run(args);
    EXPECT_EQ(r.code, kExitUsage) << message;
    EXPECT_EQ(r.err,
              absl::StrCat("saetrack: ", message, " (see saetrack --help)\n"));
    EXPECT_EQ(r.out, "");
  }
  Result r = Run({"features", "job-000007"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_EQ(r.err, "saetrack: features needs --layer (see saetrack --help)\n");
  r = Run({"feature", "job-000007", "--layer", "1", "--feature", "-3"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err,
              HasSubstr("flag --feature: -3 is not a feature id (0 or more)"));
  r = Run({"feature", "job-000007", "--layer", "1", "--contexts=yes"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_THAT(r.err, HasSubstr("flag --contexts takes no value"));
  r = Run({"drift", "job-000007"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_EQ(r.err, "saetrack: drift needs --layer (see saetrack --help)\n");
  EXPECT_THAT(coordinator_->calls, IsEmpty());
}

TEST_F(CliQueryTest, FeaturesJsonRoundTrips) {
  SetFeaturePage();
  Result r = Run({"features", "job-000007", "--layer", "1", "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      ParseProtoJson<v1::ListFeaturesResponse>(r.out), coordinator_->features))
      << r.out;
  EXPECT_THAT(r.out, HasSubstr("\"next_page_token\": \"page-2\""));
  EXPECT_THAT(r.out, HasSubstr("FEATURE_KIND_TOKEN_LEVEL"));
}

TEST_F(CliQueryTest, DriftPrintsQuantilesPhasesAndKinds) {
  SetDrift();
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(coordinator_->calls, ElementsAre("GetDriftSummary job-000007 1"));
  EXPECT_EQ(
      r.out,
      "drift of job job-000007 layer 1 (tau 0.50, token-level at 80%, top 25 "
      "contexts, 1.0M analysis tokens)\n"
      "chain     step final q10 final q50 final q90  prev q50 P act q50  "
      "formed\n"
      "    0        0     0.125     0.250     0.375         -     0.025      "
      "10\n"
      "    1       16     0.375     0.500     0.625     0.877     0.050      "
      "40\n"
      "    2       64     0.625     0.750     0.875     0.881     0.075      "
      "90\n"
      "    3      256     0.875     1.000     1.000     0.901     0.100     "
      "100\n"
      "final q50  ▁▃▆█  0.250 .. 1.000\n"
      "phases of the median cos to final: 3 segments (ΔBIC 20.0 / 7.5 / 0.0 "
      "for 1 / 2 / 3 segments), breakpoints at steps 15 and 127, slopes "
      "0.0500 / 0.1250 / 0.0625 per unit of log(step + 1), r² 0.999\n"
      "kind            count  formed  mean formation  median formation\n"
      "token-level        60      58             3.5                 0\n"
      "concept-level      42      40           120.2                64\n"
      "dead               26       0               -                 -\n"
      "against the paper:\n"
      "  drift: reproduces, features keep their index and converge: the "
      "median cos to the final direction goes from 0.250 at step 0 to 1.000 "
      "at step 256, never falling\n"
      "  phases: does NOT reproduce the paper's fast-slow-fast shape (the "
      "middle phase is the steepest): slopes 0.0500 / 0.1250 / 0.0625 with "
      "breakpoints at steps 15 and 127 (r² 0.999; ΔBIC 20.0 / 7.5 / 0.0 for "
      "1 / 2 / 3 segments)\n"
      "  formation: reproduces, concept-level features form later: mean "
      "formation step 120.2 (concept-level) vs 3.5 (token-level), medians 64 "
      "vs 0\n");
}

// Trust checks at steps 0 and 256 of SetDrift's chain: seed stability
// `seed_match` at step 0, chain vs independent `late_match` at step 256
// with speed-ups `same` and `slow`.
v1::GetQualityChecksResponse QualityAt0And256(double seed_match,
                                              double late_match, double same,
                                              double slow) {
  v1::GetQualityChecksResponse q;
  for (const auto& [step, match] :
       {std::pair<int64_t, double>{0, seed_match}, {256, late_match}}) {
    v1::CheckpointMetrics* m = q.add_checkpoints();
    m->set_step(step);
    m->set_chain_index(step == 0 ? 0 : 3);
    m->set_median_decoder_cos_init(step == 0 ? 0.17 : 0.99);
    v1::ReferenceCheck* r = m->mutable_reference();
    r->set_seed(2);
    r->set_match_median_cosine(match);
    r->set_random_median_cosine(0.25);
    if (step > 0) {
      r->mutable_speedup()->mutable_same_lr()->set_speedup(same);
      r->mutable_speedup()->mutable_slow_lr()->set_speedup(slow);
    }
  }
  return q;
}

TEST_F(CliQueryTest, FindingsOverRunsGiveEachNumberItsRange) {
  SetDrift();
  internal::FindingsRun a;
  a.job_id = "job-000001";
  a.seed = 1;
  a.layer = 1;
  a.drift = coordinator_->drift;
  a.quality = QualityAt0And256(0.97, 0.66, 600, 0.5);
  internal::FindingsRun b = a;
  b.job_id = "job-000002";
  b.seed = 2;
  // The second seed: step 0 drifts less, only two segments win, formation
  // in the same order, a smaller speed-up.
  b.drift.mutable_checkpoints(0)->mutable_cos_to_final()->set_q50(0.35);
  b.drift.mutable_phases()->set_segments(2);
  b.drift.mutable_phases()->set_bic2(-61);
  b.quality = QualityAt0And256(0.95, 0.60, 40, 0.1);
  const std::string text = internal::FormatFindingsOverRuns({a, b});
  EXPECT_THAT(text, StartsWith("findings over 2 runs at layer 1: job-000001 "
                               "(seed 1) job-000002 (seed 2)\n"));
  EXPECT_THAT(text, HasSubstr("\ndrift: median cos to final at step 0        "
                              "     0.250       0.350     0.300  0.250 - "
                              "0.350\n"));
  EXPECT_THAT(text, HasSubstr("\n  two SAEs of step 0 (matched cos)          "
                              "     0.970       0.950     0.960  0.950 - "
                              "0.970\n"));
  EXPECT_THAT(text, HasSubstr("\nspeed-up at step 256, same lr             "
                              "      600.0x       40.0x    320.0x  40.0x - "
                              "600.0x\n"));
  EXPECT_THAT(text, HasSubstr("\nphases: segments chosen by BIC            "
                              "           3           2       2.5  2 - 3\n"));
  // The second breakpoint exists only where three segments won.
  EXPECT_THAT(text, HasSubstr("\nphases: second breakpoint (step)          "
                              "       127.4           -     127.4  127.4 - "
                              "127.4\n"));
  EXPECT_THAT(text, HasSubstr("verdicts over the runs:\n"
                              "  drift: reproduces in 2 of 2 runs\n"
                              "  phases: does NOT reproduce in 2 of 2 runs\n"
                              "  formation: reproduces in 2 of 2 runs\n"));
  // Step 0 drifts far beyond what two seeds disagree by. At the final
  // checkpoint cos to final is 1 by definition: no drift row or verdict
  // there, only what two SAEs of it share.
  EXPECT_THAT(text, HasSubstr("  drift vs noise at step 0: signal in 2 of "
                              "2 runs\n"
                              "  speed-up, same lr:"));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("at step 256\n")));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("cos to final at step 256")));
  EXPECT_THAT(text, HasSubstr("\n  two SAEs of step 256 (matched cos)        "
                              "     0.660       0.600     0.630  0.600 - "
                              "0.660\n"));
  EXPECT_THAT(text, HasSubstr("  speed-up, same lr: median 320.0x over the 2 "
                              "of 2 links that reached the from-scratch loss "
                              "(range 40.0x - 600.0x); >= 20x (the paper's) "
                              "at 2, slower than from scratch at 0\n"));
  EXPECT_THAT(text, HasSubstr("  speed-up, lr/10: median 0.3x over the 2 of 2 "
                              "links that reached the from-scratch loss "
                              "(range 0.1x - 0.5x); >= 20x (the paper's) at "
                              "0, slower than from scratch at 2\n"));
  // An arm that never got there counts as never, not as a speed-up of 0.
  b.quality = QualityAt0And256(0.95, 0.60, 0, 0);
  EXPECT_THAT(internal::FormatFindingsOverRuns({a, b}),
              HasSubstr("  speed-up, same lr: median 600.0x over the 1 of 2 "
                        "links that reached the from-scratch loss"));
  a.quality = b.quality;
  EXPECT_THAT(internal::FormatFindingsOverRuns({a, b}),
              HasSubstr("  speed-up, lr/10: never reached the from-scratch "
                        "loss on any of 2 links\n"));

  const nlohmann::json json =
      nlohmann::json::parse(internal::FindingsOverRunsJson({a, b}));
  EXPECT_EQ(json["layer"], 1);
  EXPECT_EQ(json["runs"][1]["seed"], 2);
  const nlohmann::json& first = json["measures"][0];
  EXPECT_EQ(first["name"], "drift: median cos to final at step 0");
  EXPECT_DOUBLE_EQ(first["values"][1].get<double>(), 0.35);
  EXPECT_DOUBLE_EQ(first["min"].get<double>(), 0.25);
  EXPECT_EQ(json["measures"][1]["name"], "two SAEs of step 0 (matched cos)");
  EXPECT_EQ(json["verdicts"][1]["finding"], "phases");
  EXPECT_EQ(json["verdicts"][1]["per_run"][0], "does_not_reproduce");
}

TEST_F(CliQueryTest, FindingsAsksEveryJobAndNamesBadInput) {
  SetDrift();
  coordinator_->quality = QualityAt0And256(0.97, 0.66, 600, 0.5);
  Result r = Run({"findings", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("GetJob job-000007", "GetDriftSummary job-000007 1",
                          "GetQualityChecks job-000007 1"));
  EXPECT_THAT(r.out, HasSubstr("findings over 1 run at layer 1"));
  EXPECT_THAT(r.out, HasSubstr("drift: reproduces in 1 of 1 run\n"));
  r = Run({"findings", "job-000007", "job-000099", "--layer", "1"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err, "saetrack: NOT_FOUND: job job-000099: not found\n");
  EXPECT_EQ(r.out, "");
  r = Run({"findings", "--layer", "1"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_EQ(r.err,
            "saetrack: findings needs at least one job id (see "
            "saetrack --help)\n");
  r = Run({"findings", "job-000007"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_EQ(r.err, "saetrack: findings needs --layer (see saetrack --help)\n");
}

TEST_F(CliQueryTest, DriftShowsTheTokenControlledProgressBesideThePapers) {
  SetDrift();
  v1::DriftSummary& d = coordinator_->drift;
  d.mutable_kinds(0)->set_final_progress_q50(0.41);
  d.mutable_kinds(0)->set_final_progress_token_controlled_q50(0.012);
  d.mutable_kinds(1)->set_final_progress_q50(0.3);
  d.mutable_kinds(1)->set_final_progress_token_controlled_q50(0.2);
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out,
              HasSubstr("dead               26       0               -       "
                        "          -\n"
                        "progress at step 256 (median P act): random-position "
                        "baseline / same-token baseline\n"
                        "token-level     0.410 / 0.012\n"
                        "concept-level   0.300 / 0.200\n"
                        "against the paper:\n"));
}

TEST_F(CliQueryTest, DriftSaysPlainlyWhereAFindingDoesNotReproduce) {
  SetDrift();
  v1::DriftSummary& d = coordinator_->drift;
  // A dip in the median cos to final, a drift that speeds up phase by
  // phase, and concept-level features that are later only on average.
  d.mutable_checkpoints(2)->mutable_cos_to_final()->set_q50(0.4);
  d.mutable_phases()->set_slope3(0.5);
  d.mutable_kinds(1)->set_median_formation_step(0);
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out,
              HasSubstr("  drift: does NOT reproduce monotonic convergence: "
                        "the median cos to the final direction goes from "
                        "0.250 at step 0 to 1.000 at step 256 but falls at 1 "
                        "checkpoint(s)\n"));
  EXPECT_THAT(r.out,
              HasSubstr("  phases: does NOT reproduce the paper's "
                        "fast-slow-fast shape (the drift speeds up phase by "
                        "phase): slopes 0.0500 / 0.1250 / 0.5000"));

  // The paper's shape: fast, slower, fast.
  d.mutable_phases()->set_slope1(0.25);
  d.mutable_phases()->set_slope2(0.0625);
  Result shaped = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(shaped.code, kExitOk) << shaped.err;
  EXPECT_THAT(shaped.out,
              HasSubstr("  phases: reproduces, a fast initial drift, a slower "
                        "middle phase, then convergence to the final "
                        "direction: slopes 0.2500 / 0.0625 / 0.5000"));
  // The same slopes with a poor fit.
  d.mutable_phases()->set_r_squared(0.5);
  shaped = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(shaped.code, kExitOk) << shaped.err;
  EXPECT_THAT(shaped.out, HasSubstr("shape (the fit is poor)"));
  EXPECT_THAT(r.out,
              HasSubstr("  formation: reproduces only weakly, concept-level "
                        "features form later on average but not at the "
                        "median: mean formation step 120.2 (concept-level) vs "
                        "3.5 (token-level), medians 0 vs 0\n"));

  // Concept-level features earlier on both counts.
  d.mutable_kinds(1)->set_mean_formation_step(1);
  r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("  formation: does NOT reproduce, "
                               "concept-level features do not form later: "
                               "mean formation step 1.0 (concept-level) vs "
                               "3.5 (token-level), medians 0 vs 0\n"));
}

TEST_F(CliQueryTest, DriftSaysHowManySegmentsTheDataSupport) {
  SetDrift();
  v1::PhaseFit& p = *coordinator_->drift.mutable_phases();
  // Two segments win; the unused third slope repeats the second.
  p.set_segments(2);
  p.set_slope1(0.25);
  p.set_slope2(0.0625);
  p.set_slope3(0.0625);
  p.set_breakpoint2_step(256);
  p.set_bic2(-61);
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nphases of the median cos to final: 2 "
                               "segments (ΔBIC 21.0 / 0.0 / 1.0 for 1 / 2 / 3 "
                               "segments), breakpoint at step 15, slopes "
                               "0.2500 / 0.0625 per unit of log(step + 1), r² "
                               "0.999\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  phases: does NOT reproduce three phases, "
                               "the data support 2 segments (ΔBIC 21.0 / 0.0 "
                               "/ 1.0 for 1 / 2 / 3 segments): slopes 0.2500 / "
                               "0.0625 with a breakpoint at step 15 (r² "
                               "0.999)\n"));

  // One segment.
  p.set_segments(1);
  p.set_slope2(0.25);
  p.set_slope3(0.25);
  p.set_bic1(-70);
  r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\nphases of the median cos to final: 1 "
                               "segment (ΔBIC 0.0 / 9.0 / 10.0 for 1 / 2 / 3 "
                               "segments), slope 0.2500 per unit of log(step "
                               "+ 1), r² 0.999\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  phases: does NOT reproduce three phases, "
                               "the data support 1 segment (a straight line in "
                               "log(step + 1))"));

  // Three segments did not compete.
  p.clear_bic3();
  r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("(ΔBIC 0.0 / 9.0 / - for 1 / 2 / 3 segments)"));
  EXPECT_THAT(r.out, HasSubstr("\n  phases: not measured (fewer than 7 "
                               "checkpoints, too few for three segments to "
                               "compete; "));
}

TEST_F(CliQueryTest, DriftWithAFitStoredBeforeModelSelection) {
  SetDrift();
  v1::PhaseFit& p = *coordinator_->drift.mutable_phases();
  p.clear_segments();
  p.clear_bic1();
  p.clear_bic2();
  p.clear_bic3();
  // The paper's shape, but no evidence that three segments are needed.
  p.set_slope1(0.25);
  p.set_slope2(0.0625);
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out,
              HasSubstr("\nphases of the median cos to final: breakpoints at "
                        "steps 15 and 127, slopes 0.2500 / 0.0625 / 0.0625 per "
                        "unit of log(step + 1), r² 0.999\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  phases: not measured (the stored fit has "
                               "three segments but no comparison with fewer; "
                               "summarise the job again)\n"));
}

TEST_F(CliQueryTest, DriftWithoutAPhaseFitSaysSo) {
  SetDrift();
  coordinator_->drift.clear_phases();
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(
      r.out, HasSubstr("\nphases: not fitted (fewer than four checkpoints)\n"));
  EXPECT_THAT(r.out, HasSubstr("\n  phases: not measured (fewer than four "
                               "checkpoints)\n"));
}

TEST_F(CliQueryTest, DriftJsonRoundTrips) {
  SetDrift();
  Result r = Run({"drift", "job-000007", "--layer", "1", "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  const auto parsed = ParseProtoJson<v1::DriftSummary>(r.out);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      parsed, coordinator_->drift))
      << r.out;
  EXPECT_FALSE(parsed.checkpoints(0).has_cos_to_previous());
  EXPECT_TRUE(parsed.checkpoints(1).has_cos_to_previous());
}

// The SAELens directory a coordinator with ExportSae streams: its own
// cfg.json (with a field saetrack does not write, kept as sent), the
// weights and a README.
ExportedSae StreamedExport(int64_t step, const std::string& weights) {
  ExportedSae exported;
  exported.step = step;
  format::SaelensConfig cfg;
  cfg.architecture = "topk";
  cfg.d_in = kDIn;
  cfg.d_sae = kDSae;
  cfg.k = 2;
  cfg.model_name = "/models/tiny/step-16";
  cfg.hook_name = "blocks.1.hook_resid_pre";
  cfg.hook_layer = 1;
  cfg.checkpoint_step = step;
  cfg.job_id = "job-000007";
  std::string json = format::SaelensConfigToJson(cfg);
  json.insert(1, "\n  \"served_by\": \"coordinator\",");
  exported.files[format::kSaelensConfigFile] = json;
  exported.files[format::kSaelensWeightsFile] = weights;
  exported.files["README.md"] = "exported by saetrack\n";
  return exported;
}

TEST_F(CliExportTest, WritesTheFilesExportSaeStreamsAsTheyCame) {
  const ExportedSae streamed = StreamedExport(16, SaeBytes(kDIn, kDSae, 0.25f));
  coordinator_->exported = streamed;
  const std::string dir = temp_.path() + "/new/sae";
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "16", "--out", dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, absl::StrCat("exported job job-000007 layer 1 step 16 "
                                "(topk k 2, d_in 4, d_sae 8) to ",
                                dir, "\n"));
  EXPECT_EQ(r.err, "");
  // No download and no cfg.json of the CLI's own.
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("GetCheckpointMetrics job-000007 1",
                          "ExportSae job-000007 1 16"));
  for (const auto& [name, bytes] : streamed.files) {
    absl::StatusOr<std::string> written =
        format::ReadFileToString(dir + "/" + name);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ(*written, bytes) << name;
  }
  absl::StatusOr<format::SaelensSae> sae = format::ReadSaelensDir(dir);
  ASSERT_TRUE(sae.ok()) << sae.status();
  EXPECT_EQ(sae->config.k, 2);

  // --json names every file written.
  r = Export(
      {"job-000007", "--layer", "1", "--step", "16", "--out", dir, "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  absl::StatusOr<format::JsonValue> json = format::ParseJson(r.out);
  ASSERT_TRUE(json.ok()) << r.out;
  EXPECT_EQ(json->Find("step")->AsInt64(), 16);
  EXPECT_EQ(json->Find("chain_index")->AsInt64(), 1);
  EXPECT_EQ(json->Find("architecture")->string_value(), "topk");
  EXPECT_EQ(json->Find("weights_path")->string_value(),
            dir + "/sae_weights.safetensors");
  std::vector<std::string> files;
  for (const format::JsonValue& f : json->Find("files")->array()) {
    files.push_back(f.string_value());
  }
  EXPECT_THAT(files,
              ElementsAre("README.md", "cfg.json", "sae_weights.safetensors"));
}

TEST_F(CliExportTest, WithoutStepExportSaeGetsTheLastSaeOfTheChain) {
  coordinator_->exported = StreamedExport(0, SaeBytes(kDIn, kDSae, 1.0f));
  Result r = Export({"job-000007", "--layer", "1", "--out", temp_.path()});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("GetCheckpointMetrics job-000007 1",
                          "ExportSae job-000007 1 0"));
  EXPECT_THAT(r.out, HasSubstr(" step 0 "));
}

TEST_F(CliExportTest, AnExportThatCannotBeWrittenWritesNothing) {
  const std::string dir = temp_.path() + "/sae";
  // The coordinator's error.
  coordinator_->exported = absl::StatusOr<ExportedSae>(absl::DataLossError(
      "SAE export of job job-000007 layer 1 step 16: file cfg.json: CRC-32C "
      "mismatch"));
  Result r =
      Export({"job-000007", "--layer", "1", "--step", "16", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err,
            "saetrack: DATA_LOSS: SAE export of job job-000007 layer 1 step "
            "16: file cfg.json: CRC-32C mismatch\n");
  // A directory without its cfg.json.
  ExportedSae streamed = StreamedExport(16, SaeBytes(kDIn, kDSae, 1.0f));
  streamed.files.erase("cfg.json");
  coordinator_->exported = streamed;
  r = Export({"job-000007", "--layer", "1", "--step", "16", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err,
            "saetrack: DATA_LOSS: the coordinator's export of job job-000007 "
            "layer 1 lacks cfg.json\n");
  // A cfg.json that does not parse.
  streamed.files["cfg.json"] = "{\"d_in\": 4}";
  coordinator_->exported = streamed;
  r = Export({"job-000007", "--layer", "1", "--step", "16", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err,
              StartsWith("saetrack: INVALID_ARGUMENT: " + dir + "/cfg.json"));
  EXPECT_THAT(r.err, HasSubstr("d_sae"));
  // Another step than the one asked for.
  coordinator_->exported = StreamedExport(64, SaeBytes(kDIn, kDSae, 1.0f));
  r = Export({"job-000007", "--layer", "1", "--step", "16", "--out", dir});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err,
            "saetrack: INTERNAL: asked to export step 16, the coordinator "
            "sent step 64\n");
  EXPECT_FALSE(std::filesystem::exists(dir));
}

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

// SaetrackClient::DownloadSae against an in-process WorkerService that
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

// SaetrackClient's query calls and ExportSae against an in-process
// QueryService that answers with chosen messages and streams chosen chunks.
class FakeQueryService final : public v1::QueryService::Service {
 public:
  grpc::Status GetCheckpointMetrics(
      grpc::ServerContext* /*context*/,
      const v1::GetCheckpointMetricsRequest* /*request*/,
      v1::GetCheckpointMetricsResponse* response) override {
    *response = metrics;
    return grpc::Status::OK;
  }
  grpc::Status GetFeatureHistory(grpc::ServerContext* /*context*/,
                                 const v1::GetFeatureHistoryRequest* request,
                                 v1::FeatureHistory* response) override {
    history_request = *request;
    response->set_feature_id(request->feature_id());
    return grpc::Status::OK;
  }
  grpc::Status ListFeatures(grpc::ServerContext* /*context*/,
                            const v1::ListFeaturesRequest* request,
                            v1::ListFeaturesResponse* response) override {
    features_request = *request;
    response->set_total(153);
    return grpc::Status::OK;
  }
  grpc::Status GetDriftSummary(grpc::ServerContext* /*context*/,
                               const v1::GetDriftSummaryRequest* request,
                               v1::DriftSummary* response) override {
    response->set_job_id(request->job_id());
    response->set_layer(request->layer());
    return grpc::Status::OK;
  }
  grpc::Status ExportSae(grpc::ServerContext* /*context*/,
                         const v1::ExportSaeRequest* request,
                         grpc::ServerWriter<v1::ExportChunk>* writer) override {
    export_request = *request;
    for (const v1::ExportChunk& chunk : chunks) {
      if (!writer->Write(chunk)) break;
    }
    std::lock_guard<std::mutex> lock(exports_mu_);
    ++exports_done_;
    exports_cv_.notify_all();
    return status;
  }

  // Waits until `n` ExportSae handlers have returned. A client that stops
  // reading at a bad chunk returns before the handler is done with `chunks`,
  // so a test must wait before it changes them for the next call.
  bool WaitForExports(int n) {
    std::unique_lock<std::mutex> lock(exports_mu_);
    return exports_cv_.wait_for(lock, std::chrono::seconds(10),
                                [&] { return exports_done_ >= n; });
  }

  v1::GetCheckpointMetricsResponse metrics;
  std::vector<v1::ExportChunk> chunks;
  grpc::Status status;
  v1::GetFeatureHistoryRequest history_request;
  v1::ListFeaturesRequest features_request;
  v1::ExportSaeRequest export_request;

 private:
  std::mutex exports_mu_;
  std::condition_variable exports_cv_;
  int exports_done_ = 0;
};

class QueryClientTest : public ::testing::Test {
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
    options_.coordinator = absl::StrCat("127.0.0.1:", port);
    options_.call_timeout = absl::Seconds(10);
    client_ = SaetrackClient::Create(options_);
  }

  void TearDown() override { server_->Shutdown(); }

  // Appends the chunks of file `name` holding `bytes`, `chunk_bytes` at a
  // time, as the coordinator streams them.
  void Serve(const std::string& name, const std::string& bytes,
             size_t chunk_bytes, int64_t step = 64) {
    size_t offset = 0;
    do {
      v1::ExportChunk chunk;
      chunk.set_file(name);
      chunk.set_step(step);
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

  // Chunks 0-3 are file a (16 bytes), 4-5 file b (8 bytes).
  void ServeTwoFiles() {
    Serve("a", "0123456789abcdef", 4);
    Serve("b", "ABCDEFGH", 4);
  }

  FakeQueryService service_;
  std::unique_ptr<grpc::Server> server_;
  ClientOptions options_;
  std::unique_ptr<SaetrackClient> client_;
};

TEST_F(QueryClientTest, ExportSaeReassemblesEveryFile) {
  const std::string weights = SaeBytes(kDIn, kDSae, 0.5f);
  Serve("cfg.json", "{\"d_in\": 4}", 5);
  Serve("sae_weights.safetensors", weights, 50);
  Serve("empty", "", 50);
  absl::StatusOr<ExportedSae> got = client_->ExportSae("job-000003", 2, 64);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->step, 64);
  EXPECT_EQ(got->files, (std::map<std::string, std::string>{
                            {"cfg.json", "{\"d_in\": 4}"},
                            {"empty", ""},
                            {"sae_weights.safetensors", weights}}));
  EXPECT_EQ(service_.export_request.job_id(), "job-000003");
  EXPECT_EQ(service_.export_request.layer(), 2);
  ASSERT_TRUE(service_.export_request.has_step());
  EXPECT_EQ(service_.export_request.step(), 64);

  // Without a step the request leaves it unset: the final checkpoint.
  got = client_->ExportSae("job-000003", 2, std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(service_.export_request.has_step());
}

TEST_F(QueryClientTest, ExportSaeChecksEveryFileAndTheStream) {
  struct Case {
    std::string name;
    std::function<void(std::vector<v1::ExportChunk>&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"gap", [](auto& c) { c.erase(c.begin() + 5); },
       "file b: the stream ended at offset 4 without a last chunk"},
      {"offset", [](auto& c) { c.erase(c.begin() + 1); },
       "file a: chunk at offset 8, expected offset 4"},
      {"after last",
       [](auto& c) {
         v1::ExportChunk extra = c[3];
         extra.set_offset(16);
         extra.set_last(false);
         c.insert(c.begin() + 4, extra);
       },
       "file a: chunk at offset 16 after the last chunk (offset 12)"},
      {"no last", [](auto& c) { c[3].set_last(false); },
       "file a: the stream moved on to b at offset 16 without a last chunk"},
      {"crc", [](auto& c) { c[5].set_crc32c(c[5].crc32c() ^ 1); },
       "file b: CRC-32C mismatch: the last chunk (offset 4) says"},
      {"size", [](auto& c) { c[3].set_total_size(17); },
       "file a: the last chunk (offset 12) says total_size 17, but 16 bytes "
       "arrived"},
      {"twice",
       [](auto& c) {
         v1::ExportChunk again = c[0];
         again.set_last(true);
         again.set_total_size(4);
         again.set_crc32c(format::Crc32c(again.data()));
         c.push_back(again);
       },
       "file a comes twice in the stream"},
      {"path",
       [](auto& c) {
         for (auto& chunk : c) chunk.set_file("../b");
       },
       "file name '../b' is not a plain file name"},
      {"step", [](auto& c) { c[4].set_step(16); },
       "file b: chunk at offset 0 is of step 16, earlier chunks of step 64"},
      {"empty", [](auto& c) { c.clear(); },
       "the stream ended without any file"},
  };
  int calls = 0;
  for (const Case& test : cases) {
    ASSERT_TRUE(service_.WaitForExports(calls)) << test.name;
    service_.chunks.clear();
    ServeTwoFiles();
    test.mutate(service_.chunks);
    absl::StatusOr<ExportedSae> got = client_->ExportSae("job-000003", 2, 64);
    ++calls;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << test.name;
    EXPECT_THAT(std::string(got.status().message()),
                StartsWith("SAE export of job job-000003 layer 2 step 64: "))
        << test.name;
    EXPECT_THAT(got.status().message(), HasSubstr(test.message)) << test.name;
  }
}

TEST_F(QueryClientTest, ExportSaeReturnsTheServersError) {
  ServeTwoFiles();
  service_.status =
      grpc::Status(grpc::StatusCode::NOT_FOUND, "job job-000003: not found");
  absl::StatusOr<ExportedSae> got = client_->ExportSae("job-000003", 2, 64);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(), "job job-000003: not found");
}

TEST_F(QueryClientTest, QueryRequestsArriveAsGiven) {
  v1::ListFeaturesRequest list;
  list.set_job_id("job-000003");
  list.set_layer(2);
  list.set_kind(v1::FEATURE_KIND_DEAD);
  list.set_min_formation_step(0);
  list.set_max_frequency(0.5);
  list.set_order_by(v1::ListFeaturesRequest::FREQUENCY);
  list.set_page_size(7);
  list.set_page_token("t");
  absl::StatusOr<v1::ListFeaturesResponse> features =
      client_->ListFeatures(list);
  ASSERT_TRUE(features.ok()) << features.status();
  EXPECT_EQ(features->total(), 153);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      service_.features_request, list));

  absl::StatusOr<v1::DriftSummary> drift =
      client_->GetDriftSummary("job-000003", 2);
  ASSERT_TRUE(drift.ok()) << drift.status();
  EXPECT_EQ(drift->job_id(), "job-000003");
  EXPECT_EQ(drift->layer(), 2);

  v1::GetFeatureHistoryRequest history;
  history.set_job_id("job-000003");
  history.set_layer(2);
  history.set_feature_id(9);
  history.set_include_contexts(true);
  history.set_include_decoder(true);
  history.set_context_before(3);
  history.set_context_after(1);
  ASSERT_TRUE(client_->GetFeatureHistory(history).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      service_.history_request, history));
  // The short form asks for neither decoder rows nor context windows.
  absl::StatusOr<v1::FeatureHistory> got =
      client_->GetFeatureHistory("job-000003", 2, 11);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->feature_id(), 11);
  EXPECT_EQ(service_.history_request.feature_id(), 11);
  EXPECT_FALSE(service_.history_request.include_contexts());
  EXPECT_FALSE(service_.history_request.include_decoder());
}

// `saetrack export` through the real client: the streamed files land in
// --out; a corrupted one is refused and nothing is written.
TEST_F(QueryClientTest, CliExportWritesTheStreamAndRefusesABadChecksum) {
  v1::CheckpointMetrics* m = service_.metrics.add_checkpoints();
  m->set_layer(2);
  m->set_step(64);
  m->set_chain_index(4);
  m->set_d_in(kDIn);
  m->set_d_sae(kDSae);
  format::SaelensConfig cfg;
  cfg.architecture = "relu_l1";
  cfg.d_in = kDIn;
  cfg.d_sae = kDSae;
  cfg.hook_name = "blocks.2.hook_resid_pre";
  cfg.hook_layer = 2;
  cfg.checkpoint_step = 64;
  const std::string cfg_json = format::SaelensConfigToJson(cfg);
  const std::string weights = SaeBytes(kDIn, kDSae, 2.0f);
  Serve("sae_weights.safetensors", weights, 64);
  Serve("cfg.json", cfg_json, 64);
  TempDir temp;
  const std::string dir = temp.path() + "/sae";
  const auto run = [&](const std::vector<std::string>& args) {
    std::ostringstream out, err;
    int code = RunCli(args, out, err, /*err_is_terminal=*/false,
                      [&](const ClientOptions& options) {
                        EXPECT_EQ(options.coordinator, options_.coordinator);
                        return SaetrackClient::Create(options_);
                      });
    return Result{code, out.str(), err.str()};
  };
  const std::vector<std::string> args = {
      "export", "job-000003", "--layer",       "2",
      "--out",  dir,          "--coordinator", options_.coordinator};
  Result r = run(args);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, absl::StrCat("exported job job-000003 layer 2 step 64 "
                                "(relu_l1, d_in 4, d_sae 8) to ",
                                dir, "\n"));
  EXPECT_EQ(format::ReadFileToString(dir + "/cfg.json").value_or(""), cfg_json);
  EXPECT_EQ(
      format::ReadFileToString(dir + "/sae_weights.safetensors").value_or(""),
      weights);
  ASSERT_TRUE(format::ReadSaelensDir(dir).ok());

  service_.chunks.back().set_crc32c(service_.chunks.back().crc32c() ^ 0xff);
  const std::string bad_dir = temp.path() + "/bad";
  std::vector<std::string> bad_args = args;
  bad_args[5] = bad_dir;
  r = run(bad_args);
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err,
              StartsWith("saetrack: DATA_LOSS: SAE export of job job-000003 "
                         "layer 2 step 64: file cfg.json: CRC-32C mismatch: "
                         "the last chunk (offset "));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(std::filesystem::exists(bad_dir));
}

// ParseArgs, below the CLI: the arguments that CLI11 would read its own way
// read as they always have.

// The message of a ParseArgs error; "" if it parsed.
std::string ParseError(const std::vector<std::string>& args) {
  absl::StatusOr<internal::Invocation> inv = internal::ParseArgs(args);
  if (inv.ok()) return "";
  EXPECT_EQ(inv.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(inv.status().message());
}

// A following job at a fixed time: waiting since kNowMs - 12 s for a step
// after 32, five checkpoints taken, four stored.
class CliFollowTest : public ::testing::Test {
 protected:
  // 2026-12-04 20:21:00 UTC.
  static constexpr int64_t kNowMs = 1'796'415'660'000;

  CliFollowTest() : coordinator_(std::make_shared<FakeCoordinator>()) {
    v1::Job& job = coordinator_->job;
    job.set_job_id("job-000009");
    job.set_state(v1::JOB_STATE_RUNNING);
    job.mutable_progress()->set_tasks_done(8);
    job.mutable_progress()->set_tasks_total(10);
    v1::JobSpec& spec = *job.mutable_spec();
    spec.set_name("live");
    spec.mutable_model()->set_architecture("gpt_neox");
    v1::FollowSpec& follow_spec = *spec.mutable_model()->mutable_follow();
    follow_spec.set_dir("/runs/pythia");
    follow_spec.set_pattern("checkpoint-{step}");
    follow_spec.set_analyse_every(2);
    follow_spec.set_until_step(1000);
    v1::HookPoint* hook = spec.add_hooks();
    hook->set_layer(1);
    hook->set_site("resid_pre");
    v1::FollowStatus& follow = *job.mutable_follow();
    follow.set_state(v1::FOLLOW_STATE_WAITING);
    follow.set_waiting_since_ms(kNowMs - 12'000);
    follow.set_last_step(32);
    follow.set_last_taken_ms(kNowMs - 65'000);
    for (int64_t step : {0, 8, 16, 24, 32}) {
      spec.mutable_model()->add_checkpoints()->set_step(step);
      v1::FollowedCheckpoint* c = follow.add_checkpoints();
      c->set_step(step);
      c->set_path(absl::StrCat("/runs/pythia/checkpoint-", step));
      c->set_last_write_ms(kNowMs - 200'000 + step * 1000);
      // Step 24 stored last, 41 s after its last write; step 32 not yet.
      if (step <= 16) c->set_stored_ms(kNowMs - 150'000 + step * 1000);
      if (step == 24) c->set_stored_ms(kNowMs - 176'000 + 41'000 + 60'000);
    }
    v1::RefusedCheckpoint* refused = follow.add_refused();
    refused->set_step(4);
    refused->set_path("/runs/pythia/checkpoint-4");
    refused->set_reason("step 4 is older than step 32, the latest taken");
    follow.set_analysis_round(2);
    follow.set_analysed_checkpoints(4);
    follow.set_analysis_running(true);
    follow.set_trained_since_round(1);
  }

  static absl::Time Now() { return absl::FromUnixMillis(kNowMs); }

  Result Run(const std::vector<std::string>& args) {
    std::ostringstream out, err;
    int code = RunCli(args, out, err, /*err_is_terminal=*/false,
                      [this](const ClientOptions& /*options*/) {
                        return std::make_unique<FakeClient>(coordinator_);
                      });
    return {code, out.str(), err.str()};
  }

  std::shared_ptr<FakeCoordinator> coordinator_;
};

TEST_F(CliFollowTest, StatusSectionShowsEveryPartOfTheFollowStatus) {
  EXPECT_EQ(
      internal::FormatFollowStatus(coordinator_->job, Now()),
      "  follow: /runs/pythia (checkpoint-{step}, scanned every 10s), until "
      "step 1000\n"
      "    state: waiting for step > 32 since 2026-12-04 20:20:48 UTC (12s "
      "ago)\n"
      "    last step: 32, taken 2026-12-04 20:19:55 UTC (1m05s ago)\n"
      "    checkpoints: 5 taken, 4 stored; lag of step 24: 1m41s from its "
      "last write to its SAEs stored\n"
      "    refused: 1\n"
      "      step 4 /runs/pythia/checkpoint-4: step 4 is older than step 32, "
      "the latest taken\n"
      "    analysis: provisional round 2 over 4 checkpoints, running; every "
      "2 trained checkpoints (1 since the last)\n");
}

TEST_F(CliFollowTest, StatusSectionOfTrainingAndClosedJobs) {
  v1::Job& job = coordinator_->job;
  v1::FollowStatus& follow = *job.mutable_follow();
  follow.set_state(v1::FOLLOW_STATE_TRAINING);
  follow.clear_refused();
  follow.set_refresh_pending(true);
  std::string text = internal::FormatFollowStatus(job, Now());
  EXPECT_THAT(text, HasSubstr("    state: training\n"));
  EXPECT_THAT(text, Not(HasSubstr("refused")));
  EXPECT_THAT(text, HasSubstr("running; a refresh starts after it;"));

  follow.set_state(v1::FOLLOW_STATE_CLOSED);
  follow.set_close_reason("until_step 1000 reached");
  follow.set_closed_ms(kNowMs - 3'600'000);
  follow.set_final_round(true);
  follow.set_refresh_pending(false);
  follow.set_analysis_round(3);
  follow.set_analysed_checkpoints(5);
  follow.set_analysis_running(false);
  text = internal::FormatFollowStatus(job, Now());
  EXPECT_THAT(text, HasSubstr("    state: closed (until_step 1000 reached) at "
                              "2026-12-04 19:21:00 UTC (1h00m ago)\n"));
  EXPECT_THAT(text, HasSubstr("    analysis: final round 3 over 5 checkpoints, "
                              "done\n"));

  // Before the first checkpoint, following checkpoints pushed only.
  job.mutable_spec()->mutable_model()->mutable_follow()->clear_dir();
  job.mutable_spec()->mutable_model()->mutable_follow()->clear_until_step();
  follow.Clear();
  follow.set_state(v1::FOLLOW_STATE_WAITING);
  follow.set_last_step(-1);
  follow.set_waiting_since_ms(kNowMs - 5'000);
  EXPECT_EQ(internal::FormatFollowStatus(job, Now()),
            "  follow: checkpoints given by add-checkpoint only\n"
            "    state: waiting for the first checkpoint since 2026-12-04 "
            "20:20:55 UTC (5s ago)\n"
            "    last step: none taken yet\n"
            "    checkpoints: 0 taken, 0 stored\n"
            "    analysis: no round yet; every 2 trained checkpoints (0 since "
            "the last)\n");

  // A fixed-list job has no section.
  job.mutable_spec()->mutable_model()->clear_follow();
  job.clear_follow();
  EXPECT_EQ(internal::FormatFollowStatus(job, Now()), "");
}

TEST_F(CliFollowTest, StatusPrintsTheFollowSectionAndListMarksTheJob) {
  Result r = Run({"status", "job-000009"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 11u) << r.out;
  EXPECT_EQ(lines[0],
            "job-000009 running (following): 8/10 SAEs trained, 0 tokens");
  EXPECT_EQ(lines[3], "  hooks: 1:resid_pre");
  EXPECT_EQ(lines[4],
            "  follow: /runs/pythia (checkpoint-{step}, scanned every 10s), "
            "until step 1000");
  EXPECT_THAT(lines[5], StartsWith("    state: waiting for step > 32 since "
                                   "2026-12-04 20:20:48 UTC ("));
  EXPECT_EQ(lines[7],
            "    checkpoints: 5 taken, 4 stored; lag of step 24: 1m41s from "
            "its last write to its SAEs stored");

  coordinator_->list_job = true;
  r = Run({"list"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "job-000009 running (following): 8/10 SAEs trained, 0 tokens\n");
  coordinator_->job.mutable_follow()->set_state(v1::FOLLOW_STATE_CLOSED);
  r = Run({"list"});
  EXPECT_EQ(r.out,
            "job-000009 running (following closed): 8/10 SAEs trained, 0 "
            "tokens\n");
  coordinator_->job.set_state(v1::JOB_STATE_SUCCEEDED);
  r = Run({"list"});
  EXPECT_EQ(r.out, "job-000009 succeeded: 8/10 SAEs trained, 0 tokens\n");
}

TEST_F(CliFollowTest, ProgressLinesShowTheFollowState) {
  v1::JobUpdate update;
  *update.mutable_job() = coordinator_->job;
  EXPECT_EQ(internal::WatchLine(update, Now()),
            "checkpoints 8/10  tokens 0  state RUNNING  following: waiting "
            "for step > 32 since 12s, 5 checkpoints taken, 4 stored");
  EXPECT_EQ(internal::FollowProgress(coordinator_->job.follow(), Now()),
            "following: waiting for step > 32 since 12s, 5 checkpoints "
            "taken, 4 stored");
  update.mutable_job()->mutable_follow()->set_state(v1::FOLLOW_STATE_TRAINING);
  EXPECT_THAT(internal::WatchLine(update, Now()),
              HasSubstr("state RUNNING  following: training, 5 checkpoints "
                        "taken, 4 stored"));

  // watch and submit --wait print them until the job ends.
  coordinator_->updates.push_back(update);
  v1::JobUpdate& done = coordinator_->updates.emplace_back(update);
  done.mutable_job()->set_state(v1::JOB_STATE_SUCCEEDED);
  done.mutable_job()->mutable_follow()->set_state(v1::FOLLOW_STATE_CLOSED);
  done.mutable_job()->mutable_follow()->set_close_reason("closed by request");
  Result r = Run({"watch", "job-000009"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(Lines(r.err),
              ElementsAre("checkpoints 8/10  tokens 0  state RUNNING  "
                          "following: training, 5 checkpoints taken, 4 stored",
                          "checkpoints 8/10  tokens 0  state SUCCEEDED  "
                          "following: closed (closed by request), 5 "
                          "checkpoints taken, 4 stored"));

  TempDir dir;
  const std::string path = dir.path() + "/job.json";
  std::ofstream(path) << R"({"name": "live"})";
  coordinator_->accept_submit = true;
  r = Run({"submit", path, "--wait"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(Lines(r.err),
              ElementsAre("job-000009 running (following): 8/10 SAEs "
                          "trained, 0 tokens, following: training, 5 "
                          "checkpoints taken, 4 stored",
                          "job-000009 succeeded: 8/10 SAEs trained, 0 tokens, "
                          "following: closed (closed by request), 5 "
                          "checkpoints taken, 4 stored"));
}

TEST_F(CliFollowTest, CloseEndsFollowing) {
  Result r = Run({"close", "job-000009"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "job-000009 running: closed (closed by request), 5 checkpoints "
            "taken\n");
  EXPECT_THAT(coordinator_->calls, ElementsAre("CloseJob job-000009"));

  r = Run({"close", "job-000009", "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  v1::Job job = ParseProtoJson<v1::Job>(r.out);
  EXPECT_EQ(job.job_id(), "job-000009");
  EXPECT_EQ(job.follow().state(), v1::FOLLOW_STATE_CLOSED);

  coordinator_->follow_status = absl::FailedPreconditionError(
      "job job-000009 does not follow a training run");
  r = Run({"close", "job-000009"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "saetrack: FAILED_PRECONDITION: job job-000009 does not follow a "
            "training run\n");
  r = Run({"close", "job-000042"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err, "saetrack: NOT_FOUND: job job-000042: not found\n");
}

TEST_F(CliFollowTest, AddCheckpointSendsAnAbsolutePathAndSaysWhatHappened) {
  const std::string cwd = std::filesystem::current_path().string();
  Result r = Run({"add-checkpoint", "job-000009", "--step", "48", "--path",
                  "runs/./checkpoint-48/"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  const std::string absolute = cwd + "/runs/checkpoint-48/";
  EXPECT_THAT(coordinator_->calls,
              ElementsAre("AddCheckpoint job-000009 48 " + absolute));
  EXPECT_EQ(r.out, "job-000009: step 48 taken (" + absolute +
                       "), 5 checkpoints taken\n");

  coordinator_->checkpoint_created = false;
  r = Run({"add-checkpoint", "job-000009", "--step=48",
           "--path=/runs/pythia/checkpoint-48"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "job-000009: step 48 already there (/runs/pythia/checkpoint-48), "
            "5 checkpoints taken\n");

  r = Run({"add-checkpoint", "job-000009", "--step", "48", "--path", "/x",
           "--json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(ParseProtoJson<v1::Job>(r.out).follow().checkpoints_size(), 5);

  coordinator_->follow_status = absl::AlreadyExistsError(
      "step 48 is taken with path /runs/pythia/checkpoint-48");
  r = Run({"add-checkpoint", "job-000009", "--step", "48", "--path", "/y"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err,
            "saetrack: ALREADY_EXISTS: step 48 is taken with path "
            "/runs/pythia/checkpoint-48\n");
}

TEST_F(CliFollowTest, AddCheckpointWithoutStepOrPathIsAUsageError) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"add-checkpoint", "job-000009", "--path", "/x"},
           {"add-checkpoint", "job-000009", "--step", "4"},
           {"add-checkpoint", "--step", "4", "--path", "/x"},
           {"add-checkpoint", "job-000009", "--step", "x", "--path", "/x"},
           {"close"},
           {"refresh", "job-000009", "job-000010"}}) {
    Result r = Run(args);
    EXPECT_EQ(r.code, kExitUsage) << r.err;
    EXPECT_THAT(r.err, StartsWith("saetrack: "));
  }
  EXPECT_THAT(coordinator_->calls, IsEmpty());
}

TEST_F(CliFollowTest, RefreshSaysWhichRoundRuns) {
  Result r = Run({"refresh", "job-000009"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "job-000009: provisional analysis round 2 over 4 checkpoints "
            "running\n");
  EXPECT_THAT(coordinator_->calls, ElementsAre("RefreshAnalysis job-000009"));

  coordinator_->job.mutable_follow()->set_refresh_pending(true);
  r = Run({"refresh", "job-000009"});
  EXPECT_EQ(r.out,
            "job-000009: a provisional analysis round starts after round 2 "
            "(running)\n");

  r = Run({"refresh", "job-000009", "--json"});
  EXPECT_TRUE(ParseProtoJson<v1::Job>(r.out).follow().refresh_pending());

  coordinator_->follow_status =
      absl::FailedPreconditionError("job job-000009: nothing trained yet");
  r = Run({"refresh", "job-000009"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err,
            "saetrack: FAILED_PRECONDITION: job job-000009: nothing trained "
            "yet\n");
}

TEST_F(CliQueryTest, ProvisionalDriftAndFeatureSaySo) {
  SetDrift();
  Result r = Run({"drift", "job-000007", "--layer", "1"});
  EXPECT_THAT(r.out, Not(HasSubstr("provisional")));
  coordinator_->drift.set_provisional(true);
  coordinator_->drift.set_through_step(256);
  r = Run({"drift", "job-000007", "--layer", "1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines[1],
            "provisional: over checkpoints up to step 256; the final analysis "
            "runs after the job is closed");

  SetAnalysedHistory();
  r = Run({"feature", "job-000007", "--layer", "1", "--feature", "5"});
  EXPECT_THAT(r.out, Not(HasSubstr("provisional")));
  coordinator_->history.set_provisional(true);
  // The last analysed checkpoint is the one the analysis ran against.
  coordinator_->history.mutable_points(2)->set_analysed(false);
  r = Run({"feature", "job-000007", "--layer", "1", "--feature", "5"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  lines = Lines(r.out);
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines[1],
            "provisional: over checkpoints up to step 16; the final analysis "
            "runs after the job is closed");
}

TEST(ParseArgsTest, FlagsGoAnywhereAndTheLastValueWins) {
  absl::StatusOr<internal::Invocation> inv = internal::ParseArgs(
      {"--json", "--layer", "1", "features", "job-1", "--layer=2", "--limit",
       "5", "--coordinator", "host:1", "--limit=7", "--order", "drift"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "features");
  EXPECT_THAT(inv->positional, ElementsAre("job-1"));
  EXPECT_TRUE(inv->json);
  EXPECT_FALSE(inv->wait);
  EXPECT_EQ(inv->layer, 2);
  EXPECT_EQ(inv->limit, 7);
  EXPECT_EQ(inv->coordinator, "host:1");
  EXPECT_EQ(inv->order, v1::ListFeaturesRequest::FINAL_DRIFT);
  EXPECT_EQ(inv->kind, std::nullopt);

  inv = internal::ParseArgs({"feature", "job-1", "--id", "3", "--feature=4"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->feature_id, 4);
  inv = internal::ParseArgs({"status", "job-1"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->coordinator, "127.0.0.1:7070");
  EXPECT_EQ(inv->layer, std::nullopt);
  EXPECT_EQ(inv->timeout_s, 0);
}

TEST(ParseArgsTest, OnlyArgumentsOfTwoDashesAreFlags) {
  absl::StatusOr<internal::Invocation> inv = internal::ParseArgs(
      {"status", "--", "-x", "-h", "++", "[a,b]", "{}", "-5", "", "--json"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "status");
  EXPECT_THAT(inv->positional,
              ElementsAre("--", "-x", "-h", "++", "[a,b]", "{}", "-5", ""));
  EXPECT_TRUE(inv->json);
  inv = internal::ParseArgs({"-h"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "-h");
  EXPECT_FALSE(inv->help);
  inv = internal::ParseArgs({"--", "status"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "--");
  EXPECT_THAT(inv->positional, ElementsAre("status"));
}

TEST(ParseArgsTest, AFlagTakesTheNextArgumentWhateverItIs) {
  absl::StatusOr<internal::Invocation> inv = internal::ParseArgs(
      {"export", "--out", "--json", "--coordinator", "status", "--request_id",
       "--", "--page-token", "[a,b]", "--to", "--out=x", "job-1"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "export");
  EXPECT_THAT(inv->positional, ElementsAre("job-1"));
  EXPECT_EQ(inv->out_dir, "--json");
  EXPECT_FALSE(inv->json);
  EXPECT_EQ(inv->coordinator, "status");
  EXPECT_EQ(inv->request_id, "--");
  EXPECT_EQ(inv->page_token, "[a,b]");
  EXPECT_EQ(inv->to_dir, "--out=x");

  inv = internal::ParseArgs(
      {"export", "--out=", "--to={}", "--page-token=a=b", "--layer", "-1"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->out_dir, "");
  EXPECT_EQ(inv->to_dir, "{}");
  EXPECT_EQ(inv->page_token, "a=b");
  EXPECT_EQ(inv->layer, -1);
  EXPECT_THAT(inv->positional, IsEmpty());
}

TEST(ParseArgsTest, TheFirstArgumentThatIsNoFlagIsTheCommand) {
  absl::StatusOr<internal::Invocation> inv =
      internal::ParseArgs({"status", "list", "status"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "status");
  EXPECT_THAT(inv->positional, ElementsAre("list", "status"));
  inv = internal::ParseArgs({"frobnicate", "--json", "status", "job-1"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "frobnicate");
  EXPECT_THAT(inv->positional, ElementsAre("status", "job-1"));
  inv = internal::ParseArgs({"admin", "backup", "--to", "/backup"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "admin");
  EXPECT_THAT(inv->positional, ElementsAre("backup"));
  EXPECT_EQ(inv->to_dir, "/backup");
  inv = internal::ParseArgs({"help", "--wait"});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "help");
  EXPECT_TRUE(inv->wait);
  inv = internal::ParseArgs({});
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, "");
}

TEST(ParseArgsTest, SwitchesTakeNoValueInAnyForm) {
  for (const char* arg : {"--json=true", "--json=", "--json={}", "--json=1"}) {
    EXPECT_EQ(ParseError({"list", arg}), "flag --json takes no value") << arg;
  }
  EXPECT_EQ(ParseError({"--help=yes"}), "flag --help takes no value");
  EXPECT_EQ(ParseError({"submit", "job.json", "--wait=false"}),
            "flag --wait takes no value");
}

TEST(ParseArgsTest, TheFirstBadFlagFromTheLeftIsTheError) {
  EXPECT_EQ(ParseError({"status", "--bogus", "--layer", "x"}),
            "unknown flag --bogus");
  EXPECT_EQ(ParseError({"status", "--layer", "x", "--bogus"}),
            "flag --layer: 'x' is not an integer");
  EXPECT_EQ(ParseError({"--layer", "x", "status", "--layer", "1"}),
            "flag --layer: 'x' is not an integer");
  EXPECT_EQ(ParseError({"status", "--limit", "0", "--kind", "word"}),
            "flag --limit: 0 is not a page size (1 or more)");
  EXPECT_EQ(ParseError({"status", "--bogus", "--layer"}),
            "unknown flag --bogus");
  EXPECT_EQ(ParseError({"--help", "--frob=1", "status"}),
            "unknown flag --frob");
  EXPECT_EQ(ParseError({"frobnicate", "--timeout_s", "-1"}),
            "flag --timeout_s: '-1' is not a duration");
}

TEST(ParseArgsTest, FlagErrorsNameTheFlagAsWritten) {
  EXPECT_EQ(ParseError({"status", "job-1", "---x"}), "unknown flag ---x");
  EXPECT_EQ(ParseError({"status", "--=x"}), "unknown flag --");
  EXPECT_EQ(ParseError({"status", "--Json"}), "unknown flag --Json");
  EXPECT_EQ(ParseError({"status", "--timeout-s", "1"}),
            "unknown flag --timeout-s");
  EXPECT_EQ(ParseError({"status", "--layer"}), "flag --layer needs a value");
  EXPECT_EQ(ParseError({"feature", "job-1", "--id"}),
            "flag --id needs a value");
  EXPECT_EQ(ParseError({"feature", "job-1", "--id", "-3"}),
            "flag --id: -3 is not a feature id (0 or more)");
  EXPECT_EQ(ParseError({"feature", "job-1", "--layer="}),
            "flag --layer: '' is not an integer");
  EXPECT_EQ(ParseError({"features", "--min-freq={}"}),
            "flag --min-freq: '{}' is not a frequency in [0, 1]");
  EXPECT_EQ(ParseError({"features", "--order="}),
            "flag --order: '' is not one of id, formation, drift, frequency");
}

TEST(CliAdminTokenTest, CreatesATokenPrintedOnceAndStoredAsAHash) {
  const std::string dir = ::testing::TempDir() + "cli_admin_token";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string file = dir + "/tokens";
  Result r = RunSaetrack({"admin", "token", "create", "--role", "submitter",
                          "--name", "alice", "--token_file", file});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  ASSERT_EQ(r.out.size(), 65u) << r.out;  // 64 hex digits and a newline.
  const std::string token = r.out.substr(0, 64);
  EXPECT_THAT(r.err, HasSubstr("created submitter token 'alice' in " + file));
  std::ifstream in(file);
  std::string contents((std::istreambuf_iterator<char>(in)),
                       std::istreambuf_iterator<char>());
  EXPECT_EQ(contents,
            absl::StrCat("sha256:", Sha256Hex(token), " submitter alice\n"));

  Result json = RunSaetrack({"admin", "token", "create", "--role", "reader",
                             "--name", "dash", "--token_file", file, "--json"});
  ASSERT_EQ(json.code, kExitOk) << json.err;
  EXPECT_THAT(json.out, StartsWith("{\"name\":\"dash\",\"role\":\"reader\","
                                   "\"token\":\""));

  Result twice = RunSaetrack({"admin", "token", "create", "--role", "admin",
                              "--name", "alice", "--token_file", file});
  EXPECT_EQ(twice.code, kExitFailure);
  EXPECT_THAT(twice.err,
              HasSubstr("INVALID_ARGUMENT: name: 'alice' already has a token"));
  Result role = RunSaetrack({"admin", "token", "create", "--role", "root",
                             "--name", "bob", "--token_file", file});
  EXPECT_EQ(role.code, kExitFailure);
  EXPECT_THAT(role.err, HasSubstr("role: 'root' is not one of reader, "
                                  "submitter, worker, admin"));
  Result no_role = RunSaetrack(
      {"admin", "token", "create", "--name", "bob", "--token_file", file});
  EXPECT_EQ(no_role.code, kExitUsage);
  EXPECT_THAT(no_role.err, HasSubstr("admin token create needs --role"));
}

TEST(CliSecurityTest, UnreadableTokenOrCaFileFailsBeforeAnyCall) {
  Result token = RunSaetrack({"list", "--coordinator", "127.0.0.1:1",
                              "--token_file", "/nonexistent/t"});
  EXPECT_EQ(token.code, kExitFailure);
  EXPECT_THAT(token.err,
              HasSubstr("saetrack: token_file: cannot read /nonexistent/t"));
  Result ca = RunSaetrack(
      {"list", "--coordinator", "127.0.0.1:1", "--tls_ca", "/nonexistent/ca"});
  EXPECT_EQ(ca.code, kExitFailure);
  EXPECT_THAT(ca.err,
              HasSubstr("saetrack: tls_ca: cannot read /nonexistent/ca"));
  Result key = RunSaetrack({"list", "--tls_cert", "/x.pem"});
  EXPECT_EQ(key.code, kExitFailure);
  EXPECT_THAT(key.err, HasSubstr("tls_cert / tls_key"));
}

}  // namespace
}  // namespace saetrack::client
