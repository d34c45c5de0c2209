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

}  // namespace
}  // namespace saetrack::analysis
