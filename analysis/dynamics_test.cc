#include "analysis/dynamics.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::analysis {
namespace {

using ::testing::HasSubstr;

// y on a known continuous three-segment curve over log(step + 1) at Pythia's
// checkpoint steps, plus Gaussian noise.
struct Curve {
  std::vector<double> x, y;
};
Curve ThreeSegments(double b1, double b2, double s1, double s2, double s3,
                    double noise, unsigned seed) {
  std::vector<int64_t> steps = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  for (int64_t s = 1000; s <= 143000; s += 1000) steps.push_back(s);
  Curve c;
  c.x = LogSteps(steps);
  std::mt19937 rng(seed);
  std::normal_distribution<double> gaussian(0, noise);
  for (double x : c.x) {
    const double y = 0.1 + s1 * x + (s2 - s1) * std::max(0.0, x - b1) +
                     (s3 - s2) * std::max(0.0, x - b2);
    c.y.push_back(y + gaussian(rng));
  }
  return c;
}

TEST(PhaseFitTest, RecoversKnownBreakpointsFromNoisyCurves) {
  // Breakpoints at log(step+1) = 2.5 (step ~11) and 8.0 (step ~3000):
  // fast initial drift, slow middle, near-flat end.
  for (unsigned seed = 1; seed <= 5; ++seed) {
    const Curve c = ThreeSegments(2.5, 8.0, 0.20, 0.05, 0.004, 0.01, seed);
    absl::StatusOr<PhaseFit> fit = FitThreePhases(c.x, c.y);
    ASSERT_TRUE(fit.ok()) << fit.status();
    EXPECT_NEAR(fit->breakpoint1, 2.5, 0.4) << "seed " << seed;
    EXPECT_NEAR(fit->breakpoint2, 8.0, 0.6) << "seed " << seed;
    EXPECT_NEAR(fit->slope1, 0.20, 0.04) << "seed " << seed;
    EXPECT_NEAR(fit->slope2, 0.05, 0.015) << "seed " << seed;
    EXPECT_NEAR(fit->slope3, 0.004, 0.01) << "seed " << seed;
    EXPECT_GT(fit->r_squared, 0.98);
  }
}

TEST(PhaseFitTest, ExactOnNoiselessData) {
  const std::vector<double> x = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<double> y;
  for (double v : x) {
    y.push_back(1 + 2 * v - 1.5 * std::max(0.0, v - 3) -
                0.5 * std::max(0.0, v - 6));
  }
  absl::StatusOr<PhaseFit> fit = FitThreePhases(x, y);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_DOUBLE_EQ(fit->breakpoint1, 3);
  EXPECT_DOUBLE_EQ(fit->breakpoint2, 6);
  EXPECT_NEAR(fit->slope1, 2, 1e-9);
  EXPECT_NEAR(fit->slope2, 0.5, 1e-9);
  EXPECT_NEAR(fit->slope3, 0, 1e-9);
  EXPECT_NEAR(fit->intercept, 1, 1e-9);
  EXPECT_NEAR(fit->rss, 0, 1e-18);
  EXPECT_DOUBLE_EQ(fit->r_squared, 1);
}

TEST(PhaseFitTest, BadInputNamesTheProblem) {
  EXPECT_THAT(
      std::string(FitThreePhases({0, 1, 2}, {0, 1, 2}).status().message()),
      HasSubstr("at least 4 points"));
  EXPECT_THAT(
      std::string(FitThreePhases({0, 1, 2, 3}, {0, 1}).status().message()),
      HasSubstr("4 x values but 2 y values"));
  EXPECT_THAT(
      std::string(
          FitThreePhases({0, 2, 1, 3}, {0, 1, 2, 3}).status().message()),
      HasSubstr("point 2"));
  EXPECT_THAT(
      std::string(
          FitThreePhases({0, 1, 2, 3}, {0, NAN, 2, 3}).status().message()),
      HasSubstr("point 1 is not finite"));
}

TEST(QuantileTest, InterpolatesLikeNumpyAndIgnoresNan) {
  EXPECT_DOUBLE_EQ(*Quantile({1, 2, 3, 4}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(*Quantile({4, 1, 3, 2}, 0.25), 1.75);
  EXPECT_DOUBLE_EQ(*Quantile({1, NAN, 3}, 1.0), 3);
  EXPECT_DOUBLE_EQ(*Quantile({5}, 0.9), 5);
  EXPECT_FALSE(Quantile({}, 0.5).has_value());
  EXPECT_FALSE(Quantile({NAN}, 0.5).has_value());
}

TEST(FormationTest, FirstCheckpointAtTauOfTheFinalValue) {
  EXPECT_EQ(FormationIndex({0.0, 0.1, 0.3, 0.6, 0.8, 1.0}, 0.5), 3);
  EXPECT_EQ(FormationIndex({0.9, 0.1, 0.3, 1.0}, 0.5), 0);
  EXPECT_EQ(FormationIndex({0.0, 0.2, 1.0}, 1.0), 2);
  EXPECT_FALSE(FormationIndex({0.3, 0.1, 0.0}, 0.5).has_value());
  EXPECT_FALSE(FormationIndex({}, 0.5).has_value());
}

TEST(ClassifyTokensTest, TokenLevelWhenOneTokenDominates) {
  const TokenConcentration token = ClassifyTokens({7, 7, 7, 7, 9}, 0.8);
  EXPECT_EQ(token.top_token, 7);
  EXPECT_DOUBLE_EQ(token.share, 0.8);
  EXPECT_TRUE(token.token_level);
  const TokenConcentration concept = ClassifyTokens({1, 2, 3, 1, 2}, 0.8);
  EXPECT_EQ(concept.top_token, 1);  // tie: the smallest id
  EXPECT_DOUBLE_EQ(concept.share, 0.4);
  EXPECT_FALSE(concept.token_level);
  EXPECT_FALSE(ClassifyTokens({}, 0.8).token_level);
}

TEST(MeanPairwiseCosineTest, KnownVectors) {
  EXPECT_DOUBLE_EQ(*MeanPairwiseCosine({{1, 0}, {2, 0}, {3, 0}}), 1.0);
  // (1,0),(0,1),(1,1): cosines 0, 1/sqrt2, 1/sqrt2.
  EXPECT_NEAR(*MeanPairwiseCosine({{1, 0}, {0, 1}, {1, 1}}),
              (2 / std::sqrt(2.0)) / 3, 1e-12);
  EXPECT_DOUBLE_EQ(*MeanPairwiseCosine({{1, 0}, {-1, 0}}), -1.0);
  EXPECT_FALSE(MeanPairwiseCosine({{1, 0}}).has_value());
}

TEST(PcaTrajectoryTest, PointsOnALineUseOneAxis) {
  // x(t) = p + t·u in 5-D: all variance on the first axis, spacing kept.
  std::vector<std::vector<float>> rows;
  const std::vector<float> p = {1, -2, 0.5, 3, 0}, u = {0.6, 0, 0.8, 0, 0};
  for (int t = 0; t < 6; ++t) {
    std::vector<float> r(5);
    for (int k = 0; k < 5; ++k) r[k] = p[k] + t * u[k];
    rows.push_back(r);
  }
  absl::StatusOr<Trajectory2d> pca = PcaTrajectory(rows);
  ASSERT_TRUE(pca.ok()) << pca.status();
  EXPECT_NEAR(pca->explained1, 1.0, 1e-9);
  EXPECT_NEAR(pca->explained2, 0.0, 1e-9);
  for (int t = 0; t < 6; ++t) {
    EXPECT_NEAR(pca->points[t].first, t - 2.5, 1e-5);  // centred, |u| = 1
    EXPECT_NEAR(pca->points[t].second, 0, 1e-5);
  }
  EXPECT_GE(pca->points.back().first, 0);  // sign convention
}

TEST(PcaTrajectoryTest, EllipseInAPlaneIsRecoveredUpToRotation) {
  // An ellipse with semi-axes 3 and 1 in a rotated plane of 8-D space: the
  // two axes carry 9:1 of the variance and pairwise distances are kept.
  const double pi = std::acos(-1.0);
  std::vector<double> a(8), b(8);
  for (int k = 0; k < 8; ++k) {
    a[k] = std::cos(0.3 * k);
    b[k] = std::sin(0.7 * k + 1);
  }
  // Gram-Schmidt so a, b are orthonormal.
  auto dot = [](const std::vector<double>& x, const std::vector<double>& y) {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
    return s;
  };
  const double na = std::sqrt(dot(a, a));
  for (double& v : a) v /= na;
  const double ab = dot(a, b);
  for (int k = 0; k < 8; ++k) b[k] -= ab * a[k];
  const double nb = std::sqrt(dot(b, b));
  for (double& v : b) v /= nb;
  std::vector<std::vector<float>> rows;
  std::vector<std::pair<double, double>> truth;
  for (int i = 0; i < 16; ++i) {
    const double angle = 2 * pi * i / 16;
    const double u = 3 * std::cos(angle), v = std::sin(angle);
    truth.emplace_back(u, v);
    std::vector<float> r(8);
    for (int k = 0; k < 8; ++k)
      r[k] = static_cast<float>(u * a[k] + v * b[k] + 0.5);
    rows.push_back(r);
  }
  absl::StatusOr<Trajectory2d> pca = PcaTrajectory(rows);
  ASSERT_TRUE(pca.ok()) << pca.status();
  EXPECT_NEAR(pca->explained1, 0.9, 1e-5);
  EXPECT_NEAR(pca->explained2, 0.1, 1e-5);
  for (int i = 0; i < 16; ++i) {
    // Axis 1 is the long semi-axis: |coordinate| matches up to sign.
    EXPECT_NEAR(std::abs(pca->points[i].first), std::abs(truth[i].first), 1e-4);
    EXPECT_NEAR(std::abs(pca->points[i].second), std::abs(truth[i].second),
                1e-4);
    for (int j = 0; j < 16; ++j) {
      const double d_true = std::hypot(truth[i].first - truth[j].first,
                                       truth[i].second - truth[j].second);
      const double d_pca =
          std::hypot(pca->points[i].first - pca->points[j].first,
                     pca->points[i].second - pca->points[j].second);
      EXPECT_NEAR(d_pca, d_true, 1e-4);
    }
  }
}

TEST(PcaTrajectoryTest, BadRows) {
  EXPECT_FALSE(PcaTrajectory({}).ok());
  EXPECT_THAT(std::string(PcaTrajectory({{1, 2}, {1}}).status().message()),
              HasSubstr("row 1 has 1 values, row 0 has 2"));
  absl::StatusOr<Trajectory2d> single = PcaTrajectory({{1, 2, 3}});
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->points.size(), 1u);
  EXPECT_EQ(single->points[0].first, 0);
}

}  // namespace
}  // namespace saetrack::analysis
