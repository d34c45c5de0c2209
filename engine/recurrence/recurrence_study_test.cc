#include "engine/recurrence/recurrence_study.h"

#include <torch/torch.h>

#include <cstdint>
#include <memory>
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

SpeedupOptions SmallOptions() {
  SpeedupOptions options;
  options.spec.architecture = "relu_l1";
  options.spec.l1_coefficient = 3e-3;
  options.d_sae = 128;
  options.arm.batch_size = 256;
  options.arm.max_tokens = 256 * 240;
  options.arm.trainer.lr = 3e-3;
  options.arm.trainer.warmup_steps = 10;
  options.arm.trainer.dead_window_tokens = 8192;
  options.arm.trainer.ghost_grads = true;
  options.seed = 7;
  return options;
}

// Points above the running minimum by more than `slack` (relative): a loose
// notion of "monotone".
int Rises(const analysis::LossCurve& curve, double slack) {
  int rises = 0;
  double best = curve.front().second;
  for (const auto& [tokens, loss] : curve) {
    if (loss > best * (1 + slack)) ++rises;
    best = std::min(best, loss);
  }
  return rises;
}

TEST(RecurrenceStudyTest, RecurrentInitialisationConvergesFaster) {
  const TwoCheckpoints data = MakeCheckpoints();
  const SpeedupOptions options = SmallOptions();
  const absl::StatusOr<SaeWeights> prev =
      TrainSaeFromScratch(data.previous_train, options);
  ASSERT_TRUE(prev.ok()) << prev.status();
  const absl::StatusOr<SpeedupStudy> study =
      MeasureSpeedup(*prev, data.train, data.held_out, options);
  ASSERT_TRUE(study.ok()) << study.status();
  const analysis::RecurrenceSpeedup& s = study->speedup;

  EXPECT_DOUBLE_EQ(s.tolerance, 0.02);
  EXPECT_DOUBLE_EQ(s.scratch_loss, s.scratch_curve.back().second);
  EXPECT_DOUBLE_EQ(s.target_loss, s.scratch_loss * 1.02);
  EXPECT_EQ(s.scratch_curve.front().first, 0);
  EXPECT_EQ(s.scratch_curve.back().first, options.arm.max_tokens);
  EXPECT_LT(s.scratch_curve.back().second,
            0.5 * s.scratch_curve.front().second);
  EXPECT_LE(Rises(s.scratch_curve, 0.05),
            static_cast<int>(s.scratch_curve.size()) / 10);
  EXPECT_LE(s.scratch_tokens, options.arm.max_tokens);
  EXPECT_GT(s.scratch_l0, 0);
  EXPECT_LT(s.scratch_l0, options.d_sae / 2);
  EXPECT_EQ(s.batch_tokens, 256);

  // The previous checkpoint's SAE starts much nearer, and with the same
  // schedule gets there in fewer tokens; it stops at its first evaluation at
  // or below the target.
  const analysis::SpeedupArm& same = s.same_lr;
  EXPECT_EQ(same.lr, 3e-3);
  EXPECT_LT(same.init_loss, 0.5 * s.scratch_curve.front().second);
  ASSERT_TRUE(same.tokens.has_value());
  EXPECT_LT(*same.tokens, s.scratch_tokens);
  EXPECT_GT(s.Speedup(same), 1);
  EXPECT_EQ(same.curve.back().first, *same.tokens);
  EXPECT_LE(same.curve.back().second, s.target_loss);
  for (size_t i = 0; i + 1 < same.curve.size(); ++i) {
    EXPECT_GT(same.curve[i].second, s.target_loss);
  }
  EXPECT_GT(same.l0, 0);
  EXPECT_DOUBLE_EQ(s.slow_lr.lr, 3e-4);
  EXPECT_EQ(study->scratch_sae.d_sae(), options.d_sae);
}

// Fairness: an arm started from exactly the from-scratch initialisation
// retraces the from-scratch curve point for point -- same schedule, dead
// handling, batches and order -- so its speed-up is exactly 1.
TEST(RecurrenceStudyTest, TheSameStartGivesTheSameCurve) {
  const TwoCheckpoints data = MakeCheckpoints();
  const SpeedupOptions options = SmallOptions();
  const SaeWeights scratch_init = InitSaeFromScratch(
      options.d_sae, data.train.narrow(0, 0, 4096), options.seed);
  const absl::StatusOr<SpeedupStudy> study =
      MeasureSpeedup(scratch_init, data.train, data.held_out, options);
  ASSERT_TRUE(study.ok()) << study.status();
  const analysis::RecurrenceSpeedup& s = study->speedup;
  ASSERT_TRUE(s.same_lr.tokens.has_value());
  EXPECT_EQ(*s.same_lr.tokens, s.scratch_tokens);
  EXPECT_DOUBLE_EQ(s.Speedup(s.same_lr), 1);
  ASSERT_LE(s.same_lr.curve.size(), s.scratch_curve.size());
  for (size_t i = 0; i < s.same_lr.curve.size(); ++i) {
    EXPECT_EQ(s.same_lr.curve[i].first, s.scratch_curve[i].first);
    EXPECT_NEAR(s.same_lr.curve[i].second, s.scratch_curve[i].second,
                1e-5 * s.scratch_curve[i].second);
  }
  // A tenth of the lr from the same start is slower, or never gets there.
  if (s.slow_lr.tokens.has_value()) {
    EXPECT_GT(*s.slow_lr.tokens, s.scratch_tokens);
  }
}

