#include "analysis/quality.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::analysis {
namespace {

using ::testing::HasSubstr;

ReferencePoint First(double match, double random, double cos_init) {
  ReferencePoint p;
  p.step = 0;
  p.chain_index = 0;
  p.match_median = match;
  p.random_median = random;
  p.chain_median_cos_init = cos_init;
  p.reference_median_cos_init = cos_init;
  return p;
}

TEST(QualityTest, SeedsThatShareNothingAreFlagged) {
  const std::vector<QualityVerdict> v =
      QualityVerdicts({First(0.36, 0.35, 0.97)});
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].check, "seed stability");
  EXPECT_FALSE(v[0].passed);
  EXPECT_THAT(v[0].verdict, HasSubstr("features are determined by the seed"));
  EXPECT_THAT(v[0].verdict, HasSubstr("0.36"));
  EXPECT_THAT(v[0].verdict, HasSubstr("0.35"));
  EXPECT_EQ(v[1].check, "distance from initialisation");
  EXPECT_FALSE(v[1].passed);
  EXPECT_THAT(v[1].verdict, HasSubstr("have not left their initialisation"));
}

TEST(QualityTest, LearntAndStableFeaturesPass) {
  const std::vector<QualityVerdict> v =
      QualityVerdicts({First(0.85, 0.30, 0.12)});
  ASSERT_EQ(v.size(), 2u);
  EXPECT_TRUE(v[0].passed);
  EXPECT_THAT(v[0].verdict, HasSubstr("reproducible across seeds"));
  EXPECT_TRUE(v[1].passed);
}

TEST(QualityTest, PartlyStableSaysWhereNoiseEnds) {
  const std::vector<QualityVerdict> v = QualityVerdicts({First(0.6, 0.3, 0.4)});
  EXPECT_FALSE(v[0].passed);
  EXPECT_THAT(v[0].verdict, HasSubstr("drift smaller than 0.40"));
  // The worse of the two from-scratch SAEs decides.
  ReferencePoint p = First(0.8, 0.3, 0.2);
  p.chain_median_cos_init = 0.7;
  const std::vector<QualityVerdict> w = QualityVerdicts({p});
  EXPECT_FALSE(w[1].passed);
  EXPECT_THAT(w[1].verdict, HasSubstr("0.70"));
}

TEST(QualityTest, ChainBehindIndependentIsUnderTrained) {
  ReferencePoint p;
  p.step = 512;
  p.chain_index = 5;
  p.chain_loss = 0.110;
  p.reference_loss = 0.100;
  p.reference_median_cos_init = 0.2;
  std::vector<QualityVerdict> v = QualityVerdicts({p});
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[1].check, "chain vs independent");
  EXPECT_EQ(v[1].step, 512);
  EXPECT_FALSE(v[1].passed);
  EXPECT_THAT(v[1].verdict, HasSubstr("under-trained"));
  EXPECT_THAT(v[1].verdict, HasSubstr("+10.0%"));
  EXPECT_THAT(v[1].verdict, HasSubstr("had not plateaued"));
  p.chain_loss = 0.104;
  p.chain_converged = true;
  v = QualityVerdicts({p});
  EXPECT_TRUE(v[1].passed);
  EXPECT_THAT(v[1].verdict, HasSubstr("keeps up"));
}

// The speed-up verdict: passed at >= 20x with the from-scratch schedule;
// every arm's tokens, ratio and L0 (or "did not get there") in the text.
TEST(QualityTest, SpeedupVerdictStatesBothArms) {
  ReferencePoint p;
  p.step = 512;
  p.chain_index = 5;
  p.chain_loss = 1.0;
  p.reference_loss = 1.0;
  RecurrenceSpeedup& s = p.speedup.emplace(
      SpeedupTarget({{0, 9.0}, {5'000'000, 0.5}}, 6.2, 0.02, 256));
  s.scratch_tokens = 2'000'000;
  s.same_lr.tokens = 250'000;
  s.same_lr.l0 = 7.5;
  const std::vector<QualityVerdict> v = QualityVerdicts({p});
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[2].check, "recurrence speed-up");
  EXPECT_EQ(v[2].step, 512);
  EXPECT_FALSE(v[2].passed);
  EXPECT_THAT(v[2].verdict, HasSubstr("helps, but less than the paper's"));
  EXPECT_THAT(v[2].verdict, HasSubstr("within 2%"));
  EXPECT_THAT(v[2].verdict, HasSubstr("it took 2.0M tokens, L0 6.2"));
  EXPECT_THAT(v[2].verdict, HasSubstr("took 250k tokens (L0 7.5), 8.0x fewer"));
  EXPECT_THAT(v[2].verdict,
              HasSubstr("lr/10 it did not get there within 5.0M tokens"));

  s.same_lr.tokens = 50'000;  // 40x
  s.slow_lr.tokens = 1'000'000;
  const std::vector<QualityVerdict> w = QualityVerdicts({p});
  EXPECT_TRUE(w[2].passed);
  EXPECT_THAT(w[2].verdict, HasSubstr("as the paper says"));
  EXPECT_THAT(w[2].verdict, HasSubstr("40.0x fewer"));
  EXPECT_THAT(w[2].verdict, HasSubstr("2.0x fewer"));

  s.same_lr.tokens.reset();
  const std::vector<QualityVerdict> x = QualityVerdicts({p});
  EXPECT_FALSE(x[2].passed);
  EXPECT_THAT(x[2].verdict, HasSubstr("does not converge faster"));
}

TEST(QualityTest, SpeedupTargetIsTheFinalLossPlusTolerance) {
  const RecurrenceSpeedup s = SpeedupTarget(
      {{0, 4.0}, {256, 1.0}, {512, 0.99}, {1024, 0.98}}, 3.0, 0.02, 256);
  EXPECT_DOUBLE_EQ(s.scratch_loss, 0.98);
  EXPECT_DOUBLE_EQ(s.target_loss, 0.98 * 1.02);
  // 0.99 <= 0.9996: the first point within 2% of the final loss.
  EXPECT_EQ(s.scratch_tokens, 512);
  EXPECT_EQ(FirstAtOrBelow(s.scratch_curve, 0.5), std::nullopt);
  EXPECT_EQ(FirstAtOrBelow(s.scratch_curve, 4.0), 0);
}

}  // namespace
}  // namespace saetrack::analysis
