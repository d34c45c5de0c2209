#include "engine/recurrence/recurrence_study.h"

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/internal/reference_math.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

torch::Tensor NormaliseRows(const torch::Tensor& m) {
  return m / m.norm(2, 1, true);
}

// Two "checkpoints": the second's feature directions are the first's,
// nudged by a small random drift, as between neighbouring LM checkpoints.
struct TwoCheckpoints {
  torch::Tensor previous_train;
  torch::Tensor train;
  torch::Tensor held_out;
};

TwoCheckpoints MakeCheckpoints() {
  constexpr int64_t kFeatures = 48;
  constexpr int64_t kDim = 32;
  const torch::Tensor before =
      reference::RandomUnitDirections(kFeatures, kDim, 1);
  at::Generator generator = at::detail::createCPUGenerator(2);
  const torch::Tensor after = NormaliseRows(
      before + 0.15 *
                   torch::randn({kFeatures, kDim}, generator, torch::kFloat32) /
                   std::sqrt(static_cast<double>(kDim)));
  return {reference::SparseCombinations(before, 8192, 3),
          reference::SparseCombinations(after, 8192, 4),
          reference::SparseCombinations(after, 2048, 5)};
}

TokensToFvuOptions SmallOptions() {
  TokensToFvuOptions options;
  options.spec.architecture = "relu_l1";
  options.spec.l1_coefficient = 3e-3;
  options.d_sae = 128;
  options.batch_size = 256;
  options.lr_scratch = 3e-3;
  options.warmup_scratch = 10;
  options.lr_recurrent = 3e-4;
  options.warmup_recurrent = 2;
  options.scratch_tokens = 256 * 240;
  options.eval_every_tokens = 256 * 4;
  options.seed = 7;
  return options;
}

// Number of points that rise above the running minimum by more than `slack`
// (relative): a loose notion of "monotone".
int Rises(const std::vector<std::pair<int64_t, double>>& curve, double slack) {
  int rises = 0;
  double best = curve.front().second;
  for (const auto& [tokens, fvu] : curve) {
    if (fvu > best * (1 + slack)) ++rises;
    best = std::min(best, fvu);
  }
  return rises;
}

TEST(RecurrenceStudyTest, RecurrentInitialisationConvergesFaster) {
  const TwoCheckpoints data = MakeCheckpoints();
  const TokensToFvuOptions options = SmallOptions();
  const absl::StatusOr<SaeWeights> prev =
      TrainSaeFromScratch(data.previous_train, options);
  ASSERT_TRUE(prev.ok()) << prev.status();
  TokensToFvuOptions full = options;
  full.full_recurrent_curve = true;
  const absl::StatusOr<TokensToFvuResult> result =
      MeasureTokensToFvu(*prev, data.train, data.held_out, full);
  ASSERT_TRUE(result.ok()) << result.status();

  // The scratch SAE learns something real, starting far from it.
  EXPECT_LT(result->target_fvu, 0.3);
  EXPECT_GT(result->scratch_init_fvu, 0.9);
  EXPECT_GT(result->scratch_l0, 0);
  EXPECT_LT(result->scratch_l0, options.d_sae / 2);
  // The previous SAE is already close on the drifted data and gets to the
  // target well before the scratch SAE.
  EXPECT_LT(result->recurrent_init_fvu, result->scratch_init_fvu / 2);
  ASSERT_TRUE(result->recurrent_tokens.has_value());
  EXPECT_LT(*result->recurrent_tokens, result->scratch_tokens);
  EXPECT_GT(result->speedup(), 1.0);
  EXPECT_GT(result->recurrent_l0, 0);

  // Curves: from 0 to the budget, on the evaluation grid, mostly falling.
  for (const auto* curve : {&result->scratch_curve, &result->recurrent_curve}) {
    ASSERT_GE(curve->size(), 3u);
    EXPECT_EQ(curve->front().first, 0);
    EXPECT_EQ(curve->back().first, options.scratch_tokens);
    EXPECT_LT(curve->back().second, curve->front().second);
    EXPECT_LE(Rises(*curve, 0.05), static_cast<int>(curve->size()) / 10);
  }
  EXPECT_EQ(result->scratch_curve.size(),
            static_cast<size_t>(
                options.scratch_tokens / options.eval_every_tokens + 1));
  EXPECT_DOUBLE_EQ(result->scratch_curve.back().second, result->target_fvu);
  EXPECT_EQ(result->scratch_curve.front().second, result->scratch_init_fvu);
  EXPECT_EQ(result->recurrent_curve.front().second, result->recurrent_init_fvu);
  EXPECT_EQ(result->scratch_sae.d_sae(), options.d_sae);
}