TEST(RecurrenceStudyTest, EvaluationPointsAreLogSpaced) {
  std::vector<int64_t> points;
  for (int64_t t = 0; t < 1024;) {
    t = NextEvaluationPoint(t, 256, 4);
    points.push_back(t);
  }
  EXPECT_EQ(points, (std::vector<int64_t>{256, 305, 363, 431, 512, 609, 725,
                                          862, 1024}));
  EXPECT_EQ(NextEvaluationPoint(300, 256, 4), 305);
  EXPECT_EQ(NextEvaluationPoint(305, 256, 4), 363);
  EXPECT_EQ(NextEvaluationPoint(0, 100, 1), 100);
  EXPECT_EQ(NextEvaluationPoint(100, 100, 1), 200);
}

TEST(RecurrenceStudyTest, SpeedupCountsAtLeastOneBatch) {
  analysis::RecurrenceSpeedup s;
  s.scratch_tokens = 40960;
  s.batch_tokens = 1024;
  analysis::SpeedupArm arm;
  EXPECT_EQ(s.Speedup(arm), 0);  // never reached
  arm.tokens = 0;                // already at the target before training
  EXPECT_DOUBLE_EQ(s.Speedup(arm), 40);
  arm.tokens = 4096;
  EXPECT_DOUBLE_EQ(s.Speedup(arm), 10);
}

TEST(RecurrenceStudyTest, TrainArmStopsOnAnAfterStepError) {
  const TwoCheckpoints data = MakeCheckpoints();
  const SpeedupOptions options = SmallOptions();
  absl::StatusOr<std::unique_ptr<Sae>> sae = MakeSae(
      options.spec,
      InitSaeFromScratch(options.d_sae, data.train.narrow(0, 0, 1024), 1));
  ASSERT_TRUE(sae.ok());
  int steps = 0;
  const absl::StatusOr<ArmRun> run = TrainArm(
      **sae, options.arm,
      [&]() -> absl::StatusOr<torch::Tensor> {
        return data.train.narrow(0, 0, 256);
      },
      data.held_out,
      [&](const SaeTrainer& trainer, const SaeLoss&) {
        ++steps;
        return trainer.steps() == 3 ? absl::CancelledError("stop")
                                    : absl::OkStatus();
      });
  EXPECT_EQ(run.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(steps, 3);
}

TEST(RecurrenceStudyTest, RejectsBadOptions) {
  const torch::Tensor train = torch::randn({64, 8});
  const torch::Tensor held_out = torch::randn({16, 8});
  SpeedupOptions base;
  base.d_sae = 16;
  base.arm.batch_size = 16;
  base.arm.max_tokens = 128;
  const SaeWeights prev = InitSaeFromScratch(16, train, 1);

  const auto expect_invalid = [&](const SpeedupOptions& options,
                                  const std::string& field) {
    const absl::StatusOr<SpeedupStudy> result =
        MeasureSpeedup(prev, train, held_out, options);
    ASSERT_FALSE(result.ok()) << field;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr(field));
  };
  SpeedupOptions options = base;
  options.arm.batch_size = 1;
  expect_invalid(options, "SpeedupOptions.arm.batch_size");
  options = base;
  options.arm.max_tokens = 0;
  expect_invalid(options, "SpeedupOptions.arm.max_tokens");
  options = base;
  options.arm.points_per_octave = 0;
  expect_invalid(options, "SpeedupOptions.arm.points_per_octave");
  options = base;
  options.arm.trainer.lr = 0;
  expect_invalid(options, "SpeedupOptions.arm.trainer.lr");
  options = base;
  options.arm.trainer.warmup_steps = -1;
  expect_invalid(options, "SpeedupOptions.arm.trainer.warmup_steps");
  options = base;
  options.tolerance = 1.5;
  expect_invalid(options, "SpeedupOptions.tolerance");
  options = base;
  options.slow_lr_factor = 0;
  expect_invalid(options, "SpeedupOptions.slow_lr_factor");
  options = base;
  options.d_sae = 32;  // prev_sae has 16
  expect_invalid(options, "SpeedupOptions.d_sae");
  options = base;
  options.spec.architecture = "topk";
  options.spec.k = 0;
  expect_invalid(options, "SpeedupOptions.spec.k");

  const absl::StatusOr<SpeedupStudy> wrong_width =
      MeasureSpeedup(prev, torch::randn({64, 4}), torch::randn({16, 4}), base);
  EXPECT_EQ(wrong_width.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TrainSaeFromScratch(train, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::engine
