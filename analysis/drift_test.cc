#include "analysis/drift.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::analysis {
namespace {

using ::testing::HasSubstr;

std::string Weights(const std::vector<float>& w_dec, int64_t rows, int64_t cols,
                    const char* name = "W_dec") {
  format::SafetensorsWriter writer;
  EXPECT_TRUE(writer.AddF32(name, {rows, cols}, w_dec.data()).ok());
  return writer.Serialize();
}

// Feature 0 turns from (1,0) to (0,1) in equal angle steps, feature 1 stays
// at (1,1) with changing length, feature 2 is zero at checkpoint 1.
std::vector<std::string> Chain() {
  const double pi = std::acos(-1.0);
  std::vector<std::string> chain;
  for (int t = 0; t < 5; ++t) {
    const double angle = pi / 2 * t / 4;
    std::vector<float> w = {static_cast<float>(std::cos(angle)),
                            static_cast<float>(std::sin(angle)),
                            static_cast<float>(t + 1),
                            static_cast<float>(t + 1),
                            t == 1 ? 0.0f : 1.0f,
                            0.0f};
    chain.push_back(Weights(w, 3, 2));
  }
  return chain;
}

TEST(DecoderDriftTest, CosinesToFinalAndPrevious) {
  const std::vector<std::string> chain = Chain();
  std::vector<int> reads;
  absl::StatusOr<DecoderDrift> drift =
      ComputeDecoderDrift(5, [&](int i) -> absl::StatusOr<std::string> {
        reads.push_back(i);
        return chain[i];
      });
  ASSERT_TRUE(drift.ok()) << drift.status();
  EXPECT_THAT(reads, ::testing::ElementsAre(4, 0, 1, 2, 3));  // final first
  const double pi = std::acos(-1.0);
  for (int t = 0; t < 5; ++t) {
    EXPECT_NEAR(drift->cos_to_final[t][0], std::cos(pi / 2 * (4 - t) / 4),
                1e-6);
    EXPECT_NEAR(drift->cos_to_final[t][1], 1.0, 1e-6);  // length ignored
    if (t == 0) {
      EXPECT_TRUE(std::isnan(drift->cos_to_previous[t][0]));
    } else {
      EXPECT_NEAR(drift->cos_to_previous[t][0], std::cos(pi / 8), 1e-6);
    }
  }
  EXPECT_EQ(drift->cos_to_final[1][2], 0.0f);  // zero row
  EXPECT_EQ(drift->cos_to_previous[2][2], 0.0f);
  EXPECT_NEAR(drift->cos_to_final[3][2], 1.0, 1e-6);

  absl::StatusOr<DriftSummary> summary =
      SummariseDrift({0, 10, 100, 1000, 10000}, *drift);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(summary->to_final.size(), 5u);
  // Median of three features at checkpoint 0: {cos(pi/2)=0, 1, 1} -> 1.
  EXPECT_NEAR(summary->to_final[0].q50, 1.0, 1e-6);
  EXPECT_NEAR(summary->to_final[0].q10, 0.2, 1e-6);  // 0 + 0.2 * (1 - 0)
  EXPECT_TRUE(std::isnan(summary->to_previous[0].q50));
  ASSERT_TRUE(summary->phases.has_value());
  // The median is 1 but at checkpoint 1 (feature 2 is zero there): a dip
  // that two segments follow better than a line. With five checkpoints
  // three segments do not compete.
  EXPECT_NEAR(summary->to_final[1].q50, std::cos(pi * 3 / 8), 1e-6);
  EXPECT_NEAR(summary->to_final[2].q50, 1.0, 1e-6);
  EXPECT_EQ(summary->phases->points, 5);
  ASSERT_TRUE(summary->phases->fits[1].has_value());
  EXPECT_FALSE(summary->phases->fits[2].has_value());
  EXPECT_EQ(summary->phases->chosen, 2);
  EXPECT_LT(summary->phases->fits[1]->bic, summary->phases->fits[0]->bic);
  const std::optional<PhaseModels> feature0 =
      FeaturePhases({0, 10, 100, 1000, 10000}, *drift, 0);
  ASSERT_TRUE(feature0.has_value());
  EXPECT_GT(feature0->best().slope1, 0);
}

// Feature 0's cos to the final direction follows two segments in
// log(step + 1) (rising fast, bending at step 255 to nearly flat), feature 1
// one segment; 3 checkpoints are too few for a phase fit.
TEST(DecoderDriftTest, PhasesReportTheSegmentsTheDataSupport) {
  std::vector<int64_t> steps;
  for (int64_t s = 1; s <= 65536; s *= 2) steps.push_back(s - 1);  // 17
  const double bend = std::log(256.0);
  std::vector<std::string> chain;
  for (int64_t step : steps) {
    const double x = std::log(static_cast<double>(step) + 1);
    const double end = std::log(65536.0);
    const double cos0 = 1 - 0.08 * (bend - std::min(x, bend)) -
                        0.002 * (end - std::max(x, bend));
    const double cos1 = 0.5 + 0.5 * x / end;
    const auto direction = [](double c) {
      return std::pair<float, float>(static_cast<float>(c),
                                     static_cast<float>(std::sqrt(1 - c * c)));
    };
    const auto [a0, b0] = direction(cos0);
    const auto [a1, b1] = direction(cos1);
    chain.push_back(Weights({a0, b0, a1, b1}, 2, 2));
  }
  const int n = static_cast<int>(steps.size());
  absl::StatusOr<DecoderDrift> drift = ComputeDecoderDrift(
      n, [&](int i) -> absl::StatusOr<std::string> { return chain[i]; });
  ASSERT_TRUE(drift.ok()) << drift.status();

  const std::optional<PhaseModels> bent = FeaturePhases(steps, *drift, 0);
  ASSERT_TRUE(bent.has_value());
  ASSERT_TRUE(bent->fits[2].has_value());
  EXPECT_EQ(bent->chosen, 2);
  EXPECT_NEAR(bent->best().breakpoint1, bend, 0.35);
  EXPECT_NEAR(bent->best().slope1, 0.08, 0.005);
  EXPECT_NEAR(bent->best().slope2, 0.002, 0.001);
  const std::optional<PhaseModels> straight = FeaturePhases(steps, *drift, 1);
  ASSERT_TRUE(straight.has_value());
  EXPECT_EQ(straight->chosen, 1);
  EXPECT_NEAR(straight->best().slope1, 0.5 / std::log(65536.0), 1e-6);

  DecoderDrift three = *drift;
  three.cos_to_final.resize(3);
  three.cos_to_previous.resize(3);
  const std::vector<int64_t> first3(steps.begin(), steps.begin() + 3);
  EXPECT_FALSE(FeaturePhases(first3, three, 0).has_value());
  absl::StatusOr<DriftSummary> summary = SummariseDrift(first3, three);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_FALSE(summary->phases.has_value());
}

TEST(DecoderDriftTest, ErrorsNameTheCheckpoint) {
  std::vector<std::string> chain = Chain();
  chain[2] = Weights(std::vector<float>(8, 1.0f), 4, 2);
  auto source = [&](int i) -> absl::StatusOr<std::string> { return chain[i]; };
  absl::StatusOr<DecoderDrift> drift = ComputeDecoderDrift(5, source);
  EXPECT_EQ(drift.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(drift.status().message()),
              HasSubstr("checkpoint 2: W_dec is [4, 2], the final "
                        "checkpoint's is [3, 2]"));
  chain[2] = Weights(std::vector<float>(6, 1.0f), 3, 2, "W_enc");
  EXPECT_THAT(std::string(ComputeDecoderDrift(5, source).status().message()),
              HasSubstr("checkpoint 2: no F32 W_dec"));
  chain[2] = "junk";
  EXPECT_EQ(ComputeDecoderDrift(5, source).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ComputeDecoderDrift(5,
                                [](int) -> absl::StatusOr<std::string> {
                                  return absl::NotFoundError("no SAE");
                                })
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  DecoderDrift empty;
  EXPECT_FALSE(SummariseDrift({1}, empty).ok());
}

}  // namespace
}  // namespace saetrack::analysis