TEST(RecurrenceStudyTest, StopsTheRecurrentRunAtTheTarget) {
  const TwoCheckpoints data = MakeCheckpoints();
  TokensToFvuOptions options = SmallOptions();
  options.scratch_tokens = 256 * 60;
  const absl::StatusOr<SaeWeights> prev =
      TrainSaeFromScratch(data.previous_train, options);
  ASSERT_TRUE(prev.ok()) << prev.status();
  const absl::StatusOr<TokensToFvuResult> result =
      MeasureTokensToFvu(*prev, data.train, data.held_out, options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->recurrent_tokens.has_value());
  EXPECT_EQ(result->recurrent_curve.back().first, *result->recurrent_tokens);
  EXPECT_LE(result->recurrent_curve.back().second, result->target_fvu);
  for (size_t i = 0; i + 1 < result->recurrent_curve.size(); ++i) {
    EXPECT_GT(result->recurrent_curve[i].second, result->target_fvu);
  }
}

TEST(RecurrenceStudyTest, SpeedupCountsAtLeastOneBatch) {
  TokensToFvuResult result;
  result.scratch_tokens = 10240;
  result.batch_tokens = 256;
  EXPECT_EQ(result.speedup(), 0);  // never reached
  result.recurrent_tokens = 0;
  EXPECT_DOUBLE_EQ(result.speedup(), 40);
  result.recurrent_tokens = 1024;
  EXPECT_DOUBLE_EQ(result.speedup(), 10);
}

TEST(RecurrenceStudyTest, RejectsBadOptions) {
  const torch::Tensor train = torch::randn({64, 8});
  const torch::Tensor held_out = torch::randn({16, 8});
  TokensToFvuOptions base;
  base.d_sae = 16;
  base.batch_size = 16;
  base.scratch_tokens = 128;
  base.eval_every_tokens = 32;
  const SaeWeights prev = InitSaeFromScratch(16, train, 1);

  const auto expect_invalid = [&](const TokensToFvuOptions& options,
                                  const std::string& field) {
    const absl::StatusOr<TokensToFvuResult> result =
        MeasureTokensToFvu(prev, train, held_out, options);
    ASSERT_FALSE(result.ok()) << field;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr(field));
  };
  TokensToFvuOptions options = base;
  options.batch_size = 1;
  expect_invalid(options, "TokensToFvuOptions.batch_size");
  options = base;
  options.scratch_tokens = 0;
  expect_invalid(options, "TokensToFvuOptions.scratch_tokens");
  options = base;
  options.eval_every_tokens = -5;
  expect_invalid(options, "TokensToFvuOptions.eval_every_tokens");
  options = base;
  options.lr_recurrent = 0;
  expect_invalid(options, "TokensToFvuOptions.lr_recurrent");
  options = base;
  options.warmup_scratch = -1;
  expect_invalid(options, "TokensToFvuOptions.warmup_scratch");
  options = base;
  options.d_sae = 32;  // prev_sae has 16
  expect_invalid(options, "TokensToFvuOptions.d_sae");
  options = base;
  options.spec.architecture = "topk";
  options.spec.k = 0;
  expect_invalid(options, "TokensToFvuOptions.spec.k");

  const absl::StatusOr<TokensToFvuResult> wrong_width = MeasureTokensToFvu(
      prev, torch::randn({64, 4}), torch::randn({16, 4}), base);
  EXPECT_EQ(wrong_width.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TrainSaeFromScratch(train, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::engine
