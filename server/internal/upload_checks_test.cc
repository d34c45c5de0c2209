#include "server/internal/upload_checks.h"

#include <cmath>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::server {
namespace {

using ::testing::HasSubstr;

constexpr int kDSae = 4;
constexpr int kTopK = 2;

UploadLease Lease() {
  UploadLease lease;
  lease.layer = 1;
  lease.step = 100;
  lease.chain_index = 2;
  lease.d_sae = kDSae;
  lease.top_k = kTopK;
  return lease;
}

v1::CheckpointMetrics GoodMetrics() {
  v1::CheckpointMetrics m;
  m.set_tokens_trained(4096);
  m.set_fvu(1e-9);  // Implausibly good, but a number an SAE could report.
  m.set_mse(0.5);
  m.set_l0(2.5);
  m.set_dead_fraction(0.25);
  m.set_d_sae(kDSae);
  m.set_median_decoder_cos_init(0.97);
  m.mutable_lm()->set_loss_recovered(-0.3);  // Worse than ablation: allowed.
  m.add_density_histogram(1);
  return m;
}

void ExpectRefused(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field + ":")) << s;
}

TEST(CheckCheckpointMetricsTest, AcceptsPlausibleMetrics) {
  EXPECT_TRUE(CheckCheckpointMetrics(GoodMetrics(), Lease()).ok());
}

TEST(CheckCheckpointMetricsTest, RefusesNegativeCountsAndFractions) {
  v1::CheckpointMetrics m = GoodMetrics();
  m.set_tokens_trained(-999999999);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.tokens_trained");
  m = GoodMetrics();
  m.set_dead_fraction(-5);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.dead_fraction");
  m = GoodMetrics();
  m.set_dead_fraction(1.5);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.dead_fraction");
  m = GoodMetrics();
  m.set_fvu(-1);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.fvu");
  m = GoodMetrics();
  m.set_density_histogram(0, -3);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()),
                "metrics.density_histogram[0]");
  m = GoodMetrics();
  m.set_l0(kDSae + 1);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.l0");
}

TEST(CheckCheckpointMetricsTest, RefusesNonFiniteValuesAnywhere) {
  v1::CheckpointMetrics m = GoodMetrics();
  m.set_mse(std::nan(""));
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.mse");
  m = GoodMetrics();
  m.mutable_lm()->set_loss_recovered(std::numeric_limits<double>::infinity());
  ExpectRefused(CheckCheckpointMetrics(m, Lease()),
                "metrics.lm.loss_recovered");
  m = GoodMetrics();
  m.mutable_reference()->mutable_speedup()->add_scratch_curve()->set_loss(
      std::nan(""));
  ExpectRefused(CheckCheckpointMetrics(m, Lease()),
                "metrics.reference.speedup.scratch_curve[0].loss");
}

TEST(CheckCheckpointMetricsTest, RefusesAnotherLayerStepOrWidth) {
  v1::CheckpointMetrics m = GoodMetrics();
  m.set_layer(3);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.layer");
  m = GoodMetrics();
  m.set_step(7);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.step");
  m = GoodMetrics();
  m.set_d_sae(8);
  ExpectRefused(CheckCheckpointMetrics(m, Lease()), "metrics.d_sae");
}

v1::FeatureStatsBlock GoodStats() {
  v1::FeatureStatsBlock stats;
  for (int i = 0; i < kDSae; ++i) {
    stats.add_frequency(0.1f);
    stats.add_mean_activation(0.5f);
    stats.add_max_activation(2.0f);
    stats.add_encoder_norm(1.0f);
    stats.add_decoder_cos_prev(i == 0 ? std::nanf("") : 0.9f);
  }
  return stats;
}

TEST(CheckFeatureStatsTest, RangesAndLengths) {
  EXPECT_TRUE(CheckFeatureStats(GoodStats(), kDSae).ok());
  v1::FeatureStatsBlock stats = GoodStats();
  stats.set_frequency(2, 1.5f);
  ExpectRefused(CheckFeatureStats(stats, kDSae), "FEATURE_STATS.frequency[2]");
  stats = GoodStats();
  stats.set_max_activation(1, std::numeric_limits<float>::infinity());
  ExpectRefused(CheckFeatureStats(stats, kDSae),
                "FEATURE_STATS.max_activation[1]");
  stats = GoodStats();
  stats.set_decoder_cos_prev(3, 7.0f);
  ExpectRefused(CheckFeatureStats(stats, kDSae),
                "FEATURE_STATS.decoder_cos_prev[3]");
  stats = GoodStats();
  stats.add_encoder_norm(1.0f);
  ExpectRefused(CheckFeatureStats(stats, kDSae), "FEATURE_STATS.encoder_norm");
}

v1::JobSpec Spec() {
  v1::JobSpec spec;
  spec.mutable_data()->set_context_length(8);
  spec.mutable_analysis()->set_analysis_tokens(30);  // 4 contexts: 32 rows.
  spec.mutable_analysis()->set_top_k(kTopK);
  return spec;
}

v1::FeatureAnalysisBlock GoodAnalysis() {
  v1::FeatureAnalysisBlock block;
  block.set_analysis_positions(32);
  block.set_top_k(kTopK);
  for (int i = 0; i < kDSae; ++i) {
    block.add_frequency(0.2f);
    block.add_mean_activation(0.1f);
    block.add_max_activation(1.0f);
    block.add_progress_activation(std::nanf(""));
    block.add_progress_feature(0.1f);
    for (int j = 0; j < kTopK; ++j) {
      block.add_top_positions(j == 0 ? 31 : -1);
      block.add_top_values(j == 0 ? 1.0f : 0.0f);
      block.add_top_tokens(j == 0 ? 17 : -1);
    }
  }
  return block;
}

