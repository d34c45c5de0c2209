#include "tools/recurrence_report.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/sae/sae.h"
#include "format/json.h"
#include "format/saelens.h"

namespace saetrack::tools {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

RecurrencePair Pair(int64_t prev, int64_t step, int64_t scratch,
                    std::optional<int64_t> recurrent) {
  RecurrencePair p;
  p.prev_step = prev;
  p.step = step;
  p.result.target_fvu = 0.01;
  p.result.scratch_tokens = scratch;
  p.result.recurrent_tokens = recurrent;
  p.result.batch_tokens = 1024;
  return p;
}

TEST(DefaultStudyStepsTest, SecondMiddleAndLastInChainOrder) {
  EXPECT_THAT(DefaultStudySteps({0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512}),
              ElementsAre(1, 16, 512));
  EXPECT_THAT(DefaultStudySteps({512, 256, 128, 64}),
              ElementsAre(256, 128, 64));
  EXPECT_THAT(DefaultStudySteps({0, 8, 64}), ElementsAre(8, 64));
  EXPECT_THAT(DefaultStudySteps({0, 8}), ElementsAre(8));
  EXPECT_THAT(DefaultStudySteps({0}), IsEmpty());
}

TEST(RecurrenceReportTest, MedianCountsANeverAsZeroAndTheClaimNeedsAll) {
  RecurrenceReport report;
  report.pairs = {Pair(0, 1, 1'000'000, 20'000),  // 50x
                  Pair(1, 2, 1'000'000, 40'000),  // 25x
                  Pair(2, 4, 1'000'000, 0)};      // 0 tokens: one batch
  EXPECT_DOUBLE_EQ(report.MedianSpeedup(), 50);
  EXPECT_EQ(report.Never(), 0);
  EXPECT_TRUE(report.ClaimHolds());
  EXPECT_THAT(RecurrenceVerdict(report),
              HasSubstr("speed-up reproduces here: median 50.0x over 3"));

  report.pairs[2].result.recurrent_tokens.reset();
  EXPECT_DOUBLE_EQ(report.MedianSpeedup(), 25);
  EXPECT_EQ(report.Never(), 1);
  EXPECT_FALSE(report.ClaimHolds());
  EXPECT_EQ(RecurrenceVerdict(report),
            "the paper's >= 20x speed-up does NOT reproduce here: median "
            "25.0x over 3 checkpoints, >= 20x at step(s) 1, 2; 1 of 3 never "
            "reached the from-scratch FVU");
}

TEST(RecurrenceReportTest, TableAndJsonCarryTheSameNumbers) {
  RecurrenceReport report;
  report.job_id = "job-000001";
  report.layer = 1;
  report.site = "resid_pre";
  report.architecture = "relu_l1";
  report.sparsity = "l1 0.01";
  report.d_in = 64;
  report.d_sae = 512;
  report.batch_size = 1024;
  report.scratch_tokens = 1'000'000;
  report.job_tokens_later = 50'000;
  report.pairs = {Pair(8, 16, 1'000'000, 400'000),
                  Pair(256, 512, 1'000'000, std::nullopt)};
  report.pairs[0].job_fvu = 0.0208;
  report.pairs[0].job_tokens = 50'000;
  const std::string table = FormatRecurrenceReport(report);
  EXPECT_THAT(table, HasSubstr("     8     16   0.0100     1.00M    0.0000    "
                               "400.0k     2.5x   0.0208     50.0k\n"));
  EXPECT_THAT(table, HasSubstr("   256    512   0.0100     1.00M    0.0000     "
                               "never      <1x        -         -\n"));
  EXPECT_THAT(table, HasSubstr("does NOT reproduce here: median 1.2x over 2 "
                               "checkpoints, >= 20x at none; 1 of 2 never"));

  const auto json = format::ParseJson(RecurrenceReportJson(report));
  ASSERT_TRUE(json.ok()) << json.status();
  const format::JsonValue* pairs = json->Find("pairs");
  ASSERT_NE(pairs, nullptr);
  ASSERT_EQ(pairs->array().size(), 2u);
  EXPECT_DOUBLE_EQ(pairs->array()[0].Find("speedup")->number_value(), 2.5);
  EXPECT_TRUE(pairs->array()[1].Find("recurrent_tokens")->is_null());
  EXPECT_DOUBLE_EQ(json->Find("median_speedup")->number_value(), 1.25);
  EXPECT_FALSE(json->Find("holds")->bool_value());
}

// The SAELens files of an SAE with a zero encoder (so it reconstructs every
// activation as b_dec = 0), as QueryService.ExportSae serves them.
client::ExportedSae ZeroEncoderSae(int64_t step,
                                   const std::string& architecture,
                                   int64_t d_in, int64_t d_sae) {
  engine::SaeWeights w;
  w.W_enc = torch::zeros({d_in, d_sae});
  w.b_enc = torch::zeros({d_sae});
  torch::manual_seed(7);
  w.W_dec = torch::randn({d_sae, d_in});
  w.W_dec = w.W_dec / w.W_dec.norm(2, 1, true);
  w.b_dec = torch::zeros({d_in});
  format::SaelensConfig cfg;
  cfg.architecture = architecture;
  cfg.d_in = d_in;
  cfg.d_sae = d_sae;
  cfg.k = architecture == "topk" ? 8 : 0;
  cfg.model_name = "tiny";
  cfg.hook_name = format::HookName(1, "resid_pre");
  cfg.hook_layer = 1;
  cfg.checkpoint_step = step;
  client::ExportedSae exported;
  exported.step = step;
  exported.files[format::kSaelensConfigFile] = format::SaelensConfigToJson(cfg);
  exported.files[format::kSaelensWeightsFile] = engine::SaeToSafetensors(w);
  return exported;
}

// A client that serves one job through the public services only: its
// DownloadSae (WorkerService, worker-only) fails the test.
class PublicOnlyClient : public client::SaetrackClient {
 public:
  PublicOnlyClient(v1::Job job, client::ExportedSae sae)
      : job_(std::move(job)), sae_(std::move(sae)) {}

  absl::StatusOr<v1::SubmitJobResponse> SubmitJob(
      const v1::JobSpec& /*spec*/, const std::string& /*request_id*/) override {
    return absl::UnimplementedError("SubmitJob");
  }
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id) override {
    calls.push_back("GetJob " + job_id);
    if (job_id != job_.job_id()) return absl::NotFoundError(job_id);
    return job_;
  }
  absl::StatusOr<v1::ListJobsResponse> ListJobs(
      int /*page_size*/, const std::string& /*page_token*/) override {
    return absl::UnimplementedError("ListJobs");
  }
  absl::StatusOr<v1::GetCheckpointMetricsResponse> GetCheckpointMetrics(
      const std::string& job_id, int layer) override {
    calls.push_back(absl::StrCat("GetCheckpointMetrics ", job_id, " ", layer));
    v1::GetCheckpointMetricsResponse response;
    v1::CheckpointMetrics* m = response.add_checkpoints();
    m->set_layer(layer);
    m->set_step(8);
    m->set_chain_index(1);
    m->set_fvu(0.25);
    m->set_tokens_trained(256);
    return response;
  }
  absl::StatusOr<v1::FeatureHistory> GetFeatureHistory(
      const v1::GetFeatureHistoryRequest& /*request*/) override {
    return absl::UnimplementedError("GetFeatureHistory");
  }
  absl::StatusOr<std::string> DownloadSae(const std::string& job_id, int layer,
                                          int64_t step) override {
    calls.push_back(
        absl::StrCat("DownloadSae ", job_id, " ", layer, " ", step));
    ADD_FAILURE() << "a user tool called the worker-only DownloadSae";
    return absl::PermissionDeniedError("DownloadSae is for workers");
  }
  absl::StatusOr<client::ExportedSae> ExportSae(
      const std::string& job_id, int layer,
      std::optional<int64_t> step) override {
    calls.push_back(absl::StrCat(
        "ExportSae ", job_id, " ", layer, " ",
        step.has_value() ? absl::StrCat(*step) : std::string("final")));
    return sae_;
  }

  std::vector<std::string> calls;

 private:
  v1::Job job_;
  client::ExportedSae sae_;
};

// A job over the committed tiny GPT-NeoX (d_model 32, 3 layers, vocab 97):
// two checkpoints (steps 0 and 8, the same weights), layer 1 resid_pre,
// relu_l1 SAEs of d_sae 64, and a token file of its own.
class MeasureJobRecurrenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir =
        (std::filesystem::temp_directory_path() / "recurrence-test-XXXXXX")
            .string();
    ASSERT_NE(mkdtemp(dir.data()), nullptr) << errno;
    dir_ = dir;
    const std::string tokens_path = dir_ + "/tokens.bin";
    {
      std::ofstream out(tokens_path, std::ios::binary);
      uint32_t state = 12345;
      for (int i = 0; i < 4096; ++i) {
        state = state * 1664525u + 1013904223u;
        const uint16_t token = static_cast<uint16_t>((state >> 16) % 97);
        out.write(reinterpret_cast<const char*>(&token), sizeof(token));
      }
      ASSERT_TRUE(out.flush());
    }
    job_.set_job_id("job-000042");
    v1::JobSpec& spec = *job_.mutable_spec();
    for (const int64_t step : {0, 8}) {
      v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
      c->set_step(step);
      c->set_path(SAETRACK_TINY_MODEL_DIR);
    }
    spec.mutable_data()->set_tokens_path(tokens_path);
    spec.mutable_data()->set_token_dtype("uint16");
    spec.mutable_data()->set_context_length(16);
    v1::HookPoint* hook = spec.add_hooks();
    hook->set_layer(1);
    hook->set_site("resid_pre");
    v1::SaeConfig& sae = *spec.mutable_sae();
    sae.set_architecture("relu_l1");
    sae.set_d_sae(64);
    sae.set_l1_coefficient(1e-3);
    sae.set_lr_first(1e-3);
    sae.set_lr_later(1e-3);
    sae.set_batch_size(32);
    sae.set_seed(3);
    spec.mutable_schedule()->set_tokens_first(512);
    spec.mutable_schedule()->set_tokens_later(256);
    spec.mutable_schedule()->set_eval_tokens(256);
    options_.train_tokens = 512;
    options_.eval_every_tokens = 64;
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  v1::Job job_;
  RecurrenceReportOptions options_;
};

TEST_F(MeasureJobRecurrenceTest, ReadsThePreviousSaeThroughExportSae) {
  PublicOnlyClient client(job_, ZeroEncoderSae(0, "relu_l1", 32, 64));
  const absl::StatusOr<RecurrenceReport> report =
      MeasureJobRecurrence(client, "job-000042", options_, nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(client.calls, ElementsAre("GetJob job-000042",
                                        "GetCheckpointMetrics job-000042 1",
                                        "ExportSae job-000042 1 0"));
  EXPECT_THAT(client.calls,
              Not(::testing::Contains(::testing::StartsWith("DownloadSae"))));
  EXPECT_EQ(report->d_in, 32);
  EXPECT_EQ(report->d_sae, 64);
  EXPECT_EQ(report->architecture, "relu_l1");
  ASSERT_EQ(report->pairs.size(), 1u);
  EXPECT_EQ(report->pairs[0].prev_step, 0);
  EXPECT_EQ(report->pairs[0].step, 8);
  ASSERT_TRUE(report->pairs[0].job_fvu.has_value());
  EXPECT_DOUBLE_EQ(*report->pairs[0].job_fvu, 0.25);
  EXPECT_EQ(report->pairs[0].job_tokens, 256);
  // The served SAE, not some other one, initialised the recurrent run: its
  // zero encoder reconstructs every activation as 0, whose FVU is >= 1 (the
  // mean's is 1).
  EXPECT_GE(report->pairs[0].result.recurrent_init_fvu, 1.0);
}

TEST_F(MeasureJobRecurrenceTest, AnExportedSaeOfTheWrongShapeNamesTheStep) {
  PublicOnlyClient client(job_, ZeroEncoderSae(0, "relu_l1", 32, 48));
  const absl::StatusOr<RecurrenceReport> report =
      MeasureJobRecurrence(client, "job-000042", options_, nullptr);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(report.status().message(),
              HasSubstr("the SAE of job job-000042 layer 1 step 0 has d_sae "
                        "48; the job's SAEs have d_sae 64"));
}

TEST_F(MeasureJobRecurrenceTest, AnExportedSaeOfTheWrongWidthNamesTheStep) {
  job_.mutable_spec()->mutable_sae()->set_d_sae(0);
  job_.mutable_spec()->mutable_sae()->set_expansion_factor(2);
  PublicOnlyClient client(job_, ZeroEncoderSae(0, "relu_l1", 16, 64));
  const absl::StatusOr<RecurrenceReport> report =
      MeasureJobRecurrence(client, "job-000042", options_, nullptr);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(report.status().message(),
              HasSubstr("the SAE of job job-000042 layer 1 step 0 has d_in "
                        "16, d_sae 64; the job's SAEs of that layer have d_in "
                        "32, d_sae 64"));
}

TEST_F(MeasureJobRecurrenceTest,
       AnExportedSaeOfAnotherArchitectureNamesTheStep) {
  PublicOnlyClient client(job_, ZeroEncoderSae(0, "topk", 32, 64));
  const absl::StatusOr<RecurrenceReport> report =
      MeasureJobRecurrence(client, "job-000042", options_, nullptr);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(report.status().message(),
              HasSubstr("the SAE of job job-000042 layer 1 step 0 is a topk "
                        "SAE; the job trains relu_l1 SAEs"));
}

TEST_F(MeasureJobRecurrenceTest, AnExportWithoutWeightsIsDataLoss) {
  client::ExportedSae sae = ZeroEncoderSae(0, "relu_l1", 32, 64);
  sae.files.erase(format::kSaelensWeightsFile);
  PublicOnlyClient client(job_, sae);
  const absl::StatusOr<RecurrenceReport> report =
      MeasureJobRecurrence(client, "job-000042", options_, nullptr);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(report.status().message(),
              HasSubstr("export of the SAE of job job-000042 layer 1 step 0 "
                        "lacks sae_weights.safetensors"));
}

}  // namespace
}  // namespace saetrack::tools
