#include "analysis/drift.h"

#include <cmath>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "format/safetensors.h"

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
  EXPECT_NEAR(summary->phases->r_squared, 1.0, 1e-9);  // flat median
  const std::optional<PhaseFit> feature0 =
      FeaturePhases({0, 10, 100, 1000, 10000}, *drift, 0);
  ASSERT_TRUE(feature0.has_value());
  EXPECT_GT(feature0->slope1 + feature0->slope2 + feature0->slope3, 0);
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