TEST(CheckFeatureAnalysisTest, PositionsStayInTheAnalysisSet) {
  EXPECT_TRUE(CheckFeatureAnalysis(GoodAnalysis(), Lease(), Spec()).ok());
  v1::FeatureAnalysisBlock block = GoodAnalysis();
  block.set_top_positions(2, 32);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), Spec()),
                "FEATURE_ANALYSIS.top_positions[2]");
  block = GoodAnalysis();
  block.set_top_positions(0, -7);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), Spec()),
                "FEATURE_ANALYSIS.top_positions[0]");
  // A block claiming a larger analysis set than the spec's, to point
  // further into the token file.
  block = GoodAnalysis();
  block.set_analysis_positions(1 << 30);
  block.set_top_positions(0, 1 << 29);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), Spec()),
                "FEATURE_ANALYSIS.analysis_positions");
  block = GoodAnalysis();
  block.set_frequency(0, -0.5f);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), Spec()),
                "FEATURE_ANALYSIS.frequency[0]");
  block = GoodAnalysis();
  block.set_top_k(3);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), Spec()),
                "FEATURE_ANALYSIS.top_k");
}

// GoodAnalysis with logit effects of k = 2 per feature.
v1::FeatureAnalysisBlock WithLogitEffects() {
  v1::FeatureAnalysisBlock block = GoodAnalysis();
  block.set_logit_effects_k(2);
  for (int i = 0; i < kDSae; ++i) {
    for (float v : {2.0f, 1.5f}) {
      block.add_promoted_tokens(100 + i);
      block.add_promoted_values(v);
      block.add_suppressed_tokens(200 + i);
      block.add_suppressed_values(-v);
    }
  }
  return block;
}

v1::JobSpec SpecWithLogitEffects() {
  v1::JobSpec spec = Spec();
  spec.mutable_analysis()->set_logit_effects_k(2);
  return spec;
}

TEST(CheckFeatureAnalysisTest, LogitEffects) {
  const v1::JobSpec spec = SpecWithLogitEffects();
  EXPECT_TRUE(CheckFeatureAnalysis(WithLogitEffects(), Lease(), spec).ok());
  // Absent (a worker that does not compute them) is accepted.
  EXPECT_TRUE(CheckFeatureAnalysis(GoodAnalysis(), Lease(), spec).ok());
  // More than the spec asked for.
  ExpectRefused(CheckFeatureAnalysis(WithLogitEffects(), Lease(), Spec()),
                "FEATURE_ANALYSIS.logit_effects_k");
  v1::FeatureAnalysisBlock block = WithLogitEffects();
  block.set_promoted_tokens(3, -1);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), spec),
                "FEATURE_ANALYSIS.promoted_tokens[3]");
  block = WithLogitEffects();
  block.set_suppressed_tokens(5, 1 << 24);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), spec),
                "FEATURE_ANALYSIS.suppressed_tokens[5]");
  block = WithLogitEffects();
  block.set_promoted_values(4, std::nanf(""));
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), spec),
                "FEATURE_ANALYSIS.promoted_values[4]");
  block = WithLogitEffects();
  block.set_suppressed_values(0, std::numeric_limits<float>::infinity());
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), spec),
                "FEATURE_ANALYSIS.suppressed_values[0]");
  block = WithLogitEffects();
  block.mutable_suppressed_tokens()->RemoveLast();
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), spec),
                "FEATURE_ANALYSIS.suppressed_tokens");
  // Out of order within a feature (entry 3 is feature 1's second).
  block = WithLogitEffects();
  block.set_promoted_values(3, 9.0f);
  ExpectRefused(CheckFeatureAnalysis(block, Lease(), spec),
                "FEATURE_ANALYSIS.promoted_values[3]");
}

TEST(CheckSaeWeightsHeaderTest, ShapesMatchTheSpec) {
  const std::string good =
      R"({"W_enc":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]},)"
      R"("b_enc":{"dtype":"F32","shape":[4],"data_offsets":[48,64]},)"
      R"("W_dec":{"dtype":"F32","shape":[4,3],"data_offsets":[64,112]},)"
      R"("b_dec":{"dtype":"F32","shape":[3],"data_offsets":[112,124]}})";
  EXPECT_TRUE(CheckSaeWeightsHeader(good, kDSae, 0).ok());
  EXPECT_TRUE(CheckSaeWeightsHeader(good, kDSae, 3).ok());
  ExpectRefused(CheckSaeWeightsHeader(good, kDSae, 5), "SAE_WEIGHTS.W_enc");
  ExpectRefused(CheckSaeWeightsHeader(good, 8, 0), "SAE_WEIGHTS.W_enc");
  const std::string bad_dec =
      R"({"W_enc":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]},)"
      R"("b_enc":{"dtype":"F32","shape":[4],"data_offsets":[48,64]},)"
      R"("W_dec":{"dtype":"F32","shape":[4,2],"data_offsets":[64,96]},)"
      R"("b_dec":{"dtype":"F32","shape":[3],"data_offsets":[96,108]}})";
  ExpectRefused(CheckSaeWeightsHeader(bad_dec, kDSae, 0), "SAE_WEIGHTS.W_dec");
}

}  // namespace
}  // namespace saetrack::server
